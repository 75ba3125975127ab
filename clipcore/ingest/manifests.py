"""An ingest folder on any fsspec URL (a local path by default): shard completeness, stale shards, the totals of
`_stats.json` and the row accounting of the ingest check, each reading one shard's manifest at a time (a few of its
columns), never the whole manifest."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import fsspec
import polars as pl

from clipcore.data.layout import shard_count, shard_name

SHARD_SUFFIXES = ("tar", "parquet", "tar.tmp", "parquet.tmp")  # a shard's files, finished or in the making
FINGERPRINT_KEY = "clipcore.ingest.fingerprint"
"""Key of the shard fingerprint in each manifest's parquet key-value metadata."""


def open_folder(output_dir: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path in it) of an output folder given as a local path or any fsspec URL."""
    return fsspec.core.url_to_fs(str(output_dir))


def local_folder(output_dir: str | Path) -> Path | None:
    """The output folder as a local path, or None when it lies on another filesystem."""
    fs, root = open_folder(output_dir)
    return Path(root) if "file" in fs.protocol else None


def shard_is_complete(output_dir: str | Path, index: int, fingerprint: str) -> bool:
    """Both files of shard `index` exist and its manifest was written from the input slice `fingerprint` names."""
    fs, root = open_folder(output_dir)
    name = shard_name(index)
    manifest, tar = f"{root}/{name}.parquet", f"{root}/{name}.tar"
    if not (fs.exists(manifest) and fs.exists(tar)):
        return False
    with fs.open(manifest, "rb") as file:
        return pl.read_parquet_metadata(file).get(FINGERPRINT_KEY) == fingerprint


def manifest_files(output_dir: str | Path) -> list[str]:
    """The shard manifests of a folder (paths on its filesystem), in shard order."""
    fs, root = open_folder(output_dir)
    return sorted(p for p in fs.glob(f"{root}/[0-9]*.parquet") if p.rsplit("/", 1)[-1].split(".")[0].isdigit())


def remove_stale_shards(output_dir: str | Path, count: int) -> list[str]:
    """Delete the files of shards numbered `count` and above (left by a longer earlier input); returns their names.

    They lie beyond the current input, so no run of it (whole or one partition) may read them as its own.
    """
    fs, root = open_folder(output_dir)
    removed = []
    for path in sorted(fs.glob(f"{root}/[0-9]*")):
        name = path.rsplit("/", 1)[-1]
        index, _, suffix = name.partition(".")
        if index.isdigit() and int(index) >= count and suffix in SHARD_SUFFIXES:
            fs.rm(path)
            removed.append(name)
    return removed


def stats_from_counts(by_status: Counter, by_error: Counter) -> dict:
    """Totals per status and per error reason, as `_stats.json` holds them (errors by count, ties by name)."""
    return {
        "rows": sum(by_status.values()),
        "success": by_status.get("success", 0),
        "failed": sum(n for s, n in by_status.items() if s != "success"),
        "by_status": dict(sorted(by_status.items())),
        "by_error": dict(sorted(by_error.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def ingest_stats(manifest: pl.DataFrame) -> dict:
    """Totals per status and per error reason of a manifest table."""
    return stats_from_counts(Counter(manifest["status"].to_list()), Counter(manifest["error"].drop_nulls().to_list()))


def folder_stats(output_dir: str | Path) -> dict:
    """`ingest_stats` of every manifest in the folder, reading their status and error columns one shard at a time."""
    fs, _ = open_folder(output_dir)
    by_status, by_error = Counter(), Counter()
    for path in manifest_files(output_dir):
        with fs.open(path, "rb") as file:
            part = pl.read_parquet(file, columns=["status", "error"])
        by_status.update(dict(part["status"].value_counts().iter_rows()))
        by_error.update(dict(part["error"].drop_nulls().value_counts().iter_rows()))
    return stats_from_counts(by_status, by_error)


def write_stats(output_dir: str | Path, rows: int, shard_size: int) -> dict:
    """`_stats.json` (the totals and the shard count) when every shard of the input has its manifest; otherwise the
    folder is incomplete (other partition runs under way) and a `_stats.json` from before is removed. Returns the
    totals of the manifests present, with `shards`."""
    fs, root = open_folder(output_dir)
    count = shard_count(rows, shard_size)
    stats = {**folder_stats(output_dir), "shards": count}
    present = {p.rsplit("/", 1)[-1].split(".")[0] for p in manifest_files(output_dir)}
    path = f"{root}/_stats.json"
    if all(shard_name(i) in present for i in range(count)):
        with fs.open(f"{path}.tmp", "w") as file:
            file.write(json.dumps(stats, indent=2))
        fs.mv(f"{path}.tmp", path)
    elif fs.exists(path):
        fs.rm(path)
    return stats


def account_rows(output_dir: str | Path, rows: int, shard_size: int, first: int, last: int) -> dict:
    """What the ingest check needs about shards `first..last` of an input of `rows` rows: `expected_rows` (their input
    rows), `manifest_rows`, `unique_uids` (manifest uids inside their own shard's slice, counted once) and
    `success`, plus `by_error` of those shards; one shard's uid column at a time."""
    fs, root = open_folder(output_dir)
    expected = manifest_rows = unique = success = 0
    errors = Counter()
    for index in range(first, last + 1):
        lo, hi = index * shard_size, min((index + 1) * shard_size, rows)
        expected += max(0, hi - lo)
        path = f"{root}/{shard_name(index)}.parquet"
        if not fs.exists(path):
            continue
        with fs.open(path, "rb") as file:
            part = pl.read_parquet(file, columns=["uid", "status", "error"])
        manifest_rows += part.height
        ids = part["uid"].cast(pl.Int64, strict=False)
        unique += ids.filter((ids >= lo) & (ids < hi)).n_unique()
        success += int((part["status"] == "success").sum())
        errors.update(dict(part["error"].drop_nulls().value_counts().iter_rows()))
    return {"expected_rows": expected, "manifest_rows": manifest_rows, "unique_uids": unique, "success": success,
            "by_error": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0])))}
