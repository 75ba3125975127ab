"""`ingest.distributor: ray` on a real two-node Ray cluster on this machine (a head node and a worker node, each with
its own raylet and one CPU): the same work items as the local process pool, written by Ray tasks on both nodes, give
the same manifest (every row, same status and reason) and byte-identical shard files."""

import os

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # read when ray is imported: workers use this .venv

import polars as pl  # noqa: E402
import ray  # noqa: E402

from clipcore.config import IngestConfig  # noqa: E402
from clipcore.data.layout import read_manifest  # noqa: E402
from clipcore.ingest.stage import ingest  # noqa: E402
from tests.clipcore.http_fixture import ImageServer  # noqa: E402
from tests.clipcore.ray_cluster import two_node_cluster  # noqa: E402


def url_list(path, base: str) -> str:
    """24 rows over 6 shards of 4: good images, a 404, undecodable bytes, a repeated URL, invalid captions."""
    rows = [(f"{base}/good/{i}.jpg", f"a photo number {i} of a thing") for i in range(16)]
    rows += [(f"{base}/404", "a missing image here"), (f"{base}/html", "html served as an image"),
             (f"{base}/good/3.jpg", "the same url again"), (f"{base}/good/20.jpg", None),
             (f"{base}/good/21.jpg", "x" * 300), (f"{base}/good/22.jpg", "a late good photo"),
             (f"{base}/good/3.jpg", "and once more"), (f"{base}/good/23.jpg", "the last good photo")]
    pl.DataFrame(rows, schema={"url": pl.String, "caption": pl.String}, orient="row").write_parquet(path)
    return str(path)


def folder_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_ray_on_two_nodes_gives_the_local_manifest_and_bytes(tmp_path, monkeypatch):
    # under `uv run pytest` (make test) Ray would ship this checkout to its workers as a uv runtime env; they share it
    monkeypatch.setattr(ray._private.ray_constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", False)
    with ImageServer() as base:
        config = dict(input=url_list(tmp_path / "urls.parquet", base), shard_size=4, max_caption_chars=200,
                      timeout=2.0, retries=0, threads=4, processes=2)
        local = ingest(IngestConfig(**config), tmp_path / "local", progress=False)
        with two_node_cluster() as address:
            distributed = ingest(IngestConfig(**config, distributor="ray", ray_address=address), tmp_path / "ray",
                                 progress=False)
    assert distributed["shards_written"] == 6 and distributed["nodes"] == 2  # tasks ran on both nodes
    assert local["rows"] == distributed["rows"] == 24 and local["success"] == distributed["success"] == 18
    by_row = read_manifest(tmp_path / "local").select("uid", "url", "status", "error")
    assert read_manifest(tmp_path / "ray").select("uid", "url", "status", "error").equals(by_row)
    assert by_row.filter(pl.col("error") == "duplicate_url").height == 2
    assert folder_bytes(tmp_path / "ray") == folder_bytes(tmp_path / "local")
