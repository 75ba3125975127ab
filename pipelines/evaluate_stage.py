"""The evaluate stage's wiring: load the checkpoint and data, call clipcore, write metrics, log to MLflow."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import torch
from mlflow import MlflowClient

from clipcore.config import PipelineConfig
from clipcore.evaluation import evaluate_model, top_confusions
from clipcore.labeled_sets import load_csv_set, load_idx_set, load_image_folder
from clipcore.model import checkpoint_templates, load_checkpoint
from clipcore.shards import load_samples, shard_paths
from clipcore.zero_shot import load_class_names

TOP_K_EXAMPLES = 5


def load_test_set(cfg: PipelineConfig) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Test images (uint8), labels and class names: eval.labeled_set (ImageFolder or csv) or the IDX files."""
    e, m = cfg.eval, cfg.model
    if e.labeled_set and Path(e.labeled_set).is_dir():
        return load_image_folder(e.labeled_set, m.image_size, m.channels, e.max_test_images)
    names = load_class_names(e.class_names)
    if e.labeled_set:
        return load_csv_set(e.labeled_set, m.image_size, m.channels, names, e.max_test_images)
    return (*load_idx_set(e.test_images, e.test_labels, e.max_test_images), names)


def load_holdout(clip_model: dict, cfg: PipelineConfig,
                 uids: list[str] | None = None) -> tuple[list[str], torch.Tensor, list[str]]:
    """The pretrain stage's held-out (uid, image, caption) rows (only `uids` when given), read from the shards."""
    holdout = pl.read_parquet(clip_model["holdout"])
    if uids is not None:
        holdout = holdout.filter(pl.col("uid").is_in(uids))
    return load_samples(shard_paths(clip_model["shard_root"], holdout), holdout["uid"].to_list(), cfg.model.image_size,
                        cfg.model.channels, progress=False)


def run_evaluation(clip_model: dict, cfg: PipelineConfig, out: Path, metrics_path: Path) -> dict[str, float]:
    """Evaluate the checkpoint; write metrics.json and details.json; log both to the training run."""
    model, tokenizer = load_checkpoint(clip_model["checkpoint"])
    templates = checkpoint_templates(clip_model["checkpoint"])
    cfg = dataclasses.replace(cfg, model=model.config)  # the size and channels the model was built with
    test_images, test_labels, class_names = load_test_set(cfg)
    uids, holdout_images, holdout_captions = load_holdout(clip_model, cfg)
    e = cfg.eval
    probe = load_idx_set(e.probe_images, e.probe_labels, e.probe_size) if e.probe_size > 0 else None
    result = evaluate_model(model, tokenizer, test_images, test_labels, class_names, templates,
                            holdout_images, holdout_captions, cfg.eval.batch_size, probe)
    metrics = result["metrics"]
    similarity = result["retrieval_similarity"]  # (images, captions)
    examples = [
        {"caption": holdout_captions[j], "caption_uid": uids[j],
         "top_uids": [uids[i] for i in np.argsort(-similarity[:, j])[:TOP_K_EXAMPLES]]}
        for j in range(min(cfg.eval.num_examples, len(uids)))
    ]
    confused = [{"true": class_names[i], "predicted": class_names[j], "count": n,
                  "examples": [int(x) for x in np.flatnonzero((test_labels == i) & (result["predictions"] == j))[:6]]}
                 for i, j, n in top_confusions(result["confusion"])]
    details = {"class_names": class_names, "per_class_accuracy": result["per_class_accuracy"],
               "confused_pairs": confused,
               "confusion": result["confusion"], "retrieval_examples": examples,
               "test_images": len(test_labels), "holdout_pairs": len(uids)}
    metrics_path.write_text(json.dumps(metrics, indent=2))
    (out / "details.json").write_text(json.dumps(details, indent=2))
    with mlflow.start_run(run_id=clip_model["run_id"]):
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(metrics_path), "evaluation")
        mlflow.log_artifact(str(out / "details.json"), "evaluation")
    client = MlflowClient()
    for key in ("zero_shot_top1", "zero_shot_top5", "retrieval_image_to_text_r1", "retrieval_text_to_image_r1",
                "linear_probe_top1"):
        if key in metrics:
            client.set_model_version_tag(clip_model["model_name"], clip_model["model_version"], key,
                                         f"{metrics[key]:.6f}")
    return metrics
