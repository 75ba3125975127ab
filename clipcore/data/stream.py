"""The training data stream: (image, caption) pairs read from webdataset shards, never the whole dataset in memory.

The shards of every source are cut into pieces (a shard, or a 1/P part of one when there are fewer shards than
streams). Every process runs `streams` logical streams (`train.data_streams`); logical stream `l` of process `rank` is
global stream `s = rank * streams + l` of `world * streams`, and each global stream reads its own pieces:
- in order mode, epoch `e` deals a seeded permutation of all pieces round-robin to the streams (so processes, and
  the nodes they run on, read disjoint shards); a stream's pieces are taken `shuffle_shards` at a time;
- in resampled mode (open_clip's `--dataset-resampled`), each group draws `shuffle_shards` pieces with replacement,
  a source's pieces weighted by its `weight` (open_clip's upsampling factors).
A group's samples (their keys and byte offsets, from the tar headers) are permuted with a seed of (stream, group),
then read by offset, decoded, augmented with a per-sample seed and tokenized in the DataLoader worker. Memory is a
group's index plus the batches in flight, whatever the dataset's size.

A stream's position is two integers, (group, offset in the group), carried by every batch it makes: the training
state saves them and a resumed run restarts every stream exactly there, so its batches are bitwise the ones an
uninterrupted run would have seen. Batch `j` of a run comes from logical stream `j % streams`; with DataLoader
workers, worker `k` serves the streams of batches `k, k + K, ...` (`K` must divide `streams`), so the same batches
arrive in the same order with any number of workers.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from clipcore.data.images import build_resize, decode_image, to_rgb_or_gray
from clipcore.data.tar_index import SampleRef, index_shard, read_at

MAX_PIXELS = 50_000_000  # a training image larger than this is skipped as bad


@dataclass(frozen=True)
class Source:
    """Shards to train on, and which of their samples."""

    shards: tuple[str, ...]
    """Tar files (paths or fsspec URLs)."""
    weight: float = 1.0
    """Resampled mode: how often its pieces are drawn, relative to other sources' (per piece)."""
    kept: str | None = None
    """A kept manifest (parquet with `uid` and `shard` columns, the filter stage's): only its rows are read. None:
    every sample of the shards."""
    exclude: frozenset[str] = frozenset()
    """Keys never read (the held-out pairs)."""
    last_key: str | None = None
    """Only keys up to this one (`train.max_rows`), None: all."""

    def keys(self, shard: str) -> frozenset[str] | None:
        """The keys of `shard` to read (None: all), from the kept manifest's rows of that shard only."""
        if self.kept is None:
            return None
        # pyarrow, not polars: polars' thread pool deadlocks in forked DataLoader workers (measured: a hang)
        import pyarrow.parquet as pq

        uids = pq.read_table(self.kept, columns=["uid"], filters=[("shard", "==", Path(shard).name)])["uid"]
        keys = (u for u in uids.to_pylist() if self.last_key is None or u <= self.last_key)
        return frozenset(keys) - self.exclude


@dataclass(frozen=True)
class StreamSpec:
    """Everything a DataLoader worker needs to make batches (plain values, so it pickles to workers)."""

    sources: tuple[Source, ...]
    image_size: int
    channels: int
    tokenizer_path: str
    context_length: int
    seed: int = 0
    streams: int = 1
    shuffle_shards: int = 4
    resampled: bool = False
    augment_scale: tuple[float, float] | None = (0.9, 1.0)
    """RandomResizedCrop's area range; None: resize and center crop (the evaluation transform)."""
    pieces: tuple[tuple[int, int, int, int], ...] = field(default=(), compare=False)
    """(source, shard, part, parts) of every piece; filled by `with_pieces`."""

    def with_pieces(self, world: int) -> StreamSpec:
        """Cut the shards into at least `world * streams` pieces (parts of shards when there are fewer shards)."""
        count = sum(len(s.shards) for s in self.sources)
        if count == 0:
            raise ValueError("no shards to train on")
        parts = 1 if self.resampled else math.ceil(world * self.streams / count)
        pieces = tuple((i, j, p, parts) for i, s in enumerate(self.sources) for j in range(len(s.shards))
                       for p in range(parts))
        return StreamSpec(**{**self.__dict__, "pieces": pieces})


def _rng(*key: int | str) -> np.random.Generator:
    """A generator seeded by a tuple of ints and strings (stable across processes and runs)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def group_pieces(spec: StreamSpec, stream: int, total_streams: int, group: int) -> list[tuple[int, int, int, int]]:
    """The pieces of global stream `stream`'s group number `group` (see the module docstring)."""
    size = spec.shuffle_shards
    if spec.resampled:
        weights = np.array([spec.sources[p[0]].weight / len(spec.sources[p[0]].shards) for p in spec.pieces])
        draw = _rng(spec.seed, "resampled", stream, group)
        chosen = draw.choice(len(spec.pieces), size=size, p=weights / weights.sum())
        return [spec.pieces[i] for i in chosen]
    mine = math.ceil((len(spec.pieces) - stream) / total_streams)  # pieces per epoch of this stream
    if mine <= 0:
        raise ValueError(f"stream {stream} has no piece of the {len(spec.pieces)}")
    per_epoch = math.ceil(mine / size)
    epoch, index = divmod(group, per_epoch)
    order = _rng(spec.seed, "epoch", epoch).permutation(len(spec.pieces))[stream::total_streams]
    return [spec.pieces[i] for i in order[index * size:(index + 1) * size]]


def group_samples(spec: StreamSpec, pieces: list[tuple[int, int, int, int]], stream: int,
                  group: int) -> list[tuple[str, SampleRef]]:
    """A group's (shard, sample) items, permuted with the group's seed."""
    items = []
    for source_index, shard_index, part, parts in pieces:
        source = spec.sources[source_index]
        shard = source.shards[shard_index]
        keys = source.keys(shard)
        refs = [r for r in index_shard(shard) if (keys is None and r.key not in source.exclude)
                or (keys is not None and r.key in keys)]
        items += [(shard, r) for r in refs[part::parts]]
    order = _rng(spec.seed, "shuffle", stream, group).permutation(len(items))
    return [items[i] for i in order]


def build_train_transform(spec: StreamSpec) -> Callable:
    """(PIL image, generator) -> (C, S, S) uint8: a random resized crop drawn from `generator` (or, without
    `augment_scale`, resize and center crop, the evaluation transform)."""
    if spec.augment_scale is None:
        resize = build_resize(spec.image_size, spec.channels)
        return lambda image, generator: resize(image)
    def crop(image, generator: random.Random) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(to_rgb_or_gray(image)))  # (H, W) or (H, W, 3) uint8
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)  # (C, H, W)
        if pixels.shape[0] != spec.channels:
            from torchvision.transforms.v2 import functional as F

            pixels = F.rgb_to_grayscale(pixels) if spec.channels == 1 else pixels.expand(3, -1, -1)
        top, left, height, width = crop_box(pixels.shape[1], pixels.shape[2], spec.augment_scale, generator)
        box = pixels[None, :, top:top + height, left:left + width]  # (1, C, h, w)
        # torchvision's resized_crop on uint8 is this same antialiased bilinear kernel, behind ~3x the Python
        size = (spec.image_size, spec.image_size)
        return torch.nn.functional.interpolate(box, size=size, mode="bilinear", antialias=True, align_corners=False)[0]

    return crop


def crop_box(height: int, width: int, scale: tuple[float, float], generator: random.Random,
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop covering `scale` of the area with an aspect ratio in `ratio`,
    torchvision's RandomResizedCrop sampling (10 tries, then the largest centered crop within `ratio`), drawn from
    `generator` instead of the global RNG so that a sample's crop depends on its seed alone."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * generator.uniform(*scale)
        aspect = math.exp(generator.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return generator.randint(0, height - h), generator.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass
class StreamBatch:
    """One process's batch from one logical stream, and where that stream stands after it."""

    pixels: torch.Tensor  # (B, C, S, S) uint8
    ids: torch.Tensor  # (B, L) int64
    stream: int  # logical stream of this process
    position: tuple[int, int]  # (group, offset) of the stream's next sample
    skipped: int  # samples of this batch's span that failed to decode (skipped)
    keys: list[str]  # the samples' keys, in batch order

    def pin_memory(self) -> StreamBatch:
        """Page-locked copies of the tensors (the DataLoader's `pin_memory=True` calls this)."""
        return StreamBatch(self.pixels.pin_memory(), self.ids.pin_memory(), self.stream, self.position, self.skipped,
                           self.keys)


class PairStream(IterableDataset):
    """This process's batches: logical stream `(start_step + j) % streams` makes batch `j`, from `positions`."""

    def __init__(self, spec: StreamSpec, rank: int, world: int, batch_size: int, start_step: int = 0,
                 positions: list[tuple[int, int]] | None = None):
        super().__init__()
        self.spec, self.rank, self.world, self.batch_size, self.start_step = spec, rank, world, batch_size, start_step
        self.positions = positions or [(0, 0)] * spec.streams

    def __iter__(self) -> Iterator[StreamBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if self.spec.streams % workers:
            raise ValueError(f"train.data_streams={self.spec.streams} is not a multiple of the {workers} workers")
        if info is not None:
            torch.set_num_threads(1)  # workers decode; the training process owns the cores' threads
        running: dict[int, Iterator[StreamBatch]] = {}
        j = worker
        while True:
            logical = (self.start_step + j) % self.spec.streams
            if logical not in running:
                running[logical] = self.stream_batches(logical)
            yield next(running[logical])
            j += workers

    def stream_batches(self, logical: int) -> Iterator[StreamBatch]:
        """Logical stream `logical`'s batches, from its saved position on."""
        from clipcore.model.tokenizer import load_tokenizer, tokenize

        spec = self.spec
        tokenizer = load_tokenizer(spec.tokenizer_path, spec.context_length)
        transform = build_train_transform(spec)
        total_streams = self.world * spec.streams
        stream = self.rank * spec.streams + logical
        group, offset = self.positions[logical]
        pixels, captions, keys, skipped = [], [], [], 0
        empty = 0
        while True:
            items = group_samples(spec, group_pieces(spec, stream, total_streams, group), stream, group)
            empty = 0 if items else empty + 1
            if empty > len(spec.pieces):  # a whole epoch of empty groups: the stream has nothing to read
                raise ValueError(f"stream {stream} finds no samples in its shards (all filtered out or held out?)")
            files = {}
            for index in range(offset, len(items)):
                shard, ref = items[index]
                if shard not in files:
                    import fsspec

                    files[shard] = fsspec.open(shard, "rb").open()
                sample = decode_sample(files[shard], ref, transform, (spec.seed, stream, group, index))
                if sample is None:
                    skipped += 1
                else:
                    pixels.append(sample[0])
                    captions.append(sample[1])
                    keys.append(ref.key)
                if len(pixels) == self.batch_size:
                    position = (group, index + 1) if index + 1 < len(items) else (group + 1, 0)
                    yield StreamBatch(torch.stack(pixels), tokenize(tokenizer, captions), logical, position, skipped,
                                      keys)
                    pixels, captions, keys, skipped = [], [], [], 0
            for file in files.values():
                file.close()
            group, offset = group + 1, 0


def decode_sample(file, ref: SampleRef, transform: Callable, seed: tuple) -> tuple[torch.Tensor, str] | None:
    """A sample's (C, S, S) uint8 image and caption, augmented with a generator seeded by the sample's place in its
    stream (so the crop does not depend on which process decodes it); None when it cannot be decoded (a bad sample
    is skipped and counted, never fatal)."""
    try:
        image = decode_image(read_at(file, ref.image), MAX_PIXELS)
        caption = read_at(file, ref.text).decode("utf-8")
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    generator = random.Random(hashlib.sha256(repr(seed).encode()).digest())
    return transform(image, generator), caption


def collate_one(batch: StreamBatch) -> StreamBatch:
    """DataLoader `collate_fn` for batches made whole in the workers."""
    return batch
