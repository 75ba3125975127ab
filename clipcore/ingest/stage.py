"""Ingestion: any caption source -> validated, resized images in webdataset tar shards, one parquet manifest
per shard and `_stats.json`.

Every input row gets exactly one manifest row: `status` is `success` (the sample is in the shard's tar) or a
failure status with an `error` reason; nothing is dropped silently, and no fault of one row (even an unexpected
exception) reaches the others. Shards are written atomically (tar, then manifest). Each manifest carries a
fingerprint of its input slice and of the settings that shape its content, so a rerun skips a shard only when
it is complete and was made from the same rows the same way; any other shard is redone, never reused.
The same input and settings give byte-identical files whatever the process and thread counts and the distributor
(fixed tar headers, rows in input order, no timings in `_stats.json`), so DVC's hash of the folder changes only with
its content.

The coordinator holds the plan (clipcore.ingest.plan: row counts and duplicate rows, never the rows themselves) and
hands out work items (shard, input slices); each worker reads its own slice, so memory is bounded whatever the input's
size. The output folder may be any fsspec URL; the workers write it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

import polars as pl

from clipcore.config import IngestConfig
from clipcore.data.layout import shard_count, shard_name
from clipcore.ingest.distribute import count_row, distribute, node_id
from clipcore.ingest.fetch import Fetcher
from clipcore.ingest.manifests import (
    FINGERPRINT_KEY,
    SHARD_SUFFIXES,
    ingest_stats,
    local_folder,
    open_folder,
    remove_stale_shards,
    shard_is_complete,
    write_stats,
)
from clipcore.ingest.plan import WorkItem, default_plan_dir, plan_input, prepare_rows, read_item
from clipcore.ingest.rows import STATUS_DECODE, STATUS_DOWNLOAD, STATUS_INPUT, STATUS_PROCESS, process_row
from clipcore.ingest.shard_writer import ShardWriter
from clipcore.ingest.sources import TABLE_FORMATS, detect_format

MANIFEST_SCHEMA = {
    "uid": pl.String, "url": pl.String, "caption": pl.String, "width": pl.Int32, "height": pl.Int32,
    "original_width": pl.Int32, "original_height": pl.Int32, "sha256": pl.String, "phash": pl.String,
    "shard": pl.String, "status": pl.String, "error": pl.String,
}
FINGERPRINT_FIELDS = ("max_side", "encode_format", "jpeg_quality", "skip_reencode", "max_pixels", "max_caption_chars",
                      "max_bytes", "max_redirects")
"""IngestConfig fields that change a shard's content (beyond its rows); speed and patience settings
(processes, threads, timeouts, retries, the distributor) do not, so changing them reuses finished shards."""
PIXELS_VERSION = 2
"""Bumped when the code that makes a sample's pixels or phash changes (2: thumbnails by antialiased bilinear, the phash
of the box-reduced picture), so that shards made the old way are redone rather than mixed with new ones."""
__all__ = ["FINGERPRINT_KEY", "SHARD_SUFFIXES", "STATUS_DECODE", "STATUS_DOWNLOAD", "STATUS_INPUT", "STATUS_PROCESS",
           "ShardWriter", "ingest", "ingest_stats", "prepare_rows", "remove_stale_shards", "shard_is_complete",
           "write_shard"]


def write_shard(index: int, rows: pl.DataFrame | list[dict], output_dir: str | Path, config: IngestConfig,
                local_root: str | None, fingerprint: str = "") -> dict:
    """Fetch, validate and write one shard: `NNNNN.tar` then `NNNNN.parquet` (both atomically), the manifest
    carrying `fingerprint` (see `shard_fingerprint`). `output_dir` is a local path or any fsspec URL."""
    rows = rows.to_dicts() if isinstance(rows, pl.DataFrame) else rows
    fs, root = open_folder(output_dir)
    name = shard_name(index)
    tar, manifest_path = f"{root}/{name}.tar", f"{root}/{name}.parquet"
    # the old manifest goes first: a crash below must not leave it beside a new tar, looking complete
    if fs.exists(manifest_path):
        fs.rm(manifest_path)
    with fs.open(f"{tar}.tmp", "wb") as file, ShardWriter(file) as writer:
        records = asyncio.run(_write_samples(rows, writer, name, config, local_root))
    fs.mv(f"{tar}.tmp", tar)
    records = [{**dict.fromkeys(MANIFEST_SCHEMA), **r} for r in records]  # known columns first, extras after
    manifest = pl.DataFrame(records, schema_overrides=MANIFEST_SCHEMA, infer_schema_length=None)
    with fs.open(f"{manifest_path}.tmp", "wb") as file:
        manifest.write_parquet(file, metadata={FINGERPRINT_KEY: fingerprint})
    fs.mv(f"{manifest_path}.tmp", manifest_path)
    return {"shard": index, "rows": len(records)}


async def _write_samples(rows: list[dict], writer: ShardWriter, name: str, config: IngestConfig,
                         local_root: str | None) -> list[dict]:
    """Fetch and process `rows` with `config.threads` in flight on this thread's event loop; write the samples in
    input order; return the rows' manifest records."""
    in_flight = asyncio.Semaphore(max(1, config.threads))

    async def one(row: dict) -> tuple[dict, tuple[bytes, str] | None]:
        async with in_flight:
            return await process_row(row, fetcher, config)

    records = []
    async with Fetcher(config, Path(local_root) if local_root else None) as fetcher:
        tasks = [asyncio.ensure_future(one(row)) for row in rows]
        for row, task in zip(rows, tasks, strict=True):
            fields, sample = await task
            record = {k: v for k, v in row.items() if k != "source_error"}
            record.update(fields, shard=f"{name}.tar" if sample else None)
            if sample is not None:
                payload, ext = sample
                meta = {k: record.get(k) for k in ("uid", "url", "width", "height", "original_width",
                                                   "original_height", "sha256")}
                writer.write(row["uid"], {ext: payload, "txt": row["caption"].encode(),
                                          "json": json.dumps(meta).encode()})
            records.append(record)
            count_row()
    return records


def write_item(item: WorkItem, output_dir: str, config: IngestConfig, local_root: str | None) -> dict:
    """A worker's whole job for one work item: read its slice, fingerprint it, write the shard (local pool or Ray)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = read_item(item, config)
    fingerprint = shard_fingerprint(rows, config, local_root, output_dir)
    return {**write_shard(item.shard, rows, output_dir, config, local_root, fingerprint), "node": node_id()}


def shard_fingerprint(rows: pl.DataFrame, config: IngestConfig, local_root: str | None,
                      output_dir: str | Path = ".") -> str:
    """sha256 of a shard's input rows (every column, uid included) and of the settings that shape its content.

    The rows are hashed as Arrow IPC in its oldest layout (plain offsets, one chunk), which depends only on the
    values, not on how the table was read or sliced. The local root enters as seen from a local `output_dir`, so a
    project cloned into another folder writes byte-identical manifests (DVC's hashes of the shard folder stay the same).
    """
    digest = hashlib.sha256()
    local = local_folder(output_dir)
    root = (os.path.relpath(local_root, local.resolve()) if local is not None else local_root) if local_root else None
    settings = {f: getattr(config, f) for f in FINGERPRINT_FIELDS} | {"local_root": root, "pixels": PIXELS_VERSION}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    ipc = rows.rechunk().write_ipc(None, compression="uncompressed", compat_level=pl.CompatLevel.oldest())
    digest.update(ipc.getvalue())
    return digest.hexdigest()


def _local_root(config: IngestConfig) -> str | None:
    """The folder local images must lie in, or None when only http(s) is fetched: local files are fetched only from
    image folders, tar shards, COCO, or URL lists that declare local paths."""
    pattern = config.input
    is_glob = any(c in pattern for c in "*?[")
    fmt = "csv" if is_glob else detect_format(pattern) if config.input_format == "auto" else config.input_format
    if not (config.local_paths or fmt not in TABLE_FORMATS):
        return None
    if config.data_root:
        return str(Path(config.data_root).resolve())
    folder_of_lists = not is_glob and Path(pattern).is_dir() and fmt in TABLE_FORMATS
    return str((Path(pattern) if folder_of_lists else Path(pattern).parent).resolve())


def ingest(config: IngestConfig, output_dir: str | Path, progress: bool = True,
           shard_range: tuple[int, int] | None = None) -> dict:
    """Ingest `config.input` into `output_dir` (a local path or any fsspec URL); returns the stats written to
    `_stats.json` plus this run's `shards_written`, `nodes` (machines that wrote them) and `seconds`, which the file
    leaves out: it holds only what the input and settings determine, so the same input gives a byte-identical folder
    (and DVC hash) however much of it this run had to redo.

    Shards whose manifest fingerprint matches their input slice and settings are kept; every other shard in range
    is (re)written on `config.distributor`, and shards numbered past the input's shard count are deleted.

    Args:
        shard_range: only shards `first..last` (inclusive), e.g. one Dagster partition; None does all.

    Raises:
        ValueError: the input has no rows (nothing is written then, not even `output_dir`).
    """
    start = time.perf_counter()
    plan = plan_input(config, default_plan_dir(config, output_dir))  # before any output: a bad input leaves no trace
    local_root = _local_root(config)
    count = shard_count(plan.rows, config.shard_size)
    first, last = shard_range if shard_range else (0, count - 1)
    fs, root = open_folder(output_dir)
    fs.makedirs(root, exist_ok=True)
    remove_stale_shards(output_dir, count)
    output = str(output_dir)
    todo = [item for item in plan.items(config.shard_size, first, min(last, count - 1))
            if not _is_done(item, output, config, local_root)]
    results = distribute(write_item, todo, (output, config, local_root), config, progress)
    stats = write_stats(output_dir, plan.rows, config.shard_size)
    return {**stats, "shards_written": len(todo), "nodes": len({r["node"] for r in results}),
            "seconds": round(time.perf_counter() - start, 2)}


def _is_done(item: WorkItem, output_dir: str, config: IngestConfig, local_root: str | None) -> bool:
    """The shard's files exist and were written from this slice (read here only then: a fresh folder costs nothing)."""
    fs, root = open_folder(output_dir)
    if not fs.exists(f"{root}/{shard_name(item.shard)}.parquet"):
        return False
    rows = read_item(item, config)
    return shard_is_complete(output_dir, item.shard, shard_fingerprint(rows, config, local_root, output_dir))
