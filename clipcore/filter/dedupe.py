"""Exact and near de-duplication as vectorised polars/numpy operations on one partition of rows.

Every row carries `rid`, a UInt64 that orders rows as their uids do ("earlier" always means a smaller `rid`). A
partition is a set of rows that holds every row its answer depends on: all rows sharing a key for the exact rules,
all rows sharing a (band, band value) for near duplicates. The stage (clipcore/filter/partitioned.py) splits the
rows into such partitions by a hash of the key, so each is resolved on its own, in any order or in parallel.

Near duplicates: a row is a near duplicate when an *earlier* row that passed every earlier rule has a 64-bit
perceptual hash within `max_bits` bits of its own. Each pair is judged on its own, which makes the rule
partitionable; a sequential "within `max_bits` of an earlier *kept* row" is not. The two differ on chains: with
A ~ B ~ C (A, B within `max_bits`, B, C too, A and C not) the sequential rule keeps A and C, this one keeps A only.

Finding the pairs is banded locality-sensitive hashing: split the hash's bits into `max_bits + 1` bands; two hashes
within `max_bits` bits differ in at most `max_bits` bands, so they agree on at least one (pigeonhole). Rows are
grouped by (band, band value) (a sort, numpy) and every pair within a bucket has its Hamming distance computed
vectorised (`bitwise_count` of the xor). A bucket larger than `BUCKET_ROWS` (a common band value: many rows, few
band values) is banded again on the bits its rows do not share yet, so the work stays near-linear in the rows;
identical hashes are collapsed first (the later rows are near duplicates of the first, distance 0), so blank images
make no bucket, and a bucket that banding does not split (a cluster of similar hashes) is compared block by block.
The cost grows with `max_bits` (about (max_bits + 1)^2 placements per hash once buckets are re-banded): 2-6 bits
are practical, 10 is not.
"""

from __future__ import annotations

import numpy as np
import polars as pl

FULL = (1 << 64) - 1
BUCKET_ROWS = 16
"""Buckets up to this size are compared pair by pair (size^2 / 2 distances); larger ones are banded again."""
MAX_DEPTH = 4
"""Banding levels before an oversized bucket (hashes that stay together: a cluster of near-identical images) is
compared pairwise, block by block."""
CLUSTER_ROWS = 20_000
"""Largest bucket compared pairwise when banding does not split it (pairwise cost ~ size^2 / 2 distances)."""
BLOCK = 1024  # rows per block of the pairwise comparison: BLOCK^2 distances in memory at once
PAIR_SCHEMA = {"rid": pl.UInt64}


def phash_value(column: str = "phash") -> pl.Expr:
    """A 16-hex-digit perceptual hash as UInt64 (null stays null)."""
    return pl.col(column).str.to_integer(base=16, dtype=pl.UInt64, strict=True)


def split_first(frame: pl.DataFrame, key: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows that are the first of their `key` value by `rid`, the others). Nulls are one value, as any other."""
    first = pl.col("rid") == pl.col("rid").min().over(key)
    return frame.filter(first), frame.filter(~first)


def band_masks(free: int, bands: int) -> list[int]:
    """The set bits of `free` split into `bands` masks of consecutive set bits, as even as possible."""
    positions = [i for i in range(64) if free >> i & 1]
    width, extra = divmod(len(positions), bands)
    masks, start = [], 0
    for band in range(bands):
        end = start + width + (band < extra)
        masks.append(sum(1 << p for p in positions[start:end]))
        start = end
    return masks


def band_rows(rows: pl.DataFrame, max_bits: int) -> pl.DataFrame:
    """One row per (row, band) with its band value: `rows` (rid, h, ...) -> (band, key, rid, h, ...).

    Args:
        rows: distinct hashes `h` (identical ones collapsed first), with their `rid`.
        max_bits: the near-duplicate distance; the hash is split into `max_bits + 1` bands.
    """
    masks = band_masks(FULL, max_bits + 1)
    return pl.concat([rows.select(pl.lit(b, pl.UInt8).alias("band"), (pl.col("h") & pl.lit(m, pl.UInt64)).alias("key"),
                                  pl.all()) for b, m in enumerate(masks)])


def near_duplicate_rids(banded: pl.DataFrame, max_bits: int) -> pl.DataFrame:
    """`rid` (unique) of every row of `banded` (band, key, rid, h) with an earlier row within `max_bits` bits.

    `banded` must hold every row of each (band, key) bucket it holds (see `band_rows`).
    """
    found = [np.array([], np.uint64)]
    for band, mask in enumerate(band_masks(FULL, max_bits + 1)):
        rows = banded.filter(pl.col("band") == band)
        rid, h = rows["rid"].to_numpy(), rows["h"].to_numpy()
        found += _resolve(rid, h, np.full(len(h), len(h)), FULL & ~mask, max_bits, depth=1)
    return pl.DataFrame({"rid": np.concatenate(found)}, schema=PAIR_SCHEMA).unique()


def _resolve(rid: np.ndarray, h: np.ndarray, parent: np.ndarray, free: int, max_bits: int,
             depth: int) -> list[np.ndarray]:
    """Later rows of close pairs among rows (rid, h) that agree on every bit outside `free`: a bucket is the rows
    sharing those bits, `h & ~free`; `parent` is the size of the bucket each row came from."""
    grp = h & np.uint64(FULL & ~free)
    order = np.argsort(grp)
    grp, rid, h, parent = grp[order], rid[order], h[order], parent[order]
    sizes = np.diff(_run_starts(grp))
    n = np.repeat(sizes, sizes)  # (N,) size of each row's bucket
    small = (n > 1) & (n <= BUCKET_ROWS)
    found = [_close_pairs(grp[small], rid[small], h[small], max_bits)]
    big = n > BUCKET_ROWS
    if not big.any():
        return found
    grp, rid, h, parent, n = grp[big], rid[big], h[big], parent[big], n[big]
    if free.bit_count() <= max_bits:  # the rows differ only on bits `free`: every pair is within max_bits
        starts = _run_starts(grp)
        first = np.repeat(np.minimum.reduceat(rid, starts[:-1]), np.diff(starts))
        return [*found, rid[rid != first]]
    # a bucket this band did not split (most of its parent's rows), such as a cluster of near-identical images,
    # would stay together however often it is banded: its rows are compared pairwise instead
    stuck = ((2 * n > parent) & (n <= CLUSTER_ROWS)) | (depth >= MAX_DEPTH)
    found.append(_blockwise(grp[stuck], rid[stuck], h[stuck], max_bits))
    rid, h, n = rid[~stuck], h[~stuck], n[~stuck]
    for mask in band_masks(free, max_bits + 1) if len(rid) else []:  # pigeonhole again, on the bits not shared
        found += _resolve(rid, h, n, free & ~mask, max_bits, depth + 1)
    return found


def _run_starts(grp: np.ndarray) -> np.ndarray:
    """Where each run of equal values of the sorted `grp` starts, and len(grp) last."""
    return np.r_[np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]]) if len(grp) else [], len(grp)].astype(np.int64)


def _close_pairs(grp: np.ndarray, rid: np.ndarray, h: np.ndarray, max_bits: int) -> np.ndarray:
    """`rid` of the later row of every pair within `max_bits` bits in a bucket, rows sorted by bucket `grp`: row i is
    compared with row i - j for j = 1, 2, ... up to the largest bucket's size."""
    found = [np.array([], np.uint64)]
    for j in range(1, len(grp)):
        same = grp[j:] == grp[:-j]
        if not same.any():
            break
        close = same & (np.bitwise_count(h[j:] ^ h[:-j]) <= max_bits)
        found.append(np.maximum(rid[j:], rid[:-j])[close])
    return np.concatenate(found)


def _blockwise(grp: np.ndarray, rid: np.ndarray, h: np.ndarray, max_bits: int) -> np.ndarray:
    """`rid` of rows with an earlier row of their bucket within `max_bits` bits, rows sorted by bucket `grp`, comparing
    block against block (for the few buckets banding does not split)."""
    found = [np.array([], np.uint64)]
    starts = _run_starts(grp)
    for start, end in zip(starts[:-1], starts[1:], strict=True):
        order = np.argsort(rid[start:end])
        found.append(rid[start:end][order][earlier_within(h[start:end][order], max_bits)])
    return np.concatenate(found)


def earlier_within(h: np.ndarray, max_bits: int) -> np.ndarray:
    """(N,) True where some earlier hash of `h` (N,) uint64 is within `max_bits` bits. Rows settle as soon as one
    earlier block holds a close hash: a tight cluster settles on its first block."""
    hit = np.zeros(len(h), dtype=bool)
    for start in range(0, len(h), BLOCK):
        block = h[start : start + BLOCK]
        tri = np.bitwise_count(block[:, None] ^ block[None, :]) <= max_bits  # (B, B)
        hit[start : start + BLOCK] = np.tril(tri, -1).any(1)
        for before in range(0, start, BLOCK):
            todo = start + np.flatnonzero(~hit[start : start + BLOCK])
            if len(todo) == 0:
                break
            near = np.bitwise_count(h[todo, None] ^ h[None, before : min(before + BLOCK, start)]) <= max_bits
            hit[todo] = near.any(1)
    return hit


def near_duplicates(rows: pl.DataFrame, max_bits: int) -> pl.DataFrame:
    """`rid` of the rows of `rows` (rid, h: UInt64 hash, null = none) with an earlier row within `max_bits` bits,
    all rows held in memory (one partition): identical hashes collapsed, then banded."""
    first, repeats = split_first(rows.filter(pl.col("h").is_not_null()), "h")
    near = near_duplicate_rids(band_rows(first.select("rid", "h"), max_bits), max_bits)
    return pl.concat([repeats.select("rid"), near])
