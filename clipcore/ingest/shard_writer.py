"""The tar half of a shard: webdataset's layout written with the standard library (ingestion workers need no torch)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import BinaryIO


class ShardWriter:
    """webdataset's tar layout (`key.ext` members, a sample's files adjacent), written with the standard library so
    ingestion workers need no torch. Fixed mtime and owner: identical input gives byte-identical shards."""

    def __init__(self, path: Path | BinaryIO):
        """`path`: a file path, or a binary file object opened for writing (e.g. through fsspec), left open."""
        if isinstance(path, str | Path):
            self.tar = tarfile.open(path, "w")  # noqa: SIM115 (closed in __exit__)
        else:
            self.tar = tarfile.open(fileobj=path, mode="w")  # noqa: SIM115 (closed in __exit__)

    def write(self, key: str, files: dict[str, bytes]) -> None:
        for ext, payload in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(payload), 0o444, 0
            self.tar.addfile(info, io.BytesIO(payload))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.tar.close()


