"""MLflow wiring: the store, training runs, model registration and the champion alias."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
CHAMPION = "champion"
PYFUNC_CODE = Path(__file__).with_name("clip_pyfunc.py")


def configure_mlflow(tracking_uri: str | None, artifact_root: str, experiment: str) -> str:
    """Use `tracking_uri` (else $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db) and `experiment`.

    A new experiment stores its artifacts under `artifact_root`; returns the experiment id.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        experiment_id = existing.experiment_id
    else:
        location = Path(artifact_root).resolve().as_uri()
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def model_signature() -> ModelSignature:
    """Input: an `image` (bytes) or a `text` (str) column; optional param `labels` for zero-shot."""
    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image", required=False), ColSpec("string", "text", required=False)]),
        params=ParamSchema([ParamSpec("labels", "string", [], shape=(-1,))]),
    )


def log_and_register(checkpoint_dir: Path, model_name: str) -> tuple[str, str]:
    """Log the checkpoint as a models-from-code pyfunc in the active run and register it.

    Returns:
        (model URI, registered version).
    """
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_CODE),
        artifacts={"checkpoint": str(checkpoint_dir)},
        signature=model_signature(),
        registered_model_name=model_name,
        pip_requirements=["torch", "torchvision", "transformers", "tokenizers", "safetensors", "pillow", "pandas",
                          "clip-pipeline"],
    )
    return info.model_uri, str(info.registered_model_version)


def champion_top1(client: MlflowClient, model_name: str) -> tuple[str | None, float | None]:
    """(version, zero_shot_top1) of the current champion, or (None, None) when there is none."""
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None, None
    value = version.tags.get("zero_shot_top1")
    return str(version.version), float(value) if value is not None else None


def promote_if_better(model_name: str, version: str, top1: float) -> dict:
    """Move `champion` to `version` when its zero-shot top-1 beats the champion's (or there is none).

    The decision and the numbers are recorded as tags on the candidate version.
    """
    client = MlflowClient()
    current, current_top1 = champion_top1(client, model_name)
    if current == version:
        decision = {"promoted": True, "reason": f"version {version} is already the champion"}
    elif current is None or current_top1 is None or top1 > current_top1:
        client.set_registered_model_alias(model_name, CHAMPION, version)
        before = "no champion before" if current is None else f"beats v{current}'s {current_top1:.4f}"
        decision = {"promoted": True, "reason": f"v{version} top-1 {top1:.4f} {before}: now @{CHAMPION}"}
    else:
        decision = {"promoted": False,
                    "reason": f"v{version} top-1 {top1:.4f} does not beat champion v{current}'s {current_top1:.4f}"}
    decision.update(candidate=version, candidate_top1=top1, champion_before=current, champion_top1_before=current_top1)
    client.set_model_version_tag(model_name, version, "promotion", "promoted" if decision["promoted"] else "refused")
    client.set_model_version_tag(model_name, version, "promotion_reason", decision["reason"])
    return decision
