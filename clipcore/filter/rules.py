"""Filtering with one reason per rejected row: DataComp basic rules, language, exact and near duplicates,
duplicate captions and CLIP score.

Rules run in order and a row is rejected by the first it fails, so per-reason counts add up to the
rejected total and kept + rejected == input, always. The per-row rules (`row_reasons`) need only the row itself
and run shard by shard; the duplicate rules (`dedupe_reasons`) look across rows and run on partitions of rows
sharing a key (clipcore/filter/dedupe.py). `filter_manifest` applies all of them to one in-memory manifest (one
partition); the stage (clipcore/filter/partitioned.py) applies the same functions to an ingest folder of any size.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from clipcore.config import ClipScoreConfig, FilterConfig
from clipcore.filter.dedupe import near_duplicates, phash_value, split_first
from clipcore.filter.language import disallowed_languages

REASON = "filter_reason"
DEDUPE_COLUMNS = ("rid", "sha256", "phash", "caption")
"""What the duplicate rules read of a row (`rid`: an integer in uid order)."""


def basic_reason(config: FilterConfig) -> pl.Expr:
    """Ingest failures and DataComp's basic rules as one polars expression (null = passes)."""
    failed = pl.when(pl.col("status") != "success").then(pl.concat_str(pl.lit("ingest_failed:"), pl.col("error")))
    if not config.enabled:
        return failed.otherwise(pl.lit(None, pl.String))
    caption = pl.col("caption").fill_null("").str.strip_chars()
    words = caption.str.split(" ").list.eval(pl.element().filter(pl.element() != "")).list.len()
    width = pl.coalesce("original_width", "width")
    height = pl.coalesce("original_height", "height")
    short_side, long_side = pl.min_horizontal(width, height), pl.max_horizontal(width, height)
    return (
        failed.when(words < config.min_words).then(pl.lit("caption_too_few_words"))
        .when(caption.str.len_chars() < config.min_chars).then(pl.lit("caption_too_short"))
        .when(short_side < config.min_side).then(pl.lit("image_too_small"))
        .when(long_side / short_side > config.max_aspect_ratio).then(pl.lit("aspect_ratio_too_large"))
        .otherwise(pl.lit(None, pl.String))
    )


def row_reasons(frame: pl.DataFrame, config: FilterConfig) -> pl.DataFrame:
    """`frame` with `filter_reason` from the rules that judge a row alone: ingest failures, basic rules, language.

    Language detection runs once per distinct caption of the rows passing the basic rules; a caption lingua cannot
    place, or places nearly as likely in an allowed language (`filter.language_min_ratio`), is allowed.
    """
    frame = frame.with_columns(basic_reason(config).alias(REASON))
    if not (config.enabled and config.languages):
        return frame
    texts = frame.filter(pl.col(REASON).is_null())["caption"].drop_nulls().unique(maintain_order=True)
    found = pl.DataFrame({"caption": texts, "_lang": disallowed_languages(
        texts.to_list(), config.languages, config.language_candidates, config.language_min_ratio)},
        schema={"caption": pl.String, "_lang": pl.String})
    wrong = pl.col("_lang").is_not_null()
    return (frame.join(found, on="caption", how="left", maintain_order="left")
            .with_columns(pl.when(pl.col(REASON).is_null() & wrong).then(pl.lit("language_not_allowed"))
                          .otherwise(pl.col(REASON)).alias(REASON))
            .drop("_lang"))


def dedupe_reasons(passing: pl.DataFrame, config: FilterConfig) -> pl.DataFrame:
    """(rid, filter_reason) of the rows of `passing` (DEDUPE_COLUMNS, every row passing the earlier rules) that the
    duplicate rules reject, in rule order: exact image, near-duplicate image, exact caption. A duplicate is judged
    against the earlier rows passing every earlier rule."""
    rejects = [pl.DataFrame(schema={"rid": pl.UInt64, REASON: pl.String})]

    def reject(rows: pl.DataFrame, reason: str) -> None:
        rejects.append(rows.select("rid", pl.lit(reason).alias(REASON)))

    if config.enabled and config.dedupe_images:
        passing, repeats = split_first(passing, "sha256")
        reject(repeats, "duplicate_image")
    if config.enabled and config.near_duplicate_bits is not None:
        near = near_duplicates(passing.select("rid", phash_value().alias("h")), config.near_duplicate_bits)
        reject(near, "near_duplicate_image")
        passing = passing.join(near, on="rid", how="anti")
    if config.enabled and config.dedupe_captions:
        passing, repeats = split_first(passing, "caption")
        reject(repeats, "duplicate_caption")
    return pl.concat(rejects)


def filter_manifest(manifest: pl.DataFrame, config: FilterConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split an ingest manifest held in memory into (kept, rejected), both sorted by uid; `rejected` has a
    `filter_reason` per row. Duplicates keep their first row among those passing every earlier rule."""
    frame = row_reasons(manifest.sort("uid").with_row_index("rid").with_columns(pl.col("rid").cast(pl.UInt64)),
                        config)
    dropped = dedupe_reasons(frame.filter(pl.col(REASON).is_null()).select(DEDUPE_COLUMNS), config)
    frame = apply_reasons(frame, dropped).drop("rid")
    return frame.filter(pl.col(REASON).is_null()).drop(REASON), frame.filter(pl.col(REASON).is_not_null())


def apply_reasons(frame: pl.DataFrame, dropped: pl.DataFrame) -> pl.DataFrame:
    """`frame` (rid, filter_reason, ...) with the duplicate rules' reasons (rid, filter_reason) filled in."""
    return (frame.join(dropped.rename({REASON: "_dropped"}), on="rid", how="left", maintain_order="left")
            .with_columns(pl.coalesce(REASON, "_dropped").alias(REASON)).drop("_dropped"))


def apply_clip_score(kept: pl.DataFrame, rejected: pl.DataFrame, scores: np.ndarray,
                     config: ClipScoreConfig) -> tuple[pl.DataFrame, pl.DataFrame, float]:
    """Move kept rows scoring below the cut to `rejected` (reason `clip_score_low`); returns the cut too."""
    if len(scores) != kept.height:
        raise ValueError(f"{len(scores)} CLIP scores for {kept.height} kept rows")
    cut = config.threshold if config.threshold is not None else float(np.quantile(scores, 1 - config.top_fraction))
    scored = kept.with_columns(clip_score=pl.Series(scores, dtype=pl.Float32))
    low = scored.filter(pl.col("clip_score") < cut).with_columns(pl.lit("clip_score_low").alias(REASON))
    return scored.filter(pl.col("clip_score") >= cut), pl.concat([rejected, low], how="diagonal_relaxed"), cut


def funnel(manifest: pl.DataFrame, kept: pl.DataFrame, rejected: pl.DataFrame) -> dict:
    """Rows in, kept, rejected, and rejected per reason (ingest failures keep their ingest reason)."""
    counts = rejected.group_by(REASON).len()
    return funnel_counts(manifest.height, kept.height, dict(zip(counts[REASON], counts["len"], strict=True)))


def funnel_counts(rows_in: int, kept: int, by_reason: dict[str, int]) -> dict:
    """The funnel from counts: rejected per reason, most common first (ties by name)."""
    ordered = dict(sorted(by_reason.items(), key=lambda item: (-item[1], item[0])))
    return {"rows_in": rows_in, "kept": kept, "rejected": sum(ordered.values()), "rejected_by_reason": ordered}
