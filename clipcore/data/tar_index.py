"""Random access into webdataset tar shards: the samples a shard holds (key, where its image and caption bytes lie),
read from the tar headers alone, and a sample's bytes read by offset.

webdataset's layout (ours, open_clip's and img2dataset's): members `<key>.<ext>`, a sample's files adjacent, the key
being the member name up to the first dot of its base name. A sample needs an image (`jpg`, `png`, `webp`, ...) and
a `txt` caption; other members (`json`, `cls`) are ignored.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import fsspec

BLOCK, ZERO_BLOCK = 512, bytes(512)
PLAIN_KINDS = frozenset({b"0", b"\0", b"7", b"5", b"1", b"2", b"3", b"4", b"6", b"x", b"L", b"K"})
"""Header types `plain_members` reads itself: files (0, NUL, contiguous 7), folders, links, devices, fifos, and the
pax and GNU headers that name the next member."""
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


def plain_members(file: BinaryIO) -> Iterator[tuple[str, int, int]] | None:
    """(name, data offset, size) of every regular file of an uncompressed tar, parsed straight from its 512-byte
    headers: ustar, GNU long names (`L`) and pax extended headers (`x`: `path`, `size`), which webdataset's writer
    puts before every member. None as soon as anything else appears (a global pax header, sparse files, base-256
    sizes, a bad checksum), for tarfile to read instead."""
    members, offset, pending = [], 0, {}
    while True:
        file.seek(offset)
        header = file.read(BLOCK)
        if header == ZERO_BLOCK or (not header and offset):  # the end marker, or the end of the file
            return iter(members)
        if len(header) < BLOCK:
            return None
        kind, size_field = header[156:157], header[124:136]
        if kind not in PLAIN_KINDS or size_field[0] & 0x80:
            return None
        try:
            stored, size = (int(f.split(b"\0", 1)[0].strip() or b"0", 8) for f in (header[148:156], size_field))
        except ValueError:  # not octal: not a tar header
            return None
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            return None
        data = offset + BLOCK
        offset = data + -(-size // BLOCK) * BLOCK
        if kind in (b"x", b"L", b"K"):  # describes the next member
            extended = file.read(size)
            if kind == b"L":
                pending["path"] = extended.split(b"\0", 1)[0]
            elif kind == b"x":
                pending.update(pax_records(extended))
            continue
        if kind in (b"0", b"\0", b"7"):
            name = header[:100].split(b"\0", 1)[0]
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:263] == b"ustar\0" else b""
            name = pending.get("path") or (prefix + b"/" + name if prefix else name)
            if "size" in pending:
                return None  # a size past the octal field's 8 GiB: let tarfile place the data
            members.append((name.decode("utf-8", "surrogateescape"), data, size))
        pending = {}


def pax_records(data: bytes) -> dict[str, bytes]:
    """The `path` and `size` records of a pax extended header (`<length> <key>=<value>\\n` records)."""
    records, at = {}, 0
    while at < len(data) and data[at:at + 1] != b"\0":
        length = int(data[at:data.index(b" ", at)])
        key, _, value = data[data.index(b" ", at) + 1:at + length - 1].partition(b"=")
        if key in (b"path", b"size"):
            records[key.decode()] = value
        at += length
    return records


def tarfile_members(file: BinaryIO) -> Iterator[tuple[str, int, int]]:
    """As `plain_members`, through the standard library's tarfile (every header format)."""
    file.seek(0)
    with tarfile.open(fileobj=file, mode="r:") as tar:
        for info in tar:
            if info.isfile():
                yield info.name, info.offset_data, info.size


def index_shard(url: str) -> list[SampleRef]:
    """The samples of a tar shard (local path or any fsspec URL) in member order, from its headers only: members are
    skipped, not read. A key's first image and first caption count; a key lacking either is left out."""
    images: dict[str, tuple[int, int]] = {}
    texts: dict[str, tuple[int, int]] = {}
    order: list[str] = []
    with fsspec.open(url, "rb") as file:
        members = plain_members(file)
        for name, offset, size in tarfile_members(file) if members is None else members:
            key, ext = split_name(name)
            if ext in IMAGE_EXTS and key not in images:
                images[key] = (offset, size)
                order.append(key)
            elif ext == "txt" and key not in texts:
                texts[key] = (offset, size)
    return [SampleRef(k, images[k], texts[k]) for k in order if k in texts]


def read_at(file: BinaryIO, place: tuple[int, int]) -> bytes:
    """The `size` bytes at `offset` of an open shard."""
    offset, size = place
    file.seek(offset)
    return file.read(size)
