"""The shard writer's tar is byte for byte what the standard library's tarfile writes for the same members (the
reference), for every name and size class, and tarfile reads every member back."""

import io
import random
import tarfile

import pytest

from clipcore.ingest.shard_writer import ShardWriter


def tarfile_bytes(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, files in samples:
            for ext, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(payload), 0o444, 0
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def ours(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with ShardWriter(buf) as writer:
        for key, files in samples:
            writer.write(key, files)
    return buf.getvalue()


@pytest.mark.parametrize("seed", range(3))
def test_equals_tarfile_byte_for_byte(seed):
    rng = random.Random(seed)
    sizes = [0, 1, 511, 512, 513, 1024, 10_000, 8**7 + 3]  # empty, block edges, a size with 8 octal digits
    samples = [(f"{i:09d}", {"jpg": rng.randbytes(rng.choice(sizes)), "txt": "a café, 2 €".encode(), "json": b"{}"})
               for i in range(40)]
    samples += [("k" * 95, {"jpg": b"x"}), ("k" * 96, {"jpg": b"x"}), ("k" * 97, {"jpg": b"x"}),  # 99..101 bytes
                ("k" * 150, {"txt": b"long"}), ("naïve/東京", {"txt": b"non-ascii"}), ("a b", {"txt": b""})]
    rng.shuffle(samples)
    assert ours(samples) == tarfile_bytes(samples)


def test_tarfile_reads_every_member_back(tmp_path):
    samples = [(f"{i:05d}", {"jpg": bytes([i]) * (i * 100), "txt": f"caption {i}".encode()}) for i in range(30)]
    with ShardWriter(tmp_path / "a.tar") as writer:
        for key, files in samples:
            writer.write(key, files)
    with tarfile.open(tmp_path / "a.tar") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert got == {f"{key}.{ext}": payload for key, files in samples for ext, payload in files.items()}
    assert ours([]) == tarfile_bytes([])  # an empty shard too
