"""MLflow wiring: the store, training runs, model registration and the champion alias."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
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
