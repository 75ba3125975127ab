"""MLflow wiring: the store, training runs, model registration and the champion alias."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from clipcore.evaluate.metric_names import VERSION_TAGS
from pipelines.processes import current_owner, owner_is_dead
from pipelines.provenance import CHAMPION, dataset_name, git_state, mlflow_run_url, mlflow_version_url

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
CHECKPOINT_TAG = "checkpoint_sha256"
PYFUNC_CODE = Path(__file__).with_name("clip_pyfunc.py")

# MLflow metric names, by prefix (the UI groups charts by it); outputs/metrics.json keeps the bare names
TRAIN = "train/"  # a series: every logged training step's record (loss, lr, temperature, batch diagnostics)
TRAIN_SUMMARY = "train_summary/"  # once per training: throughput, rows, memory
EVAL = "eval/"  # once per evaluation: every key of metrics.json


def training_series(record: dict) -> dict[str, float]:
    """A training log record as MLflow metrics: `train/<key>` for every value but the step (the metrics' step)."""
    return {TRAIN + key: float(value) for key, value in record.items() if key != "step"}


def configure_mlflow(tracking_uri: str | None, artifact_root: str, experiment: str) -> str:
    """Use `tracking_uri` (else $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db) and `experiment`.

    A new experiment stores its artifacts under `artifact_root`; returns the experiment id.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _store_lock(uri):  # the first use creates the schema: one process at a time, or they trip on each other
        existing = mlflow.get_experiment_by_name(experiment)
        if existing is not None:
            experiment_id = existing.experiment_id
        else:
            location = Path(artifact_root).resolve().as_uri()
            experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        mlflow.MlflowClient().search_registered_models(max_results=1)  # the registry's tables too
    mlflow.set_experiment(experiment_id=experiment_id)
    close_dead_runs(experiment_id)
    return experiment_id


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first uses of a sqlite store (schema creation and migration are not safe to run concurrently)."""
    if not uri.startswith("sqlite:///"):
        yield  # a tracking server or a database server migrates once, itself
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.with_name(db.name + ".init.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


OWNER_TAG = "owner_process"  # pipelines.processes: the process that has the run open


@contextlib.contextmanager
def tracked_run(**kwargs) -> Iterator[mlflow.ActiveRun]:
    """mlflow.start_run, recording which process holds the run open, so that a run whose process was killed
    (and so never ended it) is marked KILLED by the next stage that opens the store (`close_dead_runs`)."""
    with mlflow.start_run(**kwargs) as run:
        mlflow.set_tag(OWNER_TAG, current_owner())
        yield run


def close_dead_runs(experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment whose owning process on this host is gone; returns their ids."""
    client = mlflow.MlflowClient()
    closed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        owner = run.data.tags.get(OWNER_TAG, "")
        if owner_is_dead(owner):  # never another host's run, nor one opened outside the pipeline
            client.set_tag(run.info.run_id, "killed_because", f"process {owner} ended without ending the run")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


def model_signature() -> ModelSignature:
    """Input: an `image` (bytes) or a `text` (str) column; optional param `labels` for zero-shot."""
    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image", required=False), ColSpec("string", "text", required=False)]),
        params=ParamSchema([ParamSpec("labels", "string", [], shape=(-1,))]),
    )


def log_and_register(checkpoint_dir: Path, model_name: str, checkpoint_sha256: str) -> tuple[str, str]:
    """Log the checkpoint as a models-from-code pyfunc in the active run and register it, tagging the run and the
    version with the checkpoint's digest.

    Returns:
        (model URI, registered version).
    """
    mlflow.set_tag(CHECKPOINT_TAG, checkpoint_sha256)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_CODE),
        artifacts={"checkpoint": str(checkpoint_dir)},
        signature=model_signature(),
        registered_model_name=model_name,
        pip_requirements=["torch", "torchvision", "transformers", "tokenizers", "safetensors", "pillow", "pandas",
                          "clip-pipeline"],
    )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_model_version_tag(model_name, version, CHECKPOINT_TAG, checkpoint_sha256)
    describe_version(model_name, version)
    return info.model_uri, version


def run_link(run_id: str) -> str:
    """The run's page in the MLflow UI (pipelines.provenance.mlflow_ui_base says where that is)."""
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    return mlflow_run_url(mlflow.get_tracking_uri(), experiment_id, run_id)


def version_link(model_name: str, version: str) -> str:
    """A registered version's page in the MLflow UI."""
    return mlflow_version_url(mlflow.get_registry_uri(), model_name, version)


def log_training_inputs(kept_path: str, ingest_input: str, data_version: tuple[str, str] | None) -> None:
    """The active run's inputs as MLflow datasets, without reading their rows: kept.parquet (context `training`;
    digest: the file's md5, schema and row count from its footer) and the ingest input it was filtered from (context
    `source`; digest: its DVC hash, `data_version`)."""
    import hashlib

    import pyarrow.parquet as pq
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    digest = hashlib.md5()
    with open(kept_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    name = dataset_name(ingest_input)
    kept = MetaDataset(LocalArtifactDatasetSource(str(Path(kept_path).resolve())), name=f"{name}/kept",
                       digest=digest.hexdigest(), schema=_parquet_schema(kept_path))
    mlflow.log_input(kept, context="training", tags={"rows": str(pq.read_metadata(kept_path).num_rows)})
    source_digest = data_version[0].removesuffix(".dir") if data_version else None  # 32 hex: MLflow keeps <= 36
    source = MetaDataset(LocalArtifactDatasetSource(str(Path(ingest_input).resolve())), name=name, digest=source_digest)
    mlflow.log_input(source, context="source")


def _parquet_schema(path: str) -> Schema:
    """An MLflow schema of a parquet file's columns, read from its footer (columns of other types are left out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = ((pa.types.is_string, "string"), (pa.types.is_large_string, "string"), (pa.types.is_integer, "long"),
             (pa.types.is_floating, "double"), (pa.types.is_boolean, "boolean"), (pa.types.is_binary, "binary"))
    columns = []
    for field in pq.read_schema(path):
        kind = next((name for test, name in kinds if test(field.type)), None)
        if kind is not None:
            columns.append(ColSpec(kind, field.name))
    return Schema(columns)


def describe_version(model_name: str, version: str) -> str:
    """Write the registered version's description (Markdown in the MLflow UI) from its run: what trained it, on
    which data, and its evaluation metrics once logged. Returns it."""
    client = mlflow.MlflowClient()
    run = client.get_run(client.get_model_version(model_name, version).run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    commit = tags.get("mlflow.source.git.commit")
    code = f"git {commit[:12]}{' (dirty work tree)' if tags.get('git_dirty') == 'true' else ''}" if commit else "-"
    rows = metrics.get(TRAIN_SUMMARY + "rows", float("nan"))
    lines = [f"Trained by MLflow run `{run.info.run_name}` ({run.info.run_id}): loss `{params.get('loss.name', '-')}`, "
             f"{rows:.0f} rows, {params.get('train.epochs', '-')} epochs, code {code}.",
             f"Data: dataset `{tags.get('dataset', '-')}`, input `{params.get('ingest.input', '-')}`, data version "
             f"`{tags.get('data_version', '-')}` ({tags.get('data_version_source', 'unknown')})"
             + (f", DVC experiment `{tags['dvc_experiment']}`." if "dvc_experiment" in tags else ".")]
    evaluated = [f"{key} {metrics[EVAL + key]:.4f}" for key in VERSION_TAGS if EVAL + key in metrics]
    lines.append("Evaluation: " + (", ".join(evaluated) if evaluated else "not yet evaluated") + ".")
    description = "\n\n".join(lines)
    client.update_model_version(model_name, version, description=description)
    return description


def check_version_checkpoint(model_name: str, version: str, checkpoint_sha256: str) -> None:
    """Raise unless registered `version` was made from the checkpoint with this digest."""
    tags = mlflow.MlflowClient().get_model_version(model_name, version).tags
    if tags.get(CHECKPOINT_TAG) != checkpoint_sha256:
        raise ValueError(f"{model_name} v{version} was registered from checkpoint "
                         f"{tags.get(CHECKPOINT_TAG, 'unknown')[:12]}, not {checkpoint_sha256[:12]}: nothing is "
                         "logged onto it; materialize clip_model again")


def mlflow_embedders(model_uri: str):
    """(image, text) embedding functions of a registered pyfunc of this project (e.g.
    models:/clip-fashion_mnist@champion), for the CLIP-score filter."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        raise RuntimeError(f"CLIP-score filtering needs the model {model_uri}, which cannot be loaded ({err}). "
                           "Train one first (run the pipeline with filter.clip_score.enabled=false).") from err
    return (lambda images: model.predict(pd.DataFrame({"image": images})),
            lambda texts: model.predict(pd.DataFrame({"text": texts})))


def log_evaluation(run_id: str, model_name: str, version: str, checkpoint_sha256: str, metrics: dict[str, float],
                   files: list[Path]) -> None:
    """Evaluation metrics (as `eval/<key>`) and files into the training run, headline metrics as tags on the
    registered version and in its description: only when that version was registered from the evaluated
    checkpoint."""
    check_version_checkpoint(model_name, version, checkpoint_sha256)
    with tracked_run(run_id=run_id):
        mlflow.log_metrics({EVAL + key: value for key, value in metrics.items()})
        for path in files:
            mlflow.log_artifact(str(path), "evaluation")
    client = mlflow.MlflowClient()
    for key in VERSION_TAGS:
        if key in metrics:
            client.set_model_version_tag(model_name, version, key, f"{metrics[key]:.6f}")
    describe_version(model_name, version)


class ChampionUnavailable(RuntimeError):
    """The alias points at a version whose checkpoint cannot be had (artifacts deleted, altered or unreadable)."""


def champion_checkpoint(model_name: str) -> tuple[str | None, str | None]:
    """(version, local checkpoint folder) of the current champion, or (None, None) when there is none.

    Raises:
        ChampionUnavailable: its artifacts cannot be downloaded or are not the checkpoint it was registered from.
    """
    from mlflow.exceptions import MlflowException

    from clipcore.model.clip_model import checkpoint_digest

    version = champion_version(model_name)
    if version is None:
        return None, None
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}")
    except (MlflowException, OSError) as err:
        raise ChampionUnavailable(f"champion v{version}'s artifacts cannot be downloaded "
                                  f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    checkpoint = Path(local) / "artifacts" / "checkpoint"
    registered = mlflow.MlflowClient().get_model_version(model_name, version).tags.get(CHECKPOINT_TAG)
    if not checkpoint.is_dir() or (registered and checkpoint_digest(checkpoint) != registered):
        raise ChampionUnavailable(f"champion v{version}'s artifacts are not the checkpoint it was registered from")
    return version, str(checkpoint)


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


TOP1 = f"metrics.{EVAL}zero_shot_top1"
RUN_COLUMNS = {  # MLflow column -> report column
    "tags.mlflow.runName": "run", "tags.dataset": "dataset", "params.loss.name": "loss",
    "params.filter.enabled": "filtered",
    "params.filter.clip_score.enabled": "clip-score filter", "params.filter.languages": "languages",
    f"metrics.{TRAIN_SUMMARY}rows": "train rows", TOP1: "zero-shot top-1",
}
UNPREFIXED = {f"metrics.{TRAIN_SUMMARY}rows": "metrics.train_rows", TOP1: "metrics.zero_shot_top1"}  # older runs'


def training_runs(experiment: str) -> list[dict]:
    """Every evaluated training run of the experiment, newest first: how filtering and the loss moved top-1."""
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["start_time DESC"])
    for column, old in UNPREFIXED.items():  # runs logged before the metric names had prefixes
        if old in runs:
            runs[column] = runs[column].fillna(runs[old]) if column in runs else runs[old]
    if runs.empty or TOP1 not in runs:
        return []
    runs = runs[runs[TOP1].notna()]
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
    state = git_state()
    return state.short if state is not None else None


def training_facts(run_id: str) -> dict[str, str]:
    """What the report states about a training run: when it started (UTC), how long training took, on which device
    and hardware (tags the clip_model asset sets; "-" for runs logged before them)."""
    from datetime import UTC, datetime

    run = mlflow.MlflowClient().get_run(run_id)
    seconds = run.data.metrics.get(f"{TRAIN_SUMMARY}seconds")
    return {"trained": datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "training time": "-" if seconds is None else f"{seconds:.1f} s ({seconds / 60:.1f} min)",
            "device": run.data.tags.get("train_device", "-"), "hardware": run.data.tags.get("train_hardware", "-")}
