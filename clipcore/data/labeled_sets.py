"""Labeled image sets for zero-shot evaluation and the linear probe: IDX files (MNIST format; or a folder holding one
images and one labels file), an ImageFolder tree, a csv of (path, label), or tensors already in memory. Each is a
`LabeledSet` read as fixed-size batches of uint8 images ((B, S, S) from IDX, else (B, C, S, S)) and (B,) int64 labels,
decoded one batch at a time: memory follows the batch size, never the set's. Only the per-row file names and labels
(a few bytes a row) are listed up front."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from clipcore.data.images import build_resize

Batch = tuple[torch.Tensor, np.ndarray]  # (B, ...) uint8 images, (B,) int64 labels


@dataclass(frozen=True)
class LabeledSet:
    """A labeled image set read batch by batch; every `batches` call reads it again from its first image."""

    class_names: list[str]  # in label order
    size: int  # images in the set (after any limit)
    read: Callable[[int], Iterator[Batch]]  # batch size -> the batches, in set order

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """The set as consecutive batches of `batch_size` images (the last one shorter)."""
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size} is not >= 1")
        return self.read(batch_size)

    def pick(self, indices: set[int], batch_size: int = 1_000) -> dict[int, torch.Tensor]:
        """The images at `indices` (a few report thumbnails), read batch by batch: memory follows the batch size."""
        found, first = {}, 0
        for images, _ in self.batches(batch_size):
            found.update({i: images[i - first].clone() for i in indices if first <= i < first + len(images)})
            first += len(images)
            if len(found) == len(indices):
                break
        missing = sorted(set(indices) - set(found))
        if missing:
            raise ValueError(f"the labeled set has {first} images; no image {missing[0]}")
        return found

    def load(self, batch_size: int = 1_000) -> Batch:
        """The whole set in memory: for a handful of report thumbnails, never for evaluating a set."""
        batches = list(self.batches(batch_size))
        if not batches:
            raise ValueError("the labeled set has no images")
        return torch.cat([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _read_exactly(file, count: int, name: str) -> bytes:
    try:
        data = file.read(count)
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{name}: not a readable gzip file ({err})") from err
    if len(data) != count:
        raise ValueError(f"{name}: truncated, {len(data)} of {count} bytes left")
    return data


def _idx_header(file, name: str) -> tuple[int, ...]:
    """Read an IDX header (magic, then one big-endian int32 per dimension); returns the shape."""
    magic, = struct.unpack(">I", _read_exactly(file, 4, name))
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{name}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    return struct.unpack(f">{ndim}I", _read_exactly(file, 4 * ndim, name))


def idx_set(images: str | Path, labels: str | Path, class_names: list[str], limit: int | None = None) -> LabeledSet:
    """Gzipped IDX images and labels (the Fashion-MNIST test set), at most `limit`, streamed from the files.

    Raises:
        ValueError: the files are not gzipped unsigned-byte IDX, or their counts differ.
    """
    with gzip.open(images, "rb") as pixels, gzip.open(labels, "rb") as targets:
        shape, count = _idx_header(pixels, str(images)), _idx_header(targets, str(labels))[0]
    if shape[0] != count:
        raise ValueError(f"{images}: {shape[0]} images but {count} labels in {labels}")
    size = count if limit is None else min(limit, count)
    row = int(np.prod(shape[1:]))

    def read(batch_size: int) -> Iterator[Batch]:
        with gzip.open(images, "rb") as pixels, gzip.open(labels, "rb") as targets:
            _idx_header(pixels, str(images))
            _idx_header(targets, str(labels))
            for start in range(0, size, batch_size):
                n = min(batch_size, size - start)
                batch = np.frombuffer(_read_exactly(pixels, n * row, str(images)), np.uint8).reshape(n, *shape[1:])
                target = np.frombuffer(_read_exactly(targets, n, str(labels)), np.uint8)
                yield torch.from_numpy(batch.copy()), target.astype(np.int64)

    return LabeledSet(list(class_names), size, read)


FOLDER_CLASS_NAMES = "classnames.txt"
"""An ImageFolder's class names file (in its root): one name per line in sorted folder order, or one `<folder> <name>`
line per folder (a mapping, such as ImageNet's `n01440764 tench, Tinca tinca`)."""


def folder_class_names(root: str | Path, folders: list[str]) -> list[str]:
    """Class names of an ImageFolder's sorted `folders`: from `root/classnames.txt` when present, else the folder
    names. The file is read as a mapping when every line is `<key> <name>` and every folder is among the keys (extra
    keys are ignored: a mapping of all ImageNet classes serves a subset); otherwise as a list, one name per folder in
    sorted folder order.

    Raises:
        ValueError: a list whose length differs from the number of folders.
    """
    path = Path(root) / FOLDER_CLASS_NAMES
    if not path.is_file():
        return list(folders)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    pairs = [line.split(None, 1) for line in lines]
    mapping = {p[0]: p[1].strip() for p in pairs if len(p) == 2}
    if len(mapping) == len(lines) and set(folders) <= set(mapping):
        return [mapping[f] for f in folders]
    if len(lines) != len(folders):
        raise ValueError(f"{path}: {len(lines)} class names for {len(folders)} class folders (one name per folder, "
                         "in sorted folder order, or one '<folder> <name>' line per folder)")
    return lines


def image_folder_set(root: str | Path, image_size: int, channels: int, limit: int | None = None) -> LabeledSet:
    """torchvision's ImageFolder layout: one sub-folder per class, labels in sorted folder order; class names from
    `root/classnames.txt` when present (see `folder_class_names`), else the folder names."""
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(root), transform=build_resize(image_size, channels))  # lists paths, decodes nothing
    class_names = folder_class_names(root, dataset.classes)
    size = len(dataset) if limit is None else min(limit, len(dataset))
    targets = np.asarray(dataset.targets[:size], dtype=np.int64)

    def read(batch_size: int) -> Iterator[Batch]:
        for start in range(0, size, batch_size):
            stop = min(start + batch_size, size)
            yield torch.stack([dataset[i][0] for i in range(start, stop)]), targets[start:stop]

    return LabeledSet(class_names, size, read)


def _csv_targets(path: Path, labels: list[str], class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Label indices of a csv's `label` column (class names, or indices into `class_names`) and the class names."""
    if all(label.isdigit() for label in labels):
        if class_names is None:
            raise ValueError(f"{path}: numeric labels need class names (eval.class_names)")
        return np.asarray([int(label) for label in labels], dtype=np.int64), class_names
    class_names = class_names or sorted(set(labels))
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise ValueError(f"{path}: labels {unknown[:5]} are not among the class names")
    index: dict[str, int] = {}
    for i, name in enumerate(class_names):
        index.setdefault(name, i)  # a repeated name maps to its first index
    return np.asarray([index[label] for label in labels], dtype=np.int64), class_names


def csv_set(path: str | Path, image_size: int, channels: int, class_names: list[str] | None = None,
            limit: int | None = None) -> LabeledSet:
    """A csv with columns `path` (relative to the csv) and `label` (a class name, or an index into `class_names`)."""
    path = Path(path)
    table = pl.read_csv(path, infer_schema=False)
    table = table.head(limit) if limit else table
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {table.columns}")
    targets, class_names = _csv_targets(path, table["label"].to_list(), class_names)
    files = table["path"].to_list()
    resize = build_resize(image_size, channels)

    def read(batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(files), batch_size):
            images = []
            for rel in files[start : start + batch_size]:
                with Image.open(path.parent / rel) as image:
                    images.append(resize(image))
            yield torch.stack(images), targets[start : start + batch_size]

    return LabeledSet(list(class_names), len(files), read)


def tensor_set(images: torch.Tensor, labels: np.ndarray, class_names: list[str]) -> LabeledSet:
    """Images already in memory ((N, S, S) or (N, C, S, S) uint8) as a LabeledSet, batched as views."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")

    def read(batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(labels), batch_size):
            yield images[start : start + batch_size], labels[start : start + batch_size]

    return LabeledSet(list(class_names), len(labels), read)


def idx_files(folder: str | Path) -> tuple[Path, Path] | None:
    """(images, labels) of a folder holding exactly one IDX images file (`*-images-idx3-ubyte[.gz]`) and one IDX
    labels file (`*-labels-idx1-ubyte[.gz]`), as MNIST-style sets ship; None for any other folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    images = sorted(folder.glob("*-images-idx3-ubyte*"))
    labels = sorted(folder.glob("*-labels-idx1-ubyte*"))
    return (images[0], labels[0]) if len(images) == 1 and len(labels) == 1 else None


def names_its_classes(path: str | Path) -> bool:
    """Whether the labeled set at `path` brings its class names (an ImageFolder tree: its classnames.txt or folder
    names) rather than needing them given (IDX labels and csv labels index or name the given classes)."""
    return Path(path).is_dir() and idx_files(path) is None


def open_labeled_set(path: str | Path, class_names: list[str] | None = None, image_size: int = 224,
                     channels: int = 3, limit: int | None = None) -> LabeledSet:
    """A labeled set from its path: a folder of IDX files (see `idx_files`; read at their own size, labels are indices
    into `class_names`), an ImageFolder tree (any other folder; its classnames.txt or folder names are the classes),
    or a csv of (path, label) (labels are names in `class_names`, or indices). `image_size` and `channels` apply to
    the ImageFolder and csv.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: an IDX folder without class names; class names given for an ImageFolder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"labeled set {path} does not exist (an IDX folder, an ImageFolder tree or a csv)")
    idx = idx_files(path)
    if idx is not None:
        if class_names is None:
            raise ValueError(f"{path}: IDX labels are indices; give the class names (eval.class_names)")
        return idx_set(*idx, class_names, limit)
    if path.is_dir():
        if class_names is not None:
            raise ValueError(f"{path}: an ImageFolder's class names come from its {FOLDER_CLASS_NAMES} (or its "
                             "folder names)")
        return image_folder_set(path, image_size, channels, limit)
    return csv_set(path, image_size, channels, class_names, limit)
