"""The filter rules over an ingest folder of any size: per-row rules shard by shard, duplicate rules on hash
partitions spilled to disk, then each shard's rows with their reasons, one shard at a time.

1. Each shard manifest (`NNNNN.parquet`) is scanned on its own: the per-row rules (ingest failures, basic rules,
   language) give its rows their reasons; the shard is set aside (uid order, with `rid`), and the rows that pass
   go on as a narrow frame (rid, shard, sha256, phash, caption).
2. Each duplicate rule hashes the rows passing so far by its key into P partitions (Arrow IPC files under the work
   folder, P = rows / `part_rows`). Rows sharing a key share a partition, so every partition is resolved alone
   (clipcore/filter/dedupe.py): exact image by sha256, then identical perceptual hashes, near duplicates by
   (band, band value), exact caption. Survivors are hashed again by the next rule's key.
3. The rejections go to a spill keyed by groups of consecutive shards; each shard's rows get theirs back.

Memory is set by `part_rows` and the largest shard, not by the number of rows; disk holds about one copy of the
manifests plus the narrow frames. The result equals `filter_manifest` on the whole manifest at once (tested).
`rid` orders rows as their uids do: (shard index << 32 | position in the shard) when each shard's uids come after
the previous shard's (ingest's layout), else the rank of the uid among all uids (a uid -> rank table in memory).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from tqdm import tqdm

from clipcore.config import FilterConfig
from clipcore.filter.dedupe import band_rows, near_duplicate_rids, phash_value, split_first
from clipcore.filter.rules import REASON, apply_reasons, row_reasons

PART_ROWS = 1_000_000
"""Rows per partition of a duplicate rule (and per group of shards when reasons go back): the memory knob."""
FLUSH_ROWS = 500_000  # rows a spill buffers before writing them out, split into its partitions
ROWS = {"rid": pl.UInt64, "sh": pl.UInt32, "sha256": pl.String, "h": pl.UInt64, "caption": pl.String}
BANDS = {"band": pl.UInt8, "key": pl.UInt64, "rid": pl.UInt64, "h": pl.UInt64, "cp": pl.UInt32}
REJECTS = {"rid": pl.UInt64, "sh": pl.UInt32, REASON: pl.String}


class Spill:
    """Frames handed over in any number of pieces, written to `folder` split into `parts` partitions by `key`
    (hashed to a partition; `hashed=False`: `key` is the partition number); `read(p)` gives partition p back whole,
    once."""

    def __init__(self, folder: Path, parts: int, key: pl.Expr, schema: dict, hashed: bool = True):
        self.folder, self.parts, self.schema = folder, parts, schema
        self.part = key.hash(7) % parts if hashed else key
        self.pending: list[pl.DataFrame] = []
        self.pending_rows = self.files = 0

    def add(self, frame: pl.DataFrame) -> None:
        self.pending.append(frame.select(self.schema.keys()))
        self.pending_rows += frame.height
        if self.pending_rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        frame = pl.concat(self.pending) if self.pending else pl.DataFrame(schema=self.schema)
        parts = frame.with_columns(self.part.alias("_part"))
        for (part,), piece in parts.partition_by("_part", as_dict=True, include_key=False).items():
            (self.folder / f"{part:05d}").mkdir(parents=True, exist_ok=True)
            piece.write_ipc(self.folder / f"{part:05d}" / f"{self.files:06d}.arrow")  # the cheapest to write and read
        self.files += 1
        self.pending, self.pending_rows = [], 0

    def read(self, part: int) -> pl.DataFrame:
        self.flush() if self.pending else None
        folder = self.folder / f"{part:05d}"
        files = sorted(folder.glob("*.arrow")) if folder.is_dir() else []
        frame = pl.concat([pl.read_ipc(f) for f in files]) if files else pl.DataFrame(schema=self.schema)
        shutil.rmtree(folder, ignore_errors=True)  # each partition is read once: free the disk as we go
        return frame


def manifest_files(ingest_dir: str | Path) -> list[Path]:
    """The shard manifests of an ingest folder in name order (see clipcore/data/layout.py)."""
    files = sorted(Path(ingest_dir).glob("[0-9]*.parquet"))
    if not files:
        raise FileNotFoundError(f"no shard manifests in {ingest_dir}")
    return files


def output_schema(files: list[Path]) -> dict:
    """Columns and types of all manifests together (as `read_manifest` concatenates them), from their footers."""
    empty = [pl.DataFrame(schema=pl.scan_parquet(f).collect_schema()) for f in files]
    return dict(pl.concat(empty, how="diagonal_relaxed").schema)


def filter_shards(ingest_dir: str | Path, config: FilterConfig, work: Path, part_rows: int = PART_ROWS,
                  progress: bool = False) -> Iterator[tuple[Path, pl.DataFrame]]:
    """(manifest path, its rows sorted by uid with `filter_reason`) for each shard of `ingest_dir` in name order.

    Args:
        work: an empty folder for the spilled partitions (removed by the caller).
        part_rows: rows per partition; memory follows it (and the largest shard), not the number of rows.
    """
    files = manifest_files(ingest_dir)
    stats = pl.concat([pl.scan_parquet(f).select(pl.len().alias("rows"), pl.col("uid").min().alias("first"),
                                                 pl.col("uid").max().alias("last")).collect() for f in files])
    in_order = (stats["first"].slice(1) > stats["last"].slice(0, len(files) - 1)).fill_null(True).all()
    ranks = None if in_order else uid_ranks(files)
    total, largest = int(stats["rows"].sum()), max(1, int(stats["rows"].max()))
    per_group = max(1, part_rows // largest)  # consecutive shards whose rejections are read back together
    groups = -(-len(files) // per_group)
    rejects = Spill(work / "rejects", groups, pl.col("sh") // per_group, REJECTS, hashed=False)
    rules = DuplicateRules(config, work, max(1, math.ceil(total / part_rows)), rejects)
    (work / "reasons").mkdir(parents=True)
    for sh, path in enumerate(tqdm(files, desc="filter: per-row rules", unit="shard", disable=not progress)):
        frame = row_reasons(read_shard(path, sh, ranks), config)
        frame.select(REASON).write_parquet(work / "reasons" / f"{sh:05d}.parquet", compression="lz4")
        rules.add(frame.filter(pl.col(REASON).is_null()).select("rid", pl.lit(sh, pl.UInt32).alias("sh"), "sha256",
                                                               phash_value().alias("h"), "caption"))
    rules.run()
    for group in range(groups):
        rejected = rejects.read(group)
        for sh in range(group * per_group, min((group + 1) * per_group, len(files))):
            reasons = work / "reasons" / f"{sh:05d}.parquet"
            frame = read_shard(files[sh], sh, ranks).hstack(pl.read_parquet(reasons))  # the same order: a stable sort
            dropped = rejected.filter(pl.col("sh") == sh).select("rid", REASON)
            yield files[sh], apply_reasons(frame, dropped).drop("rid")
            reasons.unlink()


def read_shard(path: Path, sh: int, ranks: pl.DataFrame | None) -> pl.DataFrame:
    """Shard `sh`'s manifest sorted by uid (stable: the same order every time) with `rid`: (sh << 32) + position, or
    the uid's rank in `ranks` when shards interleave."""
    frame = pl.scan_parquet(path).sort("uid", maintain_order=True)
    if ranks is None:
        rid = pl.lit(sh << 32, pl.UInt64) + pl.int_range(pl.len(), dtype=pl.UInt64)
        return frame.select(rid.alias("rid"), pl.all()).collect()
    return frame.join(ranks.lazy(), on="uid", how="left", maintain_order="left").select(
        pl.col("_rank").alias("rid"), pl.exclude("_rank")).collect()


def uid_ranks(files: list[Path]) -> pl.DataFrame:
    """(uid, _rank) over all manifests, for shards whose uid ranges interleave; uids must be unique."""
    ranks = pl.concat([pl.scan_parquet(f).select("uid") for f in files]).sort("uid").with_row_index("_rank").collect()
    if ranks["uid"].is_duplicated().any():
        raise ValueError("the shard manifests repeat uids across shards; the filter needs one row per uid")
    return ranks.with_columns(pl.col("_rank").cast(pl.UInt64))


class DuplicateRules:
    """The duplicate rules on spilled partitions, in rule order: exact image (sha256), identical then near perceptual
    hash, exact caption. Each rule's survivors are hashed on by the next rule's key; rejections go to `rejects`."""

    def __init__(self, config: FilterConfig, work: Path, parts: int, rejects: Spill):
        on = config.enabled
        self.images, self.captions = on and config.dedupe_images, on and config.dedupe_captions
        self.max_bits = config.near_duplicate_bits if on else None
        self.parts, self.rejects = parts, rejects
        near = self.max_bits is not None
        rows = {**ROWS, "cp": pl.UInt32}
        self.by_image = Spill(work / "by_image", parts, pl.col("sha256"), ROWS) if self.images else None
        self.by_hash = Spill(work / "by_hash", parts, pl.coalesce("h", "rid"), ROWS) if near else None
        self.by_band = (Spill(work / "by_band", max(1, parts * (self.max_bits + 1)), pl.col("key") ^ pl.col("band"),
                              BANDS) if near else None)
        near_rows = {"rid": pl.UInt64, "cp": pl.UInt32}
        self.near = Spill(work / "near", parts, pl.col("cp"), near_rows, hashed=False) if near else None
        self.by_caption = (Spill(work / "by_caption", parts, pl.col("cp"), rows, hashed=False)
                           if near or self.captions else None)

    def add(self, rows: pl.DataFrame, after: str = "") -> None:
        """Hand rows (ROWS) passing every rule before `after` ('' for the per-row rules) to the next rule."""
        order = ["", "images", "hashes", "captions"]
        for step, spill in (("images", self.by_image), ("hashes", self.by_hash), ("captions", self.by_caption)):
            if spill is not None and order.index(step) > order.index(after):
                spill.add(rows if step != "captions" else self.with_caption_part(rows))
                return

    def with_caption_part(self, rows: pl.DataFrame) -> pl.DataFrame:
        """`rows` with `cp`, their partition by caption (the caption rule's key; by rid when that rule is off)."""
        key = pl.col("caption") if self.captions else pl.col("rid")
        return rows.with_columns((key.hash(11) % self.parts).cast(pl.UInt32).alias("cp"))

    def reject(self, rows: pl.DataFrame, reason: str) -> None:
        self.rejects.add(rows.select("rid", "sh", pl.lit(reason).alias(REASON)))

    def run(self) -> None:
        """Resolve every partition of every rule in order."""
        for part in range(self.parts) if self.by_image else []:
            kept, repeats = split_first(self.by_image.read(part), "sha256")
            self.reject(repeats, "duplicate_image")
            self.add(kept, after="images")
        for part in range(self.parts) if self.by_hash else []:
            rows = self.by_hash.read(part)
            first, repeats = split_first(rows.filter(pl.col("h").is_not_null()), "h")
            self.reject(repeats, "near_duplicate_image")  # distance 0 to an earlier row
            self.add(pl.concat([rows.filter(pl.col("h").is_null()), first]), after="hashes")
            self.by_band.add(band_rows(self.with_caption_part(first).select("rid", "h", "cp"), self.max_bits))
        for part in range(self.by_band.parts) if self.by_band else []:
            rows = self.by_band.read(part)
            near = near_duplicate_rids(rows, self.max_bits)
            self.near.add(rows.select("rid", "cp").unique("rid").join(near, on="rid", how="semi"))
        for part in range(self.parts) if self.by_caption else []:
            rows = self.by_caption.read(part)
            if self.near is not None:
                near = self.near.read(part)
                self.reject(rows.join(near, on="rid", how="semi"), "near_duplicate_image")
                rows = rows.join(near, on="rid", how="anti")
            if self.captions:
                self.reject(split_first(rows, "caption")[1], "duplicate_caption")
        self.rejects.flush()
