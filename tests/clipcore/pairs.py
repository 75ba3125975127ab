"""Toy (image, caption) pairs written as webdataset shards, for training tests: training reads only shards."""

import io
from pathlib import Path

import torch
from PIL import Image

from clipcore.data.stream import Source, StreamSpec
from clipcore.ingest.stage import ShardWriter


def write_shards(root: Path, images: torch.Tensor, captions: list[str], shard_size: int = 64,
                 corrupt: frozenset[int] = frozenset()) -> tuple[str, ...]:
    """(N, H, W) uint8 images as lossless PNGs with their captions, `shard_size` per tar; rows in `corrupt` get
    undecodable bytes."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for first in range(0, len(images), shard_size):
        path = root / f"{first // shard_size:05d}.tar"
        with ShardWriter(path) as writer:
            for i in range(first, min(first + shard_size, len(images))):
                buffer = io.BytesIO()
                Image.fromarray(images[i].numpy()).save(buffer, format="PNG")
                payload = b"not an image" if i in corrupt else buffer.getvalue()
                writer.write(f"{i:09d}", {"png": payload, "txt": captions[i].encode()})
        paths.append(str(path))
    return tuple(paths)


def toy_stream(root: Path, images: torch.Tensor, captions: list[str], tokenizer, streams: int = 1,
               shard_size: int = 64, context_length: int | None = None, **options) -> StreamSpec:
    """A stream over the pairs as shards, read at their own size (no augmentation unless `augment_scale` is given)."""
    tokenizer_path = root / "tokenizer.json"
    root.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(tokenizer_path))
    context = context_length or tokenizer.padding["length"]
    shards = write_shards(root / "shards", images, captions, shard_size, options.pop("corrupt", frozenset()))
    return StreamSpec(sources=(Source(shards),), image_size=images.shape[-1], channels=1,
                      tokenizer_path=str(tokenizer_path), context_length=context, streams=streams,
                      **{"augment_scale": None, **options})
