"""Filtering: DataComp's basic rules and exact deduplication, with one reason per rejected row.

Rules are applied in order and a row is rejected by the first it fails, so the per-reason counts add
up to the rejected total and kept + rejected == input, always.
"""

from __future__ import annotations

import polars as pl

from clipcore.config import FilterConfig

REASONS = ("ingest_failed", "caption_too_few_words", "caption_too_short", "image_too_small",
           "aspect_ratio_too_large", "duplicate_image")


def rejection_reason(config: FilterConfig) -> pl.Expr:
    """A polars expression giving each manifest row's rejection reason, or null when it passes."""
    caption = pl.col("caption").fill_null("").str.strip_chars()
    words = caption.str.split(" ").list.eval(pl.element().filter(pl.element() != "")).list.len()
    short_side = pl.min_horizontal("width", "height")
    long_side = pl.max_horizontal("width", "height")
    return (
        pl.when(pl.col("status") != "success").then(pl.concat_str(pl.lit("ingest_failed:"), pl.col("reason")))
        .when(words < config.min_words).then(pl.lit("caption_too_few_words"))
        .when(caption.str.len_chars() < config.min_chars).then(pl.lit("caption_too_short"))
        .when(short_side < config.min_side).then(pl.lit("image_too_small"))
        .when(long_side / short_side > config.max_aspect_ratio).then(pl.lit("aspect_ratio_too_large"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def filter_manifest(manifest: pl.DataFrame, config: FilterConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split an ingest manifest into (kept, rejected); `rejected` has a `filter_reason` per row.

    Exact duplicates (same image sha256) keep their first row among those passing every other rule.
    """
    scored = manifest.with_columns(filter_reason=rejection_reason(config))
    if config.dedupe_images:
        passing = pl.col("filter_reason").is_null()
        first = pl.col("_row").filter(passing).first().over("sha256")
        scored = scored.with_row_index("_row").with_columns(
            filter_reason=pl.when(passing & (pl.col("_row") != first))
            .then(pl.lit("duplicate_image"))
            .otherwise(pl.col("filter_reason"))
        ).drop("_row")
    kept = scored.filter(pl.col("filter_reason").is_null()).drop("filter_reason")
    rejected = scored.filter(pl.col("filter_reason").is_not_null())
    return kept, rejected


def funnel(manifest: pl.DataFrame, kept: pl.DataFrame, rejected: pl.DataFrame) -> dict:
    """Rows in, kept, rejected, and rejected per reason (ingest failures keep their ingest reason)."""
    counts = rejected.group_by("filter_reason").len().sort("len", descending=True)
    return {
        "rows_in": manifest.height,
        "kept": kept.height,
        "rejected": rejected.height,
        "rejected_by_reason": dict(zip(counts["filter_reason"].to_list(), counts["len"].to_list(), strict=True)),
    }
