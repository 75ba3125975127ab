"""The layout of an ingest folder, in one place: shard names (`00042.tar` + `00042.parquet`, Dagster partition key
`00042`), how many shards a table needs, reading the manifests back, and replacing a file by rename."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def shard_name(index: int) -> str:
    """Shard `index`'s name: its files are `<name>.tar` and `<name>.parquet`, its Dagster partition key `<name>`."""
    return f"{index:05d}"


def shard_count(rows: int, shard_size: int) -> int:
    """Shards needed for `rows` input rows at `shard_size` rows each (at least one)."""
    return max(1, -(-rows // shard_size))


def read_manifest(output_dir: str | Path) -> pl.DataFrame:
    """All shard manifests of an ingest folder, in input order."""
    files = sorted(Path(output_dir).glob("[0-9]*.parquet"))
    if not files:
        raise FileNotFoundError(f"no shard manifests in {output_dir}")
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed").sort("uid")


def shard_paths(root: str | Path, rows: pl.DataFrame) -> list[str]:
    """The tar files (under `root`) holding `rows`, from their `shard` column, sorted."""
    return sorted({str(Path(root) / s) for s in rows["shard"].to_list()})


def replace_file(path: Path, payload: bytes) -> None:
    """Write `path` as a new file renamed into place, never in place: with DVC's hardlink cache (.dvc/config) a
    tracked file is a read-only link to the cache, which an in-place write would refuse (or, unprotected, corrupt)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)
