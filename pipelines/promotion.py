"""The promotion gate: the candidate against the current champion, both evaluated on the same test set now;
`champion` moves only when the candidate's zero-shot top-1 is higher. The decision and both sets of numbers are
recorded as tags on the candidate version."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from clipcore.config import PipelineConfig
from clipcore.evaluation import zero_shot
from clipcore.model import checkpoint_templates, load_checkpoint
from pipelines.evaluate_stage import load_test_set
from pipelines.tracking import CHAMPION

GATE_KEYS = ("zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall")


def zero_shot_on_test_set(checkpoint: str | Path, cfg: PipelineConfig) -> dict[str, float]:
    """A checkpoint's zero-shot metrics on the configured test set, with its own stored prompt templates."""
    model, tokenizer = load_checkpoint(checkpoint)
    templates = checkpoint_templates(checkpoint)
    images, labels, classes = load_test_set(dataclasses.replace(cfg, model=model.config))  # at the model's size
    metrics, _ = zero_shot(model, tokenizer, images, labels, classes, templates, cfg.eval.batch_size)
    return {"zero_shot_top1": metrics["top1"], "zero_shot_top5": metrics["top5"],
            "zero_shot_mean_per_class_recall": metrics["mean_per_class_recall"]}


def champion_checkpoint(model_name: str) -> tuple[str | None, str | None]:
    """(version, local checkpoint folder) of the current champion, or (None, None)."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None, None
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}@{CHAMPION}")
    return str(version.version), str(Path(local) / "artifacts" / "checkpoint")


def gate(clip_model: dict, candidate: dict[str, float], cfg: PipelineConfig) -> dict:
    """Compare, maybe promote, record; returns the decision with both metric sets."""
    name, version = clip_model["model_name"], str(clip_model["model_version"])
    champion, checkpoint = champion_checkpoint(name)
    candidate = {k: candidate[k] for k in GATE_KEYS}
    if champion is None or champion == version:
        before = None
        promoted = True
        reason = f"v{version} top-1 {candidate['zero_shot_top1']:.4f}: no champion before, now @{CHAMPION}"
    else:
        before = zero_shot_on_test_set(checkpoint, cfg)  # the champion on today's test set, not its old tag
        promoted = candidate["zero_shot_top1"] > before["zero_shot_top1"]
        verb = "beats" if promoted else "does not beat"
        reason = (f"v{version} top-1 {candidate['zero_shot_top1']:.4f} {verb} champion v{champion}'s "
                  f"{before['zero_shot_top1']:.4f} on the same test set"
                  + (f": now @{CHAMPION}" if promoted else f": v{champion} stays @{CHAMPION}"))
    client = MlflowClient()
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    tags = {"promotion": "promoted" if promoted else "refused", "promotion_reason": reason,
            "champion_before": champion or "none"}
    if before:
        tags.update({f"champion_{k}": f"{v:.6f}" for k, v in before.items()})
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return {"promoted": promoted, "reason": reason, "candidate": candidate, "champion": before,
            "champion_version": champion, "candidate_version": version}
