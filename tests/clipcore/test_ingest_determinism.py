"""Ingesting the same input twice gives byte-identical folders (shards, manifests, `_stats.json`), whatever the
process and thread counts, from a fresh folder or over a finished one, and from a copy of the data in another
place: DVC's hash of outputs/caption_shards, and so dvc.lock, changes only when the content does."""

import io
import json
import shutil

import numpy as np
import polars as pl
from PIL import Image

from clipcore.config import IngestConfig
from clipcore.ingest.stage import ingest


def make_dataset(root, count: int = 40):
    """`count` small PNGs of varied sizes and content under root/images, a csv of relative paths, a few bad rows."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    paths, captions = [], []
    for i in range(count):
        side = int(rng.integers(20, 40))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side + i % 5), dtype=np.uint8)).save(buf, format="PNG")
        (root / "images" / f"{i:03d}.png").write_bytes(buf.getvalue())
        paths.append(f"images/{i:03d}.png")
        captions.append(f"picture number {i} of a thing")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    paths += ["images/broken.png", "images/missing.png"]
    captions += ["a broken picture of a thing", "a missing picture of a thing"]
    pl.DataFrame({"path": paths, "caption": captions}).write_csv(root / "captions.csv")
    return root


def config(root, **kw) -> IngestConfig:
    kw = {"input": str(root / "captions.csv"), **kw}
    return IngestConfig(url_col="path", local_paths=True, data_root=str(root), encode_format="png", shard_size=12, **kw)


def folder_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_ingesting_twice_gives_identical_bytes(tmp_path):
    data = make_dataset(tmp_path / "project" / "data")
    first = ingest(config(data, processes=2, threads=4), tmp_path / "project" / "out_a", progress=False)
    ingest(config(data, processes=1, threads=1), tmp_path / "project" / "out_b", progress=False)
    assert first["shards"] == 4 and first["success"] == 40 and first["failed"] == 2
    a, b = folder_bytes(tmp_path / "project" / "out_a"), folder_bytes(tmp_path / "project" / "out_b")
    assert sorted(a) == ["00000.parquet", "00000.tar", "00001.parquet", "00001.tar", "00002.parquet", "00002.tar",
                         "00003.parquet", "00003.tar", "_stats.json"]
    assert a == b, [name for name in a if a[name] != b[name]]

    # a rerun over the finished folder reuses every shard and leaves every byte as it was (its timing and the
    # number of shards it wrote are in the returned stats only)
    again = ingest(config(data, processes=2, threads=4), tmp_path / "project" / "out_a", progress=False)
    assert again["shards_written"] == 0 and "seconds" in again
    assert folder_bytes(tmp_path / "project" / "out_a") == a
    assert set(json.loads(a["_stats.json"])) == {"rows", "success", "failed", "by_status", "by_error", "shards"}


def test_a_copy_of_the_project_elsewhere_gives_identical_bytes(tmp_path):
    """A fresh clone in another folder (data and outputs moved together) writes the same shard folder."""
    make_dataset(tmp_path / "here" / "data")
    shutil.copytree(tmp_path / "here", tmp_path / "elsewhere" / "deeper")
    for project in (tmp_path / "here", tmp_path / "elsewhere" / "deeper"):
        ingest(config(project / "data", processes=2, threads=4), project / "outputs", progress=False)
    assert folder_bytes(tmp_path / "here" / "outputs") == folder_bytes(tmp_path / "elsewhere" / "deeper" / "outputs")


def test_one_list_as_a_file_a_folder_of_parquet_a_glob_or_to_an_fsspec_url_gives_identical_bytes(tmp_path):
    """The same rows as one csv, as a folder of parquet parts (a shard spanning two of them), as a glob of csv parts,
    or written through an fsspec `file://` URL: byte-identical shard folders."""
    data = make_dataset(tmp_path / "data")
    table = pl.read_csv(data / "captions.csv")
    (data / "parts").mkdir()
    (data / "csvs").mkdir()
    for i, (start, stop) in enumerate([(0, 17), (17, 30), (30, 42)]):
        table.slice(start, stop - start).write_parquet(data / "parts" / f"part-{i}.parquet")
        table.slice(start, stop - start).write_csv(data / "csvs" / f"part-{i}.csv")
    ingest(config(data, processes=2, threads=4), tmp_path / "from_file", progress=False)
    expected = folder_bytes(tmp_path / "from_file")
    for name, source in (("from_folder", data / "parts"), ("from_glob", data / "csvs" / "part-*.csv")):
        stats = ingest(config(data, processes=1, threads=4, input=str(source)), tmp_path / name, progress=False)
        assert stats["rows"] == 42 and folder_bytes(tmp_path / name) == expected, name
    ingest(config(data, processes=1, threads=4), f"file://{tmp_path / 'by_url'}", progress=False)
    assert folder_bytes(tmp_path / "by_url") == expected
