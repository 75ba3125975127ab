"""The evaluate stage end to end: a checkpoint, its test set and held-out pairs -> metrics.json and details.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from clipcore.config import EvalConfig, ModelConfig
from clipcore.data.labeled_sets import LabeledSet, csv_set, idx_set, image_folder_set
from clipcore.data.layout import shard_paths
from clipcore.data.shards import load_samples
from clipcore.evaluate.evaluation import (
    evaluate_model,
    top_confusions,
    zero_shot,
    zero_shot_metrics,
)
from clipcore.model.clip_model import checkpoint_templates, load_checkpoint
from clipcore.model.device import resolve_device
from clipcore.model.prompts import load_class_names

TOP_K_EXAMPLES = 5


def open_test_set(e: EvalConfig, m: ModelConfig) -> LabeledSet:
    """The configured test set, read in batches at the model's size and channels: `eval.labeled_set` (ImageFolder or
    csv) or the IDX files."""
    if e.labeled_set and Path(e.labeled_set).is_dir():
        return image_folder_set(e.labeled_set, m.image_size, m.channels, e.max_test_images)
    names = load_class_names(e.class_names)
    if e.labeled_set:
        return csv_set(e.labeled_set, m.image_size, m.channels, names, e.max_test_images)
    return idx_set(e.test_images, e.test_labels, names, e.max_test_images)


def load_holdout(holdout_path: str | Path, shard_root: str | Path, m: ModelConfig,
                 uids: list[str] | None = None) -> tuple[list[str], torch.Tensor, list[str]]:
    """The pretrain stage's held-out (uid, image, caption) rows (only `uids` when given), read from the shards."""
    holdout = pl.read_parquet(holdout_path)
    if uids is not None:
        holdout = holdout.filter(pl.col("uid").is_in(uids))
    return load_samples(shard_paths(shard_root, holdout), holdout["uid"].to_list(), m.image_size, m.channels,
                        progress=False)


def zero_shot_on_test_set(checkpoint: str | Path, e: EvalConfig) -> dict[str, float]:
    """A checkpoint's zero-shot metrics (the promotion gate's) on the configured test set, with its own templates."""
    model, tokenizer = load_checkpoint(checkpoint)
    model.to(resolve_device(e.device, "eval.device"))
    metrics, _ = zero_shot(model, tokenizer, open_test_set(e, model.config), checkpoint_templates(checkpoint),
                           e.batch_size)
    return zero_shot_metrics(metrics)


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, float]  # the flat keys of outputs/metrics.json
    model_config: ModelConfig  # what the checkpoint was built with (image size, channels)


def run_evaluation(checkpoint: str | Path, holdout_path: str | Path, shard_root: str | Path, e: EvalConfig,
                   out: str | Path, metrics_path: str | Path, identity: dict | None = None) -> EvaluationResult:
    """Evaluate the checkpoint on the test set, the held-out pairs and (with `probe_size`) a linear probe; writes
    `metrics_path` and out/details.json (per-class accuracy, confusions, retrieval examples, and `identity`: which
    model these numbers belong to)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_checkpoint(checkpoint)
    model.to(resolve_device(e.device, "eval.device"))
    labeled = open_test_set(e, model.config)
    class_names = labeled.class_names
    uids, holdout_images, holdout_captions = load_holdout(holdout_path, shard_root, model.config)
    probe = idx_set(e.probe_images, e.probe_labels, class_names, e.probe_size) if e.probe_size > 0 else None
    result = evaluate_model(model, tokenizer, labeled, checkpoint_templates(checkpoint), holdout_images,
                            holdout_captions, e.batch_size, probe)
    similarity = result["retrieval_similarity"]  # (images, captions)
    examples = [
        {"caption": holdout_captions[j], "caption_uid": uids[j],
         "top_uids": [uids[i] for i in np.argsort(-similarity[:, j])[:TOP_K_EXAMPLES]]}
        for j in range(min(e.num_examples, len(uids)))
    ]
    confused = [{"true": class_names[i], "predicted": class_names[j], "count": n,
                 "examples": result["examples"].get((i, j), [])}
                for i, j, n in top_confusions(result["confusion"])]
    details = {"class_names": class_names, "per_class_accuracy": result["per_class_accuracy"],
               "confused_pairs": confused, "confusion": result["confusion"], "retrieval_examples": examples,
               "test_images": result["test_images"], "holdout_pairs": len(uids), **(identity or {})}
    Path(metrics_path).write_text(json.dumps(result["metrics"], indent=2))
    (out / "details.json").write_text(json.dumps(details, indent=2))
    return EvaluationResult(result["metrics"], model.config)
