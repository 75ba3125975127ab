"""Reading samples back from webdataset tar shards into memory-resident tensors."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from clipcore.data.images import build_resize

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "gif", "bmp", "tif")


def every_shard(urls):
    """webdataset node splitter that gives every process all shards: each process holds the whole (in-memory)
    training set and takes its rows of each global batch itself."""
    return urls


def iter_samples(shards: Iterable[str | Path], uids: Iterable[str]) -> Iterator[tuple[str, bytes, str]]:
    """(key, stored image bytes, caption) of every sample whose key is in `uids`, in shard order; raises
    ValueError at the end if any requested key was not found."""
    wanted = set(uids)
    found = set()
    dataset = wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False,
                             nodesplitter=every_shard)
    for sample in dataset:
        key = sample["__key__"]
        if key in wanted:
            found.add(key)
            yield key, sample[next(k for k in IMAGE_KEYS if k in sample)], sample["txt"].decode("utf-8")
    missing = sorted(wanted - found)
    if missing:
        raise ValueError(f"{len(missing)} requested samples are not in the shards, e.g. {missing[:3]}")


def load_samples(shards: Iterable[str | Path], uids: Iterable[str], image_size: int, channels: int,
                 progress: bool = True) -> tuple[list[str], torch.Tensor, list[str]]:
    """Load the samples whose key is in `uids`, resized to `image_size`.

    Returns:
        (uids in `uids` order, (N, C, S, S) uint8 images, captions).
    """
    wanted = {u: i for i, u in enumerate(uids)}
    resize = build_resize(image_size, channels)
    images: list[torch.Tensor | None] = [None] * len(wanted)
    captions: list[str | None] = [None] * len(wanted)
    samples = iter_samples(shards, wanted)
    for key, payload, caption in tqdm(samples, desc="loading shards", unit="img", disable=not progress,
                                      total=len(wanted)):
        with Image.open(io.BytesIO(payload)) as image:
            images[wanted[key]] = resize(image)
        captions[wanted[key]] = caption
    return list(wanted), torch.stack(images), captions
