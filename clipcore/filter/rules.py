"""Filtering with one reason per rejected row: DataComp basic rules, language, exact and near duplicates,
duplicate captions and CLIP score.

Rules run in order and a row is rejected by the first it fails, so per-reason counts add up to the
rejected total and kept + rejected == input, always.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from clipcore.config import ClipScoreConfig, FilterConfig
from clipcore.filter.language import detect_languages

REASON = "filter_reason"


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


def _reject(frame: pl.DataFrame, mask: pl.Series | np.ndarray, reason: str) -> pl.DataFrame:
    """Give `reason` to rows where `mask` holds and that are not rejected yet."""
    mask = pl.Series(np.asarray(mask, dtype=bool))
    return frame.with_columns(pl.when(pl.col(REASON).is_null() & mask).then(pl.lit(reason))
                              .otherwise(pl.col(REASON)).alias(REASON))


def _repeats(frame: pl.DataFrame, column: str) -> pl.Series:
    """True for passing rows whose `column` value already appeared on an earlier passing row."""
    passing = frame[REASON].is_null()
    seen: set = set()
    out = np.zeros(frame.height, dtype=bool)
    for i, (value, ok) in enumerate(zip(frame[column].to_list(), passing.to_list(), strict=True)):
        if ok:
            out[i] = value in seen
            seen.add(value)
    return pl.Series(out)


def near_duplicates(hashes: list[str | None], passing: list[bool], max_bits: int) -> np.ndarray:
    """Rows whose 64-bit hash is within `max_bits` of an earlier kept row's (pigeonhole bucketing by bands)."""
    bands = max_bits + 1  # two hashes within max_bits differ in at most max_bits bands: one band matches
    width = 64 // bands
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    kept_values: list[int] = []
    out = np.zeros(len(hashes), dtype=bool)
    for i, (text, ok) in enumerate(zip(hashes, passing, strict=True)):
        if not ok or text is None:
            continue
        value = int(text, 16)
        keys = [(value >> (b * width)) & ((1 << width) - 1) for b in range(bands)]
        candidates = {j for b, key in enumerate(keys) for j in buckets[b].get(key, ())}
        if candidates:
            others = np.array([kept_values[j] for j in candidates], dtype=np.uint64)
            if (np.bitwise_count(others ^ np.uint64(value)) <= max_bits).any():
                out[i] = True
                continue
        for b, key in enumerate(keys):
            buckets[b].setdefault(key, []).append(len(kept_values))
        kept_values.append(value)
    return out


def filter_manifest(manifest: pl.DataFrame, config: FilterConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split an ingest manifest into (kept, rejected); `rejected` has a `filter_reason` per row.

    Duplicates keep their first row among those passing every earlier rule.
    """
    frame = manifest.sort("uid").with_columns(basic_reason(config).alias(REASON))
    if config.enabled:
        if config.languages:
            passing = frame[REASON].is_null()
            captions = frame.filter(passing)["caption"].to_list()
            languages = detect_languages(captions, config.language_candidates)
            detected = dict(zip(np.flatnonzero(passing.to_numpy()), languages, strict=True))
            allowed = set(config.languages)
            wrong = [detected.get(i) not in allowed and detected.get(i) is not None for i in range(frame.height)]
            frame = _reject(frame, wrong, "language_not_allowed")
        if config.dedupe_images:
            frame = _reject(frame, _repeats(frame, "sha256"), "duplicate_image")
        if config.near_duplicate_bits is not None:
            near = near_duplicates(frame["phash"].to_list(), frame[REASON].is_null().to_list(),
                                   config.near_duplicate_bits)
            frame = _reject(frame, near, "near_duplicate_image")
        if config.dedupe_captions:
            frame = _reject(frame, _repeats(frame, "caption"), "duplicate_caption")
    kept = frame.filter(pl.col(REASON).is_null()).drop(REASON)
    rejected = frame.filter(pl.col(REASON).is_not_null())
    return kept, rejected


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
    counts = rejected.group_by(REASON).len().sort("len", descending=True)
    return {
        "rows_in": manifest.height,
        "kept": kept.height,
        "rejected": rejected.height,
        "rejected_by_reason": dict(zip(counts[REASON].to_list(), counts["len"].to_list(), strict=True)),
    }
