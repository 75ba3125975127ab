"""MLflow wiring: the store, training runs, model registration and the champion alias."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from clipcore.evaluate.metric_names import VERSION_TAGS

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


def mlflow_embedders(model_uri: str):
    """(image, text) embedding functions of a registered pyfunc of this project (e.g. models:/clip@champion), for the
    CLIP-score filter."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        raise RuntimeError(f"CLIP-score filtering needs the model {model_uri}, which cannot be loaded ({err}). "
                           "Train one first (run the pipeline with filter.clip_score.enabled=false).") from err
    return (lambda images: model.predict(pd.DataFrame({"image": images})),
            lambda texts: model.predict(pd.DataFrame({"text": texts})))


def log_evaluation(run_id: str, model_name: str, version: str, metrics: dict[str, float], files: list[Path]) -> None:
    """Evaluation metrics and files into the training run; headline metrics as tags on the registered version."""
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path), "evaluation")
    client = mlflow.MlflowClient()
    for key in VERSION_TAGS:
        if key in metrics:
            client.set_model_version_tag(model_name, version, key, f"{metrics[key]:.6f}")


def champion_checkpoint(model_name: str) -> tuple[str | None, str | None]:
    """(version, local checkpoint folder) of the current champion, or (None, None)."""
    version = champion_version(model_name)
    if version is None:
        return None, None
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}")
    return version, str(Path(local) / "artifacts" / "checkpoint")


def record_decision(model_name: str, decision) -> None:
    """Move `champion` when the decision promotes; tag the candidate version with the decision and both numbers."""
    client = mlflow.MlflowClient()
    version = decision.candidate_version
    if decision.promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    tags = {"promotion": "promoted" if decision.promoted else "refused", "promotion_reason": decision.reason,
            "champion_before": decision.champion_version or "none"}
    tags.update({f"champion_{k}": f"{v:.6f}" for k, v in (decision.champion or {}).items()})
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)


def champion_version(model_name: str) -> str | None:
    """The version `champion` points at now, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException:
        return None


RUN_COLUMNS = {  # MLflow column -> report column
    "tags.mlflow.runName": "run", "params.loss.name": "loss", "params.filter.enabled": "filtered",
    "params.filter.clip_score.enabled": "clip-score filter", "params.filter.languages": "languages",
    "metrics.train_rows": "train rows", "metrics.zero_shot_top1": "zero-shot top-1",
}


def training_runs(experiment: str) -> list[dict]:
    """Every evaluated training run of the experiment, newest first: how filtering and the loss moved top-1."""
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["start_time DESC"])
    if runs.empty or "metrics.zero_shot_top1" not in runs:
        return []
    runs = runs[runs["metrics.zero_shot_top1"].notna()]
    rows = []
    for _, run in runs.iterrows():
        row = {"run id": run["run_id"][:8]}
        for column, label in RUN_COLUMNS.items():
            value = run.get(column)
            row[label] = "-" if value is None or value != value else value  # NaN -> "-"
        rows.append(row)
    return rows


def git_commit() -> str | None:
    """The code version: the short git commit, with `+dirty` when the work tree has changes; None outside git."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           check=False).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")
