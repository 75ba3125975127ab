"""Ingestion: a captions table -> validated rows in webdataset tar shards plus a parquet manifest.

Every input row gets one manifest row: `status` is `success` (the sample is in a shard) or `failed`
with a `reason`; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import webdataset as wds
from tqdm import tqdm

from clipcore.config import IngestConfig
from clipcore.images import decode_image

MANIFEST_SCHEMA = {
    "uid": pl.String, "source": pl.String, "caption": pl.String, "width": pl.Int32, "height": pl.Int32,
    "sha256": pl.String, "shard": pl.String, "status": pl.String, "reason": pl.String,
}
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def read_captions_table(path: str | Path) -> pl.DataFrame:
    """Read a csv or parquet captions table with columns `path` and `caption`; paths resolve against its folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"captions table {path} does not exist (run `clip-pipeline data` for the default)")
    if path.suffix == ".parquet":
        table = pl.read_parquet(path)
    elif path.suffix in (".csv", ".tsv"):
        table = pl.read_csv(path, separator="\t" if path.suffix == ".tsv" else ",",
                            schema_overrides={"path": pl.String, "caption": pl.String})
    else:
        raise ValueError(f"captions table {path}: unknown format {path.suffix!r} (use .csv, .tsv or .parquet)")
    missing = [c for c in ("path", "caption") if c not in table.columns]
    if missing:
        raise ValueError(f"captions table {path}: missing column(s) {missing}; found {table.columns}")
    return table.select("path", "caption")


@dataclass
class _Job:
    uid: str
    source: str
    caption: str | None
    max_pixels: int
    max_caption_chars: int


def inspect_row(job: _Job) -> tuple[dict, bytes | None]:
    """Read and validate one row; returns its manifest row and, when it succeeded, the image bytes."""
    row = {"uid": job.uid, "source": job.source, "caption": job.caption, "width": None, "height": None,
           "sha256": None, "shard": None, "status": "failed", "reason": None}
    try:
        payload = Path(job.source).read_bytes()
    except OSError as err:
        row["reason"] = f"unreadable_file: {err.strerror}"
        return row, None
    row["sha256"] = hashlib.sha256(payload).hexdigest()
    if job.caption is not None and len(job.caption) > job.max_caption_chars:
        row["reason"] = f"caption_too_long: {len(job.caption)} chars"
        return row, None
    try:
        image = decode_image(payload, job.max_pixels)
    except ValueError as err:
        row["reason"] = str(err).split(":")[0]  # e.g. undecodable_image
        return row, None
    row.update(width=image.width, height=image.height, status="success")
    row["format"] = EXTENSIONS.get(image.format or "", "png")
    return row, payload


def ingest_captions(table_path: str | Path, output_dir: str | Path, config: IngestConfig,
                    progress: bool = True) -> pl.DataFrame:
    """Validate every row of a captions table and write `shards/NNNNN.tar` and `manifest.parquet`.

    Returns:
        The manifest: one row per input row (uid, source, caption, width, height, sha256, shard, status, reason).
    """
    table = read_captions_table(table_path)
    base = Path(table_path).parent
    output_dir = Path(output_dir)
    shard_dir = output_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for old in shard_dir.glob("*.tar"):
        old.unlink()
    jobs = [
        _Job(f"{i:09d}", str(base / p) if p is not None else "", c, config.max_pixels, config.max_caption_chars)
        for i, (p, c) in enumerate(table.iter_rows())
    ]
    rows: list[dict] = []
    writer, shard_index, in_shard = None, -1, 0
    with ProcessPoolExecutor(max_workers=max(1, config.workers)) as pool:
        results = pool.map(inspect_row, jobs, chunksize=512)
        for row, payload in tqdm(results, total=len(jobs), desc="ingest", unit="img", disable=not progress):
            if payload is not None:
                if writer is None or in_shard >= config.shard_size:
                    if writer is not None:
                        writer.close()
                    shard_index, in_shard = shard_index + 1, 0
                    # mtime fixed so identical input gives byte-identical shards
                    writer = wds.TarWriter(str(shard_dir / f"{shard_index:05d}.tar"), mtime=0)
                meta = {k: row[k] for k in ("uid", "source", "width", "height", "sha256")}
                writer.write({"__key__": row["uid"], row.pop("format"): payload, "txt": row["caption"] or "",
                              "json": meta})
                row["shard"] = f"shards/{shard_index:05d}.tar"
                in_shard += 1
            rows.append(row)
    if writer is not None:
        writer.close()
    manifest = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
    manifest.write_parquet(output_dir / "manifest.parquet")
    (output_dir / "stats.json").write_text(json.dumps(ingest_stats(manifest), indent=2))
    return manifest


def ingest_stats(manifest: pl.DataFrame) -> dict:
    """Totals per status and per failure reason."""
    by_reason = manifest.filter(pl.col("status") != "success").group_by("reason").len().sort("reason")
    return {
        "rows": manifest.height,
        "success": int((manifest["status"] == "success").sum()),
        "failed": int((manifest["status"] != "success").sum()),
        "failed_by_reason": dict(zip(by_reason["reason"].to_list(), by_reason["len"].to_list(), strict=True)),
    }
