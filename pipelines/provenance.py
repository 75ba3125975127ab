"""Where a run came from, as tags: the code (git commit, dirty or not), the data (its DVC hash), the dataset's name
and the DVC experiment that launched it; and links to a run and a model version in the MLflow UI.

No MLflow or torch here: the ingest stage tags its Dagster run with these too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import yaml

MLFLOW_UI_ENV = "MLFLOW_UI_URL"
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"  # the Makefile's `mlflow-ui`
GENERIC_STEMS = {"captions", "data", "dataset", "images", "index", "labels", "metadata", "train", "urls"}
CHAMPION = "champion"  # the registry alias of each dataset's best model
MODEL_PREFIX = "clip-"  # registered name of a dataset's models when registry.model_name is empty: clip-<dataset>


@dataclass(frozen=True)
class GitState:
    """The work tree's HEAD commit (full hash) and whether tracked files differ from it."""

    commit: str
    dirty: bool

    @property
    def short(self) -> str:
        return self.commit[:7] + ("+dirty" if self.dirty else "")


def git_state(cwd: str | Path | None = None) -> GitState | None:
    """HEAD and the dirty flag of the git work tree around `cwd` (default: here); None outside git."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, cwd=cwd)
    if head.returncode != 0:
        return None
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                            check=False, cwd=cwd)
    return GitState(head.stdout.strip(), bool(status.stdout.strip()))


def dataset_name(ingest_input: str) -> str:
    """The dataset's name, from the ingest input: the file's stem, or its folder's name when the stem is generic
    (`data/fashion_mnist/captions.csv` -> `fashion_mnist`); a folder input's own name.

    The one place that names a dataset: a named dataset configuration, when there is one, answers here instead."""
    path = Path(ingest_input.rstrip("/"))
    stem = path.name.split(".")[0]  # captions.csv.gz -> captions
    if stem.lower() in GENERIC_STEMS and path.parent.name:
        return path.parent.name
    return stem or str(ingest_input)


def registered_model_name(model_name: str, ingest_input: str) -> str:
    """The registry name the models of `ingest_input`'s dataset register under: `registry.model_name` when set,
    else `clip-<dataset>` (`clip-fashion_mnist`), so that training on other data never moves another dataset's
    `champion`. Characters MLflow model URIs cannot carry (`/`, `@`, spaces...) become `-`."""
    if model_name:
        return model_name
    return MODEL_PREFIX + (re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset_name(ingest_input)).strip("-.") or "data")


def champion_uri(model_name: str, ingest_input: str) -> str:
    """`models:/<registered name>@champion` of `ingest_input`'s dataset (see `registered_model_name`)."""
    return f"models:/{registered_model_name(model_name, ingest_input)}@{CHAMPION}"


def with_default_scorer(filter_config, model_name: str, ingest_input: str):
    """`filter_config` (a clipcore FilterConfig) with an empty `clip_score.model` set to the dataset's champion
    (`champion_uri`): the CLIP-score filter scores a dataset's pairs with that dataset's own best model."""
    if filter_config.clip_score.model:
        return filter_config
    scorer = dataclasses.replace(filter_config.clip_score, model=champion_uri(model_name, ingest_input))
    return dataclasses.replace(filter_config, clip_score=scorer)


def data_version(ingest_input: str, project: str | Path = ".") -> tuple[str, str] | None:
    """(DVC hash, where it comes from) of the data behind `ingest_input`: the md5 recorded by the `.dvc` file in
    `project` that tracks a folder holding it (data.dvc for the default data: the captions and their images), else
    the md5 of the input file itself (what DVC records for a file); None for an untracked folder or a URL."""
    path = Path(ingest_input)
    if "://" in ingest_input or not path.exists():
        return None
    project = Path(project)
    resolved = path.resolve()
    for dvc_file in sorted(f for f in project.glob("*.dvc") if f.is_file()):  # not the .dvc/ folder
        for out in (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", []):
            tracked = (project / out["path"]).resolve()
            if out.get("md5") and (resolved == tracked or tracked in resolved.parents):
                return out["md5"], dvc_file.name
    if path.is_file():
        digest = hashlib.md5()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest(), f"md5 of {path.name}"
    return None


def dvc_experiment() -> str | None:
    """The DVC experiment running this stage (`dvc exp run` sets DVC_EXP_NAME for its commands), else None."""
    return os.environ.get("DVC_EXP_NAME") or None


def provenance_tags(ingest_input: str) -> dict[str, str]:
    """Tags for an MLflow run: git commit (MLflow's own tag, shown in the UI) and dirty flag, data version and its
    source, dataset name, DVC experiment (and its baseline commit) where known."""
    tags = {"dataset": dataset_name(ingest_input)}
    if (git := git_state()) is not None:
        tags.update({"mlflow.source.git.commit": git.commit, "git_dirty": str(git.dirty).lower()})
    if (version := data_version(ingest_input)) is not None:
        tags.update({"data_version": version[0], "data_version_source": version[1]})
    if (experiment := dvc_experiment()) is not None:
        tags["dvc_experiment"] = experiment
        if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
            tags["dvc_baseline_rev"] = baseline
    return tags


def dagster_run_tags(ingest_input: str) -> dict[str, str]:
    """Tags for the Dagster run: the dataset and, under `dvc exp run`, the DVC experiment."""
    tags = {"dataset": dataset_name(ingest_input)}
    if (experiment := dvc_experiment()) is not None:
        tags["dvc_experiment"] = experiment
    return tags


def tag_dagster_run(context, ingest_input: str) -> None:
    """Add `dagster_run_tags` to the run executing `context` (runs launched from the UI get them too)."""
    if context.instance is not None and context.run_id:
        context.instance.add_run_tags(context.run_id, dagster_run_tags(ingest_input))


def mlflow_ui_base(tracking_uri: str) -> str:
    """The MLflow UI's address: $MLFLOW_UI_URL, else the tracking server itself (an http(s) tracking URI), else the
    Makefile's `mlflow-ui` on 127.0.0.1:5000 (serving the sqlite store)."""
    if base := os.environ.get(MLFLOW_UI_ENV):
        return base.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_MLFLOW_UI


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI."""
    return f"{mlflow_ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_version_url(tracking_uri: str, model_name: str, version: str) -> str:
    """A registered model version's page in the MLflow UI."""
    return f"{mlflow_ui_base(tracking_uri)}/#/models/{quote(model_name, safe='')}/versions/{version}"
