"""Ingestion: any caption source -> validated, resized images in webdataset tar shards, one parquet manifest
per shard and `_stats.json`.

Every input row gets exactly one manifest row: `status` is `success` (the sample is in the shard's tar) or a
failure status with an `error` reason; nothing is dropped silently, and no fault of one row (even an unexpected
exception) reaches the others. Shards are written atomically (tar, then manifest). Each manifest carries a
fingerprint of its input slice and of the settings that shape its content, so a rerun skips a shard only when
it is complete and was made from the same rows the same way; any other shard is redone, never reused.
The same input and settings give byte-identical files whatever the process and thread counts (fixed tar headers,
rows in input order, no timings in `_stats.json`), so DVC's hash of the folder changes only with its content.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import polars as pl
from tqdm import tqdm

from clipcore.config import IngestConfig
from clipcore.data.layout import read_manifest, shard_count, shard_name
from clipcore.ingest.fetch import Fetcher
from clipcore.ingest.rows import STATUS_DECODE, STATUS_DOWNLOAD, STATUS_INPUT, STATUS_PROCESS, process_row
from clipcore.ingest.shard_writer import ShardWriter
from clipcore.ingest.sources import TABLE_FORMATS, detect_format, read_input

MANIFEST_SCHEMA = {
    "uid": pl.String, "url": pl.String, "caption": pl.String, "width": pl.Int32, "height": pl.Int32,
    "original_width": pl.Int32, "original_height": pl.Int32, "sha256": pl.String, "phash": pl.String,
    "shard": pl.String, "status": pl.String, "error": pl.String,
}
SHARD_SUFFIXES = ("tar", "parquet", "tar.tmp", "parquet.tmp")  # a shard's files, finished or in the making
FINGERPRINT_KEY = "clipcore.ingest.fingerprint"
"""Key of the shard fingerprint in each manifest's parquet key-value metadata."""
FINGERPRINT_FIELDS = ("max_side", "encode_format", "jpeg_quality", "max_pixels", "max_caption_chars", "max_bytes",
                      "max_redirects")
"""IngestConfig fields that change a shard's content (beyond its rows); speed and patience settings
(processes, threads, timeouts, retries) do not, so changing them reuses finished shards."""
__all__ = ["STATUS_DECODE", "STATUS_DOWNLOAD", "STATUS_INPUT", "STATUS_PROCESS", "ShardWriter", "ingest"]
_progress = None  # a shared counter, set in each worker process


def prepare_rows(table: pl.DataFrame, config: IngestConfig, dedupe_urls: bool = True) -> pl.DataFrame:
    """Add `uid` and the reasons decidable without fetching: source errors, missing, huge captions, repeat URLs.

    A row is a `duplicate_url` only when an earlier *valid* row (no other reason) has its URL: an invalid row
    (say, a caption too long) never costs a valid row sharing its URL its place.
    `dedupe_urls=False` for COCO, where several captions of one image share its URL by design.
    """
    invalid = (
        pl.when(pl.col("source_error").is_not_null()).then(pl.col("source_error"))
        .when(pl.col("caption").is_null()).then(pl.lit("caption_missing"))
        .when(pl.col("caption").str.len_chars() > config.max_caption_chars).then(pl.lit("caption_too_long"))
        .otherwise(pl.lit(None, pl.String))
    )
    width = max(9, len(str(table.height)))
    table = table.with_columns(uid=pl.int_range(pl.len()).cast(pl.String).str.zfill(width), source_error=invalid)
    if not dedupe_urls:
        return table
    # the first valid row of each URL is kept; rank among valid rows only (invalid rows' URLs count as null)
    valid_url = pl.when(pl.col("source_error").is_null()).then(pl.col("url"))
    repeat = valid_url.is_not_null() & ~valid_url.is_first_distinct()
    return table.with_columns(
        source_error=pl.when(repeat).then(pl.lit("duplicate_url")).otherwise(pl.col("source_error")))


def _init_worker(counter) -> None:
    global _progress
    _progress = counter
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_shard(index: int, rows: list[dict], output_dir: str, config: IngestConfig, local_root: str | None,
                fingerprint: str = "") -> dict:
    """Fetch, validate and write one shard: `NNNNN.tar` then `NNNNN.parquet` (both atomically), the manifest
    carrying `fingerprint` (see `shard_fingerprint`)."""
    out = Path(output_dir)
    fetcher = Fetcher(config, Path(local_root) if local_root else None)
    name = shard_name(index)
    # the old manifest goes first: a crash below must not leave it beside a new tar, looking complete
    (out / f"{name}.parquet").unlink(missing_ok=True)
    records = []
    tmp_tar = out / f"{name}.tar.tmp"
    with ThreadPoolExecutor(max_workers=max(1, config.threads)) as pool, ShardWriter(tmp_tar) as writer:
        for row, (fields, sample) in zip(rows, pool.map(lambda r: process_row(r, fetcher, config), rows), strict=True):
            record = {k: v for k, v in row.items() if k != "source_error"}
            record.update(fields, shard=f"{name}.tar" if sample else None)
            if sample is not None:
                payload, ext = sample
                meta = {k: record.get(k) for k in ("uid", "url", "width", "height", "original_width",
                                                   "original_height", "sha256")}
                files = {ext: payload, "txt": row["caption"].encode(), "json": json.dumps(meta).encode()}
                writer.write(row["uid"], files)
            records.append(record)
            if _progress is not None:
                with _progress.get_lock():
                    _progress.value += 1
    tmp_tar.rename(out / f"{name}.tar")
    records = [{**dict.fromkeys(MANIFEST_SCHEMA), **r} for r in records]  # known columns first, extras after
    manifest = pl.DataFrame(records, schema_overrides=MANIFEST_SCHEMA, infer_schema_length=None)
    manifest.write_parquet(out / f"{name}.parquet.tmp", metadata={FINGERPRINT_KEY: fingerprint})
    (out / f"{name}.parquet.tmp").rename(out / f"{name}.parquet")
    return {"shard": index, "rows": len(records)}


def shard_fingerprint(rows: pl.DataFrame, config: IngestConfig, local_root: str | None,
                      output_dir: str | Path = ".") -> str:
    """sha256 of a shard's input rows (every column, uid included) and of the settings that shape its content.

    The rows are hashed as Arrow IPC in its oldest layout (plain offsets, one chunk), which depends only on the
    values, not on how the table was read or sliced. The local root enters as seen from `output_dir`, so a project
    cloned into another folder writes byte-identical manifests (DVC's hashes of the shard folder stay the same).
    """
    digest = hashlib.sha256()
    root = os.path.relpath(local_root, Path(output_dir).resolve()) if local_root else None
    settings = {f: getattr(config, f) for f in FINGERPRINT_FIELDS} | {"local_root": root}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    ipc = rows.rechunk().write_ipc(None, compression="uncompressed", compat_level=pl.CompatLevel.oldest())
    digest.update(ipc.getvalue())
    return digest.hexdigest()


def shard_is_complete(output_dir: Path, index: int, fingerprint: str) -> bool:
    """Both files of shard `index` exist and its manifest was written from the input slice `fingerprint` names."""
    name = shard_name(index)
    manifest, tar = output_dir / f"{name}.parquet", output_dir / f"{name}.tar"
    if not (manifest.exists() and tar.exists()):
        return False
    return pl.read_parquet_metadata(manifest).get(FINGERPRINT_KEY) == fingerprint


def remove_stale_shards(output_dir: Path, count: int) -> list[str]:
    """Delete the files of shards numbered `count` and above (left by a longer earlier input); returns their names.

    They lie beyond the current input, so no run of it (whole or one partition) may read them as its own.
    """
    removed = []
    for path in sorted(output_dir.glob("[0-9]*")):
        index, _, suffix = path.name.partition(".")
        if index.isdigit() and int(index) >= count and suffix in SHARD_SUFFIXES:
            path.unlink()
            removed.append(path.name)
    return removed


def ingest(config: IngestConfig, output_dir: str | Path, progress: bool = True,
           shard_range: tuple[int, int] | None = None) -> dict:
    """Ingest `config.input` into `output_dir`; returns the stats written to `_stats.json` plus this run's
    `shards_written` and `seconds`, which the file leaves out: it holds only what the input and settings determine,
    so the same input gives a byte-identical folder (and DVC hash) however much of it this run had to redo.

    Shards whose manifest fingerprint matches their input slice and settings are kept; every other shard in range
    is (re)written, and shards numbered past the input's shard count are deleted.

    Args:
        shard_range: only shards `first..last` (inclusive), e.g. one Dagster partition; None does all.

    Raises:
        ValueError: the input has no rows (nothing is written then, not even `output_dir`).
    """
    output_dir = Path(output_dir)
    table = read_input(config)  # before any file is written: an unreadable or empty input leaves no trace
    fmt = detect_format(config.input) if config.input_format == "auto" else config.input_format
    rows = prepare_rows(table, config, dedupe_urls=fmt != "coco")
    # local files are fetched only from folders, tar shards, COCO, or tables that declare local paths
    allow_local = config.local_paths or fmt not in TABLE_FORMATS
    data_root = Path(config.data_root) if config.data_root else Path(config.input).parent
    local_root = str(data_root.resolve()) if allow_local else None
    count = shard_count(rows.height, config.shard_size)
    first, last = shard_range if shard_range else (0, count - 1)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_shards(output_dir, count)
    slices = {i: rows.slice(i * config.shard_size, config.shard_size) for i in range(first, min(last, count - 1) + 1)}
    prints = {i: shard_fingerprint(part, config, local_root, output_dir) for i, part in slices.items()}
    todo = [i for i in slices if not shard_is_complete(output_dir, i, prints[i])]
    spawn = multiprocessing.get_context("spawn")
    counter = spawn.Value("l", 0)
    total = sum(slices[i].height for i in todo)
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"ingest ({len(todo)} shards)", unit="img", disable=not progress)
    with ProcessPoolExecutor(max_workers=max(1, min(config.processes, len(todo) or 1)),
                             mp_context=spawn, initializer=_init_worker,
                             initargs=(counter,)) as pool:
        futures = [pool.submit(write_shard, i, slices[i].to_dicts(), str(output_dir), config, local_root, prints[i])
                   for i in todo]
        while not all(f.done() for f in futures):
            time.sleep(0.25)
            bar.update(counter.value - bar.n)
        for f in futures:
            f.result()  # re-raise a worker's crash with its traceback
        bar.update(counter.value - bar.n)
    bar.close()
    stats = ingest_stats(read_manifest(output_dir))
    stats.update(shards=count)
    (output_dir / "_stats.json").write_text(json.dumps(stats, indent=2))
    return {**stats, "shards_written": len(todo), "seconds": round(time.perf_counter() - start, 2)}


def ingest_stats(manifest: pl.DataFrame) -> dict:
    """Totals per status and per error reason."""
    by_status = manifest.group_by("status").len().sort("status")
    # ties in count broken by name: group_by's order varies from run to run
    by_error = (manifest.filter(pl.col("error").is_not_null()).group_by("error").len()
                .sort(["len", "error"], descending=[True, False]))
    return {
        "rows": manifest.height,
        "success": int((manifest["status"] == "success").sum()),
        "failed": int((manifest["status"] != "success").sum()),
        "by_status": dict(zip(by_status["status"].to_list(), by_status["len"].to_list(), strict=True)),
        "by_error": dict(zip(by_error["error"].to_list(), by_error["len"].to_list(), strict=True)),
    }
