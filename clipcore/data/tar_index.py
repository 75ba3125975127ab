"""Random access into webdataset tar shards: the samples a shard holds (key, where its image and caption bytes lie),
read from the tar headers alone, and a sample's bytes read by offset.

webdataset's layout (ours, open_clip's and img2dataset's): members `<key>.<ext>`, a sample's files adjacent, the key
being the member name up to the first dot of its base name. A sample needs an image (`jpg`, `png`, `webp`, ...) and
a `txt` caption; other members (`json`, `cls`) are ignored.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

import fsspec

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


@dataclass(frozen=True)
class SampleRef:
    """One sample of a shard: its key and the (offset, size) of its image and caption bytes in the tar."""

    key: str
    image: tuple[int, int]
    text: tuple[int, int]


def split_name(name: str) -> tuple[str, str]:
    """webdataset's (key, extension) of a member name: `a/b.c.jpg` -> (`a/b`, `c.jpg`)."""
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem) if directory else stem, ext.lower()


def index_shard(url: str) -> list[SampleRef]:
    """The samples of a tar shard (local path or any fsspec URL) in member order, from its headers only: members are
    skipped, not read. A key's first image and first caption count; a key lacking either is left out."""
    images: dict[str, tuple[int, int]] = {}
    texts: dict[str, tuple[int, int]] = {}
    order: list[str] = []
    with fsspec.open(url, "rb") as file, tarfile.open(fileobj=file, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_name(info.name)
            place = (info.offset_data, info.size)
            if ext in IMAGE_EXTS and key not in images:
                images[key] = place
                order.append(key)
            elif ext == "txt" and key not in texts:
                texts[key] = place
    return [SampleRef(k, images[k], texts[k]) for k in order if k in texts]


def read_at(file: BinaryIO, place: tuple[int, int]) -> bytes:
    """The `size` bytes at `offset` of an open shard."""
    offset, size = place
    file.seek(offset)
    return file.read(size)
