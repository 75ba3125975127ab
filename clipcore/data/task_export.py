"""Write evaluation tasks in CLIP_benchmark's webdataset layout (see clipcore.data.task_shards): a labeled set as a
classification task, (image, captions) pairs as a retrieval task. What CLIP_benchmark's `convert_dataset` and
`convert_retrieval_dataset` write: keys `s0000000`, ..., a lossless image and `.cls` (or `.txt`, one caption per line)
per sample, `{split}/nshards.txt`, `classnames.txt` and `zeroshot_classification_templates.txt` with `{c}`
(or `dataset_type.txt` = `retrieval`). A split is written into a temporary folder beside it and renamed into place,
so a reader never sees half a split and a shorter rewrite leaves no stale shards.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipcore.data.labeled_sets import LabeledSet
from clipcore.data.layout import replace_file
from clipcore.data.task_shards import (
    CLASS_NAMES_FILE,
    RETRIEVAL,
    SHARD_SIZE,
    TEMPLATES_FILE,
    TYPE_FILE,
    encode_image,
)


def _write_shards(split_dir: Path, samples: Iterator[dict[str, bytes]], shard_size: int) -> int:
    """Write the samples as `0.tar`, `1.tar`, ... of `shard_size` each and nshards.txt into a fresh `split_dir`
    (published with one rename). Returns the sample count."""
    if shard_size < 1:
        raise ValueError(f"shard size {shard_size} is not >= 1")
    split_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{split_dir.name}-", dir=split_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the published split from other users
    count, tar = 0, None
    try:
        for files in samples:
            if count % shard_size == 0:
                if tar is not None:
                    tar.close()
                tar = tarfile.open(staging / f"{count // shard_size}.tar", "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
            for ext, payload in files.items():
                info = tarfile.TarInfo(f"s{count:07d}.{ext}")
                info.size, info.mode, info.mtime = len(payload), 0o444, 0  # fixed: identical input, identical bytes
                tar.addfile(info, io.BytesIO(payload))
            count += 1
        if tar is not None:
            tar.close()
        if count == 0:
            raise ValueError(f"{split_dir}: nothing to write (no samples)")
        (staging / "nshards.txt").write_text(f"{-(-count // shard_size)}\n")
        if split_dir.exists():
            shutil.rmtree(split_dir)
        staging.rename(split_dir)
    finally:
        if tar is not None:
            tar.close()
        shutil.rmtree(staging, ignore_errors=True)
    return count


def write_classification_task(out: str | Path, labeled: LabeledSet, templates: list[str], split: str = "test",
                              shard_size: int = SHARD_SIZE, image_format: str = "png", batch_size: int = 1_000) -> int:
    """Write `labeled` as split `split` of the classification task `out`, with its class names and `templates`
    (`{}` for the class name, as clipcore.model.prompts loads them). Images are stored as they come (lossless),
    read from the set one batch at a time. Returns the number of samples written.

    Raises:
        ValueError: a template without `{}`, a label outside the class names, or an empty set.
    """
    out = Path(out)
    bad = [t for t in templates if "{}" not in t]
    if bad or not templates:
        raise ValueError(f"templates need '{{}}' for the class name: {bad or 'none given'}")
    num_classes = len(labeled.class_names)

    def samples() -> Iterator[dict[str, bytes]]:
        for images, labels in labeled.batches(batch_size):
            for image, label in zip(images, labels.tolist(), strict=True):
                if not 0 <= label < num_classes:
                    raise ValueError(f"label {label} is outside the {num_classes} class names")
                yield {image_format: encode_image(image, image_format), "cls": str(label).encode()}

    count = _write_shards(out / split, samples(), shard_size)
    replace_file(out / CLASS_NAMES_FILE, "".join(f"{name}\n" for name in labeled.class_names).encode())
    replace_file(out / TEMPLATES_FILE, "".join(t.replace("{}", "{c}") + "\n" for t in templates).encode())
    (out / TYPE_FILE).unlink(missing_ok=True)  # no dataset_type.txt: classification, as CLIP_benchmark writes it
    return count


ImageLike = torch.Tensor | np.ndarray | Image.Image


def write_retrieval_task(out: str | Path, pairs: Iterable[tuple[ImageLike, list[str]]], split: str = "test",
                         shard_size: int = SHARD_SIZE, image_format: str = "png") -> int:
    """Write (image, captions) pairs as split `split` of the retrieval task `out`: each image with its captions, one
    per line of its `.txt` (a newline inside a caption is written as the two characters `\\n`, as CLIP_benchmark
    does). Images: uint8 (S, S) / (C, S, S) tensors or arrays, or PIL images. Returns the number of images written.

    Raises:
        ValueError: an image without captions, or no pairs.
    """
    out = Path(out)

    def samples() -> Iterator[dict[str, bytes]]:
        for n, (image, captions) in enumerate(pairs):
            if not captions:
                raise ValueError(f"retrieval pair {n} has no caption")
            text = "\n".join(c.replace("\n", "\\n") for c in captions)
            yield {image_format: encode_image(image, image_format), "txt": text.encode("utf-8")}

    count = _write_shards(out / split, samples(), shard_size)
    (out / TYPE_FILE).write_text(f"{RETRIEVAL}\n")
    return count
