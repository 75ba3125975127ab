"""The filter stage end to end: an ingest folder -> kept.parquet, rejected.parquet (one reason per row), funnel.json.

Shard by shard (clipcore/filter/partitioned.py): the rows of one shard with their reasons at a time go into the
two output files, so memory does not grow with the number of rows. With CLIP scoring on, each shard's kept rows are
scored (its tar read once, one batch of images at a time), set aside with their `clip_score`, and counted in a
histogram; the cut (a threshold, or the exact quantile for `top_fraction`, clipcore/filter/quantile.py) is then
applied shard by shard.

The three files are one product and are published as one: written in a private folder inside the output folder,
then moved into place by rename, each stamped with the same pair id (a hash of their content). A run killed while
writing leaves the previous files untouched (never a truncated kept.parquet); one killed between the renames leaves
a pair whose ids differ, which `read_filtered` refuses instead of returning rows of two different runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from clipcore.config import FilterConfig
from clipcore.filter.partitioned import PART_ROWS, filter_shards, manifest_files, output_schema
from clipcore.filter.rules import REASON, funnel_counts

# model URI -> (embed image bytes, embed texts), each returning (N, D) arrays
EmbeddersLoader = Callable[[str], tuple[Callable, Callable]]
KEPT, REJECTED, FUNNEL = "kept.parquet", "rejected.parquet", "funnel.json"
KEPT_ROW_GROUP = 65_536
"""Rows per row group of kept.parquet: a shard's key lookup reads only the groups whose `shard` range holds it."""
PAIR_KEY = "clipcore.filter.pair"
"""Key of the pair id in both parquet files' key-value metadata (and in funnel.json)."""
WORK_PREFIX = ".writing-"  # the private folder a run writes in before publishing


@dataclass(frozen=True)
class FilterResult:
    """What the filter stage wrote: the funnel (counts per reason) and its output folder; `kept` and `rejected` read
    the published files when asked for (they can be larger than memory: prefer `pl.scan_parquet(result.kept_path)`)."""

    counts: dict
    out: Path

    @property
    def kept_path(self) -> Path:
        return self.out / KEPT

    @property
    def kept(self) -> pl.DataFrame:
        return pl.read_parquet(self.out / KEPT)

    @property
    def rejected(self) -> pl.DataFrame:
        return pl.read_parquet(self.out / REJECTED)


def run_filter(ingest_dir: str | Path, config: FilterConfig, out: str | Path,
               load_embedders: EmbeddersLoader | None = None, progress: bool = True,
               part_rows: int = PART_ROWS) -> FilterResult:
    """Filter an ingest folder into out/kept.parquet (sorted by shard, uid), out/rejected.parquet (sorted by uid
    within each shard: by uid when shards hold consecutive uids, as ingest writes them) and out/funnel.json.

    `load_embedders(model_uri)` gives the CLIP-score model's (image, text) embedding functions when
    `clip_score.model` is not a local Hugging Face CLIP directory (the pipeline passes its MLflow loader).
    `part_rows` sets memory: rows per partition of the duplicate rules (see clipcore/filter/partitioned.py).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{WORK_PREFIX}*"):  # left by killed runs
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=out))  # same filesystem as `out`: renames are atomic
    try:
        files = manifest_files(ingest_dir)
        schema = output_schema(files)
        shards = filter_shards(ingest_dir, config, work / "spill", part_rows, progress)
        clip, extra = config.clip_score, {}
        scoring = config.enabled and clip.enabled
        if scoring:
            from clipcore.filter.clip_score import clip_embedders, score_shards  # torch only when scoring

            shards, cut = score_shards(ingest_dir, shards, lambda: clip_embedders(clip, load_embedders), clip,
                                       work / "scored", progress)
            extra = {"clip_score_model": clip.model, "clip_score_cut": cut} if cut is not None else {}
        kept = OutputFile(work / KEPT, {**schema, **({"clip_score": pl.Float32} if scoring else {})}, KEPT_ROW_GROUP)
        rejected = OutputFile(work / REJECTED, {**schema, REASON: pl.String,
                                                **({"clip_score": pl.Float32} if scoring else {})})
        by_reason: dict[str, int] = {}
        for _, frame in shards:
            kept.add(frame.filter(pl.col(REASON).is_null()).drop(REASON))
            dropped = frame.filter(pl.col(REASON).is_not_null())
            rejected.add(dropped)
            for reason, count in dropped.group_by(REASON).len().iter_rows():
                by_reason[reason] = by_reason.get(reason, 0) + count
        rows_in = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        if kept.rows + rejected.rows != rows_in:  # never expected: the rules give every row one outcome
            raise RuntimeError(f"filter lost rows: {kept.rows} kept + {rejected.rows} rejected != {rows_in} in")
        counts = {**funnel_counts(rows_in, kept.rows, by_reason), **extra}
        pair = pair_id(kept, rejected)
        kept.close(pair)
        rejected.close(pair)
        (work / FUNNEL).write_text(json.dumps({**counts, "pair": pair}, indent=2))
        for name in (KEPT, REJECTED, FUNNEL):
            os.replace(work / name, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FilterResult(counts, out)


class OutputFile:
    """A parquet file written one piece at a time in row groups of `row_group` rows, every piece cast to `schema`;
    `digest` hashes the pieces' content (a 64-bit hash of each row) as they go by, for the pair id."""

    def __init__(self, path: Path, schema: dict, row_group: int = KEPT_ROW_GROUP):
        self.path, self.schema, self.row_group = path, schema, row_group
        self.writer = pq.ParquetWriter(path, pl.DataFrame(schema=schema).to_arrow(compat_level=_ARROW).schema,
                                       compression="zstd")  # as polars writes parquet
        self.pending: list[pl.DataFrame] = []
        self.pending_rows = self.rows = 0
        self.digest = hashlib.sha256()

    def add(self, frame: pl.DataFrame) -> None:
        frame = frame.select(pl.col(c).cast(t) if c in frame.columns else pl.lit(None, t).alias(c)
                             for c, t in self.schema.items())
        if frame.height == 0:
            return
        self.digest.update(frame.hash_rows(seed=0).to_numpy().tobytes())  # 64 bits per row: cheap, ample
        self.pending.append(frame)
        self.pending_rows += frame.height
        self.rows += frame.height
        if self.pending_rows >= self.row_group:
            self._write(final=False)

    def _write(self, final: bool) -> None:
        frame = pl.concat(self.pending) if self.pending else pl.DataFrame(schema=self.schema)
        whole = frame.height if final else frame.height - frame.height % self.row_group
        if whole:
            self.writer.write_table(frame.head(whole).to_arrow(compat_level=_ARROW), row_group_size=self.row_group)
        self.pending = [frame.slice(whole)] if whole < frame.height else []
        self.pending_rows = frame.height - whole

    def close(self, pair: str) -> None:
        self._write(final=True)
        self.writer.add_key_value_metadata({PAIR_KEY: pair})
        self.writer.close()


_ARROW = pl.CompatLevel.oldest()  # large_string columns, as polars' own parquet writer stores them


def pair_id(kept: OutputFile, rejected: OutputFile) -> str:
    """sha256 of both files' content, piece by piece: equal outputs get equal ids, run after run."""
    return hashlib.sha256(kept.digest.digest() + rejected.digest.digest()).hexdigest()


def read_filtered(out: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept, rejected) of a filter output folder, after checking its three files come from the same run.

    Raises:
        ValueError: the files carry different (or no) pair ids, e.g. a run was killed while publishing them.
    """
    out = Path(out)
    ids = {name: pl.read_parquet_metadata(out / name).get(PAIR_KEY) for name in (KEPT, REJECTED)}
    ids[FUNNEL] = json.loads((out / FUNNEL).read_text()).get("pair")
    if ids[KEPT] is None or len(set(ids.values())) > 1:
        raise ValueError(f"{out}: {', '.join(ids)} are not from one filter run (pair ids {list(ids.values())}; a run "
                         "was interrupted while publishing?); run the filter stage again")
    return pl.read_parquet(out / KEPT), pl.read_parquet(out / REJECTED)


def sample_rows(kept: pl.DataFrame | pl.LazyFrame,
                rejected: pl.DataFrame | pl.LazyFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A few kept rows and two rejected rows per reason, for metadata and reports (lazy frames are read no further
    than that)."""
    return (kept.lazy().select("uid", "caption", "width", "height").head(8).collect(),
            rejected.lazy().select("uid", "caption", "filter_reason")
            .group_by("filter_reason", maintain_order=True).head(2).collect())
