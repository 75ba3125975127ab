"""The filter stage end to end: an ingest folder -> kept.parquet, rejected.parquet (one reason per row), funnel.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from clipcore.config import FilterConfig
from clipcore.data.layout import read_manifest, shard_paths
from clipcore.filter.rules import apply_clip_score, filter_manifest, funnel

# model URI -> (embed image bytes, embed texts), each returning (N, D) arrays
EmbeddersLoader = Callable[[str], tuple[Callable, Callable]]


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
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(ingest_dir)
    kept, rejected = filter_manifest(manifest, config)
    clip = config.clip_score
    extra = {}
    if config.enabled and clip.enabled and kept.height:
        # torch and the shard reader load only when pairs are scored
        from clipcore.filter.clip_score import cosine_scores, hf_clip_embedders, read_image_bytes

        if Path(clip.model).is_dir():
            embed_images, embed_texts = hf_clip_embedders(clip.model)
        elif load_embedders is not None:
            embed_images, embed_texts = load_embedders(clip.model)
        else:
            raise ValueError(f"filter.clip_score.model={clip.model!r} is not a local CLIP directory and no model "
                             "loader was given")
        payloads = read_image_bytes(shard_paths(ingest_dir, kept), kept["uid"].to_list())
        scores = cosine_scores(embed_images, embed_texts, [payloads[u] for u in kept["uid"]],
                               kept["caption"].to_list(), clip.batch_size, progress)
        kept, rejected, cut = apply_clip_score(kept, rejected, scores, clip)
        extra = {"clip_score_model": clip.model, "clip_score_cut": cut}
    rejected = rejected.sort("uid")
    kept.write_parquet(out / "kept.parquet")
    rejected.write_parquet(out / "rejected.parquet")
    counts = {**funnel(manifest, kept, rejected), **extra}
    (out / "funnel.json").write_text(json.dumps(counts, indent=2))
    return FilterResult(counts, kept, rejected)


def sample_rows(kept: pl.DataFrame, rejected: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A few kept rows and two rejected rows per reason, for metadata and reports."""
    return (kept.select("uid", "caption", "width", "height").head(8),
            rejected.group_by("filter_reason", maintain_order=True).head(2).select("uid", "caption", "filter_reason"))
