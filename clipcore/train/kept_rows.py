"""What pretraining needs from the filter stage's kept manifest, read lazily: the held-out rows, how many rows train,
which shards hold them, and their captions as a stream (for the tokenizer). Memory is the holdout and one batch of
rows at a time, never the whole manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

BATCH_ROWS = 65_536


@dataclass(frozen=True)
class KeptRows:
    """The training rows of a kept manifest: all of it but the held-out uids and the `excluded` ones (rows of classes
    held out of training, `train.exclude_classes`), up to `last_key` (`train.max_rows`)."""

    path: str
    holdout: frozenset[str]
    last_key: str | None
    rows: int  # training rows
    excluded: frozenset[str] = frozenset()

    @property
    def never_read(self) -> frozenset[str]:
        """The uids training never reads: the held-out pairs and the excluded rows."""
        return self.holdout | self.excluded


def select_holdout(kept_path: str | Path, holdout_size: int, seed: int) -> pl.DataFrame:
    """`holdout_size` kept rows set aside for retrieval evaluation: those whose uid hashes lowest with `seed`, so
    the choice needs one streaming pass and memory for `holdout_size` rows (polars' hash is stable for its pinned
    version). Sorted by uid."""
    kept = pl.scan_parquet(kept_path)
    rows = kept.select(pl.len()).collect().item()
    if holdout_size >= rows:
        raise ValueError(f"holdout_size={holdout_size} leaves no training rows out of {rows}")
    # the sort carries only (uid, hash); the held-out rows' other columns are fetched after
    uids = (kept.select("uid", _h=pl.col("uid").hash(seed)).bottom_k(holdout_size, by=["_h", "uid"])
            .collect(engine="streaming")["uid"])
    return kept.filter(pl.col("uid").is_in(uids.implode())).collect(engine="streaming").sort("uid")


def training_rows(kept_path: str | Path, holdout: pl.DataFrame, max_rows: int | None,
                  excluded: frozenset[str] = frozenset()) -> KeptRows:
    """The rows that train: every kept row neither held out nor `excluded`, the first `max_rows` of them (by uid) when
    set."""
    held = frozenset(holdout["uid"].to_list())
    rest = pl.scan_parquet(kept_path).filter(~pl.col("uid").is_in(list(held | excluded)))
    rows = rest.select(pl.len()).collect().item()
    last_key = None
    if max_rows is not None and max_rows < rows:
        last_key = rest.select(pl.col("uid").sort().slice(max_rows - 1, 1)).collect(engine="streaming").item()
        rows = max_rows
    return KeptRows(str(kept_path), held, last_key, rows, excluded - held)


def kept_shards(kept_path: str | Path, shard_root: str | Path) -> tuple[str, ...]:
    """The shard files (under `shard_root`) holding kept rows, in name order (one row per shard in memory)."""
    names = pl.scan_parquet(kept_path).select(pl.col("shard").unique()).collect(engine="streaming")["shard"]
    return tuple(str(Path(shard_root) / n) for n in sorted(names.drop_nulls().to_list()))


def iter_captions(rows: KeptRows) -> Iterator[str]:
    """The training rows' captions, read a batch of rows at a time."""
    for batch in pq.ParquetFile(rows.path).iter_batches(batch_size=BATCH_ROWS, columns=["uid", "caption"]):
        for uid, caption in zip(batch.column("uid").to_pylist(), batch.column("caption").to_pylist(), strict=True):
            if uid not in rows.never_read and (rows.last_key is None or uid <= rows.last_key):
                yield caption
