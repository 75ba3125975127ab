"""The shard index read from raw tar headers against the standard library's tarfile, on the archives webdataset's
writer, ours and tarfile itself (every header format, long names) produce."""

import io
import tarfile

import pytest
import webdataset as wds

from clipcore.data.tar_index import index_shard, plain_members, read_at, tarfile_members
from clipcore.ingest.stage import ShardWriter


def members_by_tarfile(path):
    with open(path, "rb") as file:
        return list(tarfile_members(file))


def add(tar, name, payload, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(payload) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_raw_headers_give_tarfiles_members_or_defer_to_it(tmp_path, fmt):
    path = tmp_path / "shard.tar"
    long = "a/" + "deep/" * 25 + "key"  # > 100 bytes: ustar splits it into prefix + name, GNU and pax add headers
    with tarfile.open(path, "w", format=fmt) as tar:
        add(tar, "folder/", b"", tarfile.DIRTYPE)
        for i, key in enumerate(["000", "001", long, "d.e/x"]):
            add(tar, f"{key}.jpg", bytes([i]) * (700 + i))
            add(tar, f"{key}.txt", f"caption {i}".encode())
        add(tar, "link.txt", b"", tarfile.SYMTYPE)
    want = members_by_tarfile(path)
    with open(path, "rb") as file:
        got = plain_members(file)
        assert got is not None and list(got) == want
    refs = index_shard(str(path))
    with open(path, "rb") as file:
        assert [(r.key, read_at(file, r.text)) for r in refs] == [
            (k, f"caption {i}".encode()) for i, k in enumerate(["000", "001", long, "d.e/x"])]


def test_webdataset_and_our_writers_are_read_from_raw_headers(tmp_path):
    with wds.TarWriter(str(tmp_path / "wds.tar")) as sink:
        for i in range(50):
            sink.write({"__key__": f"s{i:04d}", "jpg": bytes(i + 1), "txt": f"c{i}", "json": {"i": i}})
    with ShardWriter(tmp_path / "ours.tar") as writer:
        for i in range(50):
            writer.write(f"{i:09d}", {"png": bytes(i + 3), "txt": b"x" * i})
    for name in ("wds.tar", "ours.tar"):
        with open(tmp_path / name, "rb") as file:
            got = plain_members(file)
            assert got is not None and list(got) == members_by_tarfile(tmp_path / name)


def test_a_global_pax_header_goes_to_tarfile(tmp_path):
    path = tmp_path / "global.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "made by hand"}) as tar:
        add(tar, "k.jpg", b"img")
        add(tar, "k.txt", b"cap")
    with open(path, "rb") as file:
        assert plain_members(file) is None
    assert [r.key for r in index_shard(str(path))] == ["k"]


def test_a_corrupt_header_goes_to_tarfile_and_its_error(tmp_path):
    path = tmp_path / "bad.tar"
    path.write_bytes(b"this is not a tar archive" * 100)
    with open(path, "rb") as file:
        assert plain_members(file) is None
    with pytest.raises(tarfile.ReadError):
        index_shard(str(path))
