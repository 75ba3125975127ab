"""Labeled image sets for zero-shot evaluation: IDX files (MNIST format), an ImageFolder tree, or a csv of
(path, label). Each loads to (N, C, S, S) uint8 images, (N,) int labels and the class names in label order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from clipcore.data.fashion_mnist import read_idx
from clipcore.data.images import build_resize


def load_idx_set(images: str | Path, labels: str | Path, limit: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """IDX images and labels (the Fashion-MNIST test set), at most `limit`."""
    pixels, targets = read_idx(images), read_idx(labels)
    if len(pixels) != len(targets):
        raise ValueError(f"{images}: {len(pixels)} images but {len(targets)} labels in {labels}")
    return torch.from_numpy(pixels[:limit].copy()), targets[:limit].astype(np.int64)


def load_image_folder(root: str | Path, image_size: int, channels: int,
                      limit: int | None = None) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """torchvision's ImageFolder layout: one sub-folder per class; class names are the folder names, sorted."""
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(root), transform=build_resize(image_size, channels))
    count = len(dataset) if limit is None else min(limit, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)])
    return images, np.asarray(dataset.targets[:count], dtype=np.int64), list(dataset.classes)


def load_csv_set(path: str | Path, image_size: int, channels: int, class_names: list[str] | None = None,
                 limit: int | None = None) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """A csv with columns `path` (relative to the csv) and `label` (a class name, or an index into `class_names`)."""
    path = Path(path)
    table = pl.read_csv(path, infer_schema=False).head(limit) if limit else pl.read_csv(path, infer_schema=False)
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {table.columns}")
    labels = table["label"].to_list()
    if all(label.isdigit() for label in labels):
        if class_names is None:
            raise ValueError(f"{path}: numeric labels need class names (eval.class_names)")
        targets = [int(label) for label in labels]
    else:
        class_names = class_names or sorted(set(labels))
        unknown = sorted(set(labels) - set(class_names))
        if unknown:
            raise ValueError(f"{path}: labels {unknown[:5]} are not among the class names")
        targets = [class_names.index(label) for label in labels]
    resize = build_resize(image_size, channels)
    images = []
    for rel in table["path"].to_list():
        with Image.open(path.parent / rel) as image:
            images.append(resize(image))
    return torch.stack(images), np.asarray(targets, dtype=np.int64), class_names
