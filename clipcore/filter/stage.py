"""The filter stage end to end: an ingest folder -> kept.parquet, rejected.parquet (one reason per row), funnel.json.

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

from clipcore.config import FilterConfig
from clipcore.data.layout import read_manifest
from clipcore.filter.rules import apply_clip_score, filter_manifest, funnel

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
    """What the filter stage wrote: the funnel (counts per reason) and the two frames."""

    counts: dict
    kept: pl.DataFrame
    rejected: pl.DataFrame


def run_filter(ingest_dir: str | Path, config: FilterConfig, out: str | Path,
               load_embedders: EmbeddersLoader | None = None, progress: bool = True) -> FilterResult:
    """Filter an ingest folder into out/kept.parquet, out/rejected.parquet and out/funnel.json.

    `load_embedders(model_uri)` gives the CLIP-score model's (image, text) embedding functions when
    `clip_score.model` is not a local Hugging Face CLIP directory (the pipeline passes its MLflow loader).
    """
    out = Path(out)
    manifest = read_manifest(ingest_dir)
    kept, rejected = filter_manifest(manifest, config)
    clip = config.clip_score
    extra = {}
    if config.enabled and clip.enabled and kept.height:
        # torch and the shard reader load only when pairs are scored
        from clipcore.filter.clip_score import hf_clip_embedders, score_kept

        if Path(clip.model).is_dir():
            embed_images, embed_texts = hf_clip_embedders(clip.model, clip.device)
        elif load_embedders is not None:
            embed_images, embed_texts = load_embedders(clip.model)
        else:
            raise ValueError(f"filter.clip_score.model={clip.model!r} is not a local CLIP directory and no model "
                             "loader was given")
        scores = score_kept(ingest_dir, kept, embed_images, embed_texts, clip.batch_size, progress)
        kept, rejected, cut = apply_clip_score(kept, rejected, scores, clip)
        extra = {"clip_score_model": clip.model, "clip_score_cut": cut}
    rejected = rejected.sort("uid")
    kept = kept.sort("shard", "uid")  # one shard's rows together: readers of a shard's keys skip the other row groups
    counts = {**funnel(manifest, kept, rejected), **extra}
    publish_outputs(out, kept, rejected, counts)
    return FilterResult(counts, kept, rejected)


def pair_id(kept: pl.DataFrame, rejected: pl.DataFrame) -> str:
    """sha256 of both frames' content (Arrow IPC, oldest layout): equal outputs get equal ids, run after run."""
    digest = hashlib.sha256()
    for frame in (kept, rejected):
        ipc = frame.rechunk().write_ipc(None, compression="uncompressed", compat_level=pl.CompatLevel.oldest())
        digest.update(ipc.getvalue())
    return digest.hexdigest()


def publish_outputs(out: Path, kept: pl.DataFrame, rejected: pl.DataFrame, counts: dict) -> str:
    """Write kept.parquet, rejected.parquet and funnel.json into a private folder in `out`, then rename them into
    `out`; returns their pair id. Folders left by killed runs are removed first."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{WORK_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    pair = pair_id(kept, rejected)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=out))  # same filesystem as `out`: renames are atomic
    try:
        kept.write_parquet(work / KEPT, metadata={PAIR_KEY: pair}, row_group_size=KEPT_ROW_GROUP)
        rejected.write_parquet(work / REJECTED, metadata={PAIR_KEY: pair})
        (work / FUNNEL).write_text(json.dumps({**counts, "pair": pair}, indent=2))
        for name in (KEPT, REJECTED, FUNNEL):
            os.replace(work / name, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return pair


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


def sample_rows(kept: pl.DataFrame, rejected: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A few kept rows and two rejected rows per reason, for metadata and reports."""
    return (kept.select("uid", "caption", "width", "height").head(8),
            rejected.group_by("filter_reason", maintain_order=True).head(2).select("uid", "caption", "filter_reason"))
