"""The tar half of a shard: webdataset's layout written with the standard library (ingestion workers need no torch)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE  # 512
# a member header as tarfile writes it (PAX format, mode 0o444, owner 0, mtime 0) for a short ASCII name: the name,
# the size and the checksum are filled in per member
_TEMPLATE = bytearray(BLOCK)
_TEMPLATE[100:124] = b"0000444\x000000000\x000000000\x00"  # mode, uid, gid
_TEMPLATE[136:148] = b"00000000000\x00"  # mtime
_TEMPLATE[148:156] = b" " * 8  # the checksum counts its own field as spaces; tarfile leaves the last one
_TEMPLATE[156:157] = b"0"  # regular file
_TEMPLATE[257:265] = tarfile.POSIX_MAGIC  # b"ustar\x0000"
# devmajor and devminor stay empty (NULs) for a regular file, as tarfile leaves them
assert len(_TEMPLATE) == BLOCK
_TEMPLATE_SUM = sum(_TEMPLATE)
MAX_SIZE = 8**11 - 1  # the 11 octal digits of a plain size field


def member(name: str, size: int) -> bytes:
    """The 512-byte header tarfile writes for a regular file `name` of `size` bytes (mode 0o444, owner 0, mtime 0).

    Built from a template (tarfile's `TarInfo.tobuf` costs ~18 us a member); names that are not short ASCII and
    sizes past 8 GiB, which tarfile writes with PAX extended headers, go through tarfile itself.
    """
    if not name.isascii() or len(name) >= 100 or size > MAX_SIZE:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o444, 0
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    encoded = name.encode("ascii")
    header = bytearray(_TEMPLATE)
    header[: len(encoded)] = encoded
    header[124:136] = b"%011o\x00" % size
    checksum = _TEMPLATE_SUM + sum(encoded) + sum(header[124:135])
    header[148:155] = b"%06o\x00" % checksum
    return bytes(header)


class ShardWriter:
    """webdataset's tar layout (`key.ext` members, a sample's files adjacent), byte for byte what `tarfile` writes
    (fixed mtime and owner: identical input gives byte-identical shards), but a sample is one `write` call of its
    headers, payloads and padding."""

    def __init__(self, path: Path | BinaryIO):
        """`path`: a file path, or a binary file object opened for writing (e.g. through fsspec), left open."""
        self._owned = isinstance(path, str | Path)
        self.file: BinaryIO = open(path, "wb") if self._owned else path  # noqa: SIM115 (closed in __exit__)
        self.offset = 0

    def write(self, key: str, files: dict[str, bytes]) -> None:
        parts = []
        for ext, payload in files.items():
            parts += [member(f"{key}.{ext}", len(payload)), payload, b"\0" * (-len(payload) % BLOCK)]
        chunk = b"".join(parts)
        self.file.write(chunk)
        self.offset += len(chunk)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        # tarfile's end of archive: two zero blocks, then zeros up to a whole record (RECORDSIZE)
        end = self.offset + 2 * BLOCK
        self.file.write(b"\0" * (2 * BLOCK + (-end % tarfile.RECORDSIZE)))
        if self._owned:
            self.file.close()
