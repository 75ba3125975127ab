"""Evaluation tasks in CLIP_benchmark's webdataset layout, read by streaming (clipcore.data.task_export writes them).

A task is a directory (CLIP_benchmark 1.6.2's `build_wds_dataset` and `convert_dataset`):

    <task>/{split}/nshards.txt                 number of shards N
    <task>/{split}/0.tar ... {N-1}.tar         per sample `<key>.<webp|png|jpg|jpeg>` and `<key>.cls` (an integer label)
                                               or, for retrieval, `<key>.txt` (one caption per line)
    <task>/classnames.txt                      one class name per line, in label order (classification)
    <task>/zeroshot_classification_templates.txt   one template per line, `{c}` for the class name (classification)
    <task>/dataset_type.txt                    `retrieval`; absent means classification (`multilabel` is not read)

Samples are read one tar member at a time; a batch's images are decoded when the batch is full. Memory follows the
batch size, never the task's size or a shard's. Images are decoded as CLIP_benchmark's reader decodes them (RGB), then
fitted to the model (`task_image_transform`). Templates come back with `{}` for the class name (this project's
form, `str.format(name)`), and go out with `{c}` (CLIP_benchmark's, `str.format(c=name)`).
"""

from __future__ import annotations

import io
import itertools
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipcore.data.images import build_resize, decode_image
from clipcore.data.labeled_sets import LabeledSet
from clipcore.data.tar_index import split_name

CLASSIFICATION, RETRIEVAL = "classification", "retrieval"
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
"""Image members CLIP_benchmark decodes, in its order of preference when a sample has several."""
CLASS_NAMES_FILE, TEMPLATES_FILE = "classnames.txt", "zeroshot_classification_templates.txt"
TYPE_FILE = "dataset_type.txt"
MAX_PIXELS = 50_000_000
"""Largest image decoded (ingest.max_pixels' default): a decompression bomb in a downloaded task fails clearly."""
SHARD_SIZE = 10_000
"""Samples per written shard (CLIP_benchmark's `--max-count` default)."""


@dataclass(frozen=True)
class EvalTask:
    """One task directory: its kind and, for classification, its class names and templates."""

    root: Path
    kind: str  # CLASSIFICATION or RETRIEVAL
    class_names: list[str] | None  # in label order; None for retrieval
    templates: list[str] | None  # each with `{}` for the class name; None for retrieval

    @property
    def name(self) -> str:
        """The folder's name (CLIP_benchmark's `wds/<name>`); `.` is named after the folder it means."""
        return self.root.absolute().name

    def has_split(self, split: str) -> bool:
        return (self.root / split / "nshards.txt").is_file()

    def shards(self, split: str) -> list[Path]:
        """The split's shard paths, `0.tar` to `{nshards - 1}.tar`.

        Raises:
            FileNotFoundError: the split has no nshards.txt.
            ValueError: nshards.txt holds no positive integer.
        """
        path = self.root / split / "nshards.txt"
        if not path.is_file():
            present = [p.parent.name for p in sorted(self.root.glob("*/nshards.txt"))]
            raise FileNotFoundError(f"{self.root}: no split {split!r} ({path} is missing; splits: {present or 'none'})")
        text = path.read_text().strip()
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{path}: expected a positive number of shards, found {text!r}")
        return [self.root / split / f"{i}.tar" for i in range(int(text))]


def _lines(path: Path) -> list[str]:
    """CLIP_benchmark's reading of a metadata file: every line, stripped."""
    return [line.strip() for line in path.read_text().splitlines()]


def open_task(root: str | Path) -> EvalTask:
    """Read a task directory's metadata (no shard is opened).

    Raises:
        FileNotFoundError: not a directory, or a classification task without class names or templates.
        ValueError: a dataset type other than classification or retrieval.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"evaluation task {root} is not a directory")
    kind = (root / TYPE_FILE).read_text().strip().lower() if (root / TYPE_FILE).is_file() else CLASSIFICATION
    if kind == RETRIEVAL:
        return EvalTask(root, RETRIEVAL, None, None)
    if kind != CLASSIFICATION:
        raise ValueError(f"{root / TYPE_FILE}: dataset type {kind!r} is not supported (classification or retrieval)")
    missing = [f for f in (CLASS_NAMES_FILE, TEMPLATES_FILE) if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"classification task {root} has no {' or '.join(missing)}")
    templates = [t.replace("{c}", "{}") for t in _lines(root / TEMPLATES_FILE)]
    return EvalTask(root, CLASSIFICATION, _lines(root / CLASS_NAMES_FILE), templates)


def is_task_dir(path: Path) -> bool:
    """A directory holding at least one `{split}/nshards.txt`."""
    return path.is_dir() and any(path.glob("*/nshards.txt"))


def find_tasks(entries: Iterable[str | Path]) -> list[Path]:
    """Task directories named by `entries`: a task directory; a suite directory (its task sub-directories, sorted);
    or a suite file listing such paths one per line (relative to the file; `#` starts a comment).

    Raises:
        FileNotFoundError: an entry is none of these.
    """
    found: list[Path] = []
    for entry in map(Path, entries):
        if is_task_dir(entry):
            found.append(entry)
        elif entry.is_dir() and (children := [p for p in sorted(entry.iterdir()) if is_task_dir(p)]):
            found.extend(children)
        elif entry.is_file():
            lines = [line.split("#", 1)[0].strip() for line in entry.read_text().splitlines()]
            found.extend(find_tasks(entry.parent / line for line in lines if line))
        else:
            raise FileNotFoundError(f"{entry}: neither an evaluation task (a folder with <split>/nshards.txt), a "
                                    "folder of tasks, nor a suite file listing them")
    return found


def _members(shard: Path, read: bool) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, extension, bytes or None) of a shard's regular files in order, one member at a time."""
    with tarfile.open(shard, "r|" if read else "r:") as tar:  # a stream when reading: never a seek backwards
        while (info := tar.next()) is not None:
            tar.members.clear()  # tarfile keeps every header it read; a single pass needs none of them
            if info.isfile():
                key, ext = split_name(info.name)
                wanted = read and (ext in IMAGE_EXTS or ext in ("cls", "txt"))
                yield key, ext, tar.extractfile(info).read() if wanted else None


def iter_samples(shards: Iterable[Path]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of every sample, shard after shard; a sample is the run of adjacent members sharing
    a key (webdataset's grouping). Only image, `cls` and `txt` members are read."""
    for shard in shards:
        key, sample = None, {}
        for member_key, ext, data in _members(shard, read=True):
            if member_key != key:
                if key is not None:
                    yield key, sample
                key, sample = member_key, {}
            if data is not None:
                sample.setdefault(ext, data)
        if key is not None:
            yield key, sample


def count_samples(shards: Iterable[Path]) -> int:
    """Samples in the shards, from the tar headers alone (members are skipped, not read)."""
    count = 0
    for shard in shards:
        previous = None
        for key, _, _ in _members(shard, read=False):
            count += key != previous
            previous = key
    return count


def _image_bytes(key: str, sample: dict[str, bytes]) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    raise ValueError(f"sample {key!r} has no image ({'/'.join(IMAGE_EXTS)}); members: {sorted(sample) or 'none'}")


def _field(key: str, sample: dict[str, bytes], ext: str) -> str:
    if ext not in sample:
        raise ValueError(f"sample {key!r} has no .{ext}; members: {sorted(sample) or 'none'}")
    return sample[ext].decode("utf-8")


def task_image_transform(image_size: int, channels: int) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (C, S, S) uint8: PIL's own conversion to `L` (a 1-channel model) or `RGB`, then `build_resize`.
    What a task's decoded image goes through here, and the transform to hand CLIP_benchmark for this project's models:
    its webdataset reader converts every image to RGB first, and PIL's `L` of a gray image made RGB is that image
    exactly (torchvision's grayscale would truncate every level by one)."""
    resize = build_resize(image_size, channels)
    mode = "L" if channels == 1 else "RGB"
    return lambda image: resize(image.convert(mode))


def _decoder(image_size: int, channels: int, max_pixels: int) -> Callable[[bytes], torch.Tensor]:
    transform = task_image_transform(image_size, channels)
    # RGB first, as CLIP_benchmark's reader (webdataset's "pil" decoding) does: the same pixels as its CLI
    return lambda payload: transform(decode_image(payload, max_pixels, image_size).convert("RGB"))  # (C, S, S) uint8


def _batched(samples: Iterator[tuple[str, dict[str, bytes]]], batch_size: int) -> Iterator[list]:
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def task_labeled_set(task: EvalTask, split: str, image_size: int, channels: int, limit: int | None = None,
                     max_pixels: int = MAX_PIXELS) -> LabeledSet:
    """A classification split as a `LabeledSet`: (B, C, S, S) uint8 images at the model's size and channels, (B,)
    int64 labels, decoded one batch at a time. Its size is counted from the tar headers once, here.

    Raises:
        ValueError: a retrieval task; when read: a sample without an image or `.cls`, an undecodable image.
    """
    if task.kind != CLASSIFICATION:
        raise ValueError(f"{task.root} is a {task.kind} task, not classification")
    shards = task.shards(split)
    size = count_samples(shards)
    size = size if limit is None else min(limit, size)
    decode = _decoder(image_size, channels, max_pixels)

    def read(batch_size: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        samples = itertools.islice(iter_samples(shards), size)
        for batch in _batched(samples, batch_size):
            images = torch.stack([decode(_image_bytes(key, sample)) for key, sample in batch])
            labels = np.asarray([int(_field(key, sample, "cls")) for key, sample in batch], dtype=np.int64)
            yield images, labels

    return LabeledSet(list(task.class_names), size, read)


def retrieval_batches(task: EvalTask, split: str, batch_size: int, image_size: int, channels: int,
                      max_pixels: int = MAX_PIXELS) -> Iterator[tuple[torch.Tensor, list[list[str]]]]:
    """A retrieval split as batches of (B, C, S, S) uint8 images and each image's captions (its `.txt` lines).

    Raises:
        ValueError: a sample without an image, without a `.txt` or with no caption in it.
    """
    decode = _decoder(image_size, channels, max_pixels)
    for batch in _batched(iter_samples(task.shards(split)), batch_size):
        captions = [_field(key, sample, "txt").splitlines() for key, sample in batch]
        empty = [key for (key, _), lines in zip(batch, captions, strict=True) if not lines]
        if empty:
            raise ValueError(f"{task.root}: sample {empty[0]!r} has no caption")
        yield torch.stack([decode(_image_bytes(key, sample)) for key, sample in batch]), captions


def encode_image(image: torch.Tensor | np.ndarray | Image.Image, image_format: str = "png") -> bytes:
    """An (S, S), (1, S, S) or (3, S, S) uint8 tensor/array or a PIL image as lossless PNG or WebP bytes."""
    if not isinstance(image, Image.Image):
        pixels = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if pixels.ndim == 3:
            pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)  # (S, S) or (S, S, 3)
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    buffer = io.BytesIO()
    if image_format == "webp":
        image.save(buffer, format="webp", lossless=True)
    elif image_format == "png":
        image.save(buffer, format="png")
    else:
        raise ValueError(f"image format {image_format!r}: png or webp (lossless)")
    return buffer.getvalue()
