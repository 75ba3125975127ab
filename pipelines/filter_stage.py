"""The filter stage's wiring: rules from clipcore, and CLIP scores from an MLflow model or a local HF CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from clipcore.clip_score import ImageEmbedder, TextEmbedder, cosine_scores, hf_clip_embedders, read_image_bytes
from clipcore.config import FilterConfig
from clipcore.filtering import apply_clip_score, filter_manifest, funnel
from clipcore.ingest import read_manifest
from clipcore.shards import shard_paths


def mlflow_embedders(model_uri: str) -> tuple[ImageEmbedder, TextEmbedder]:
    """Embedding functions of a registered pyfunc of this project (e.g. models:/clip@champion)."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        raise RuntimeError(f"CLIP-score filtering needs the model {model_uri}, which cannot be loaded ({err}). "
                           "Train one first (run the pipeline with filter.clip_score.enabled=false).") from err
    return (lambda images: model.predict(pd.DataFrame({"image": images})),
            lambda texts: model.predict(pd.DataFrame({"text": texts})))


def run_filter(ingest_dir: str | Path, config: FilterConfig, out: Path,
               progress: bool = True) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    """Filter an ingest folder into out/kept.parquet and out/rejected.parquet; returns (the funnel, the kept rows,
    the rejected rows) as written."""
    manifest = read_manifest(ingest_dir)
    kept, rejected = filter_manifest(manifest, config)
    clip = config.clip_score
    extra = {}
    if config.enabled and clip.enabled and kept.height:
        source = Path(clip.model)
        embed_images, embed_texts = hf_clip_embedders(source) if source.is_dir() else mlflow_embedders(clip.model)
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
    return counts, kept, rejected


def sample_rows(kept: pl.DataFrame, rejected: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A few kept rows and two rejected rows per reason, for metadata and reports."""
    return (kept.select("uid", "caption", "width", "height").head(8),
            rejected.group_by("filter_reason", maintain_order=True).head(2).select("uid", "caption", "filter_reason"))
