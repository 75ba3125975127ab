"""MLflow runs that explain themselves: prefixed metric names (training series, run summary, evaluation), tags for
the code, data, dataset and DVC experiment, the inputs as MLflow datasets, a model version description, links to
the MLflow UI. Real MLflow on a sqlite store in tmp_path."""

import hashlib
import subprocess

import mlflow
import polars as pl
import pytest
from mlflow import MlflowClient

from clipcore.model.clip_model import checkpoint_digest
from pipelines.provenance import (
    data_version,
    dataset_name,
    git_state,
    mlflow_run_url,
    mlflow_version_url,
    provenance_tags,
)
from pipelines.tracking import (
    log_and_register,
    log_evaluation,
    log_training_inputs,
    run_link,
    tracked_run,
    training_runs,
    training_series,
    version_link,
)


@pytest.mark.parametrize(("ingest_input", "name"), [
    ("data/fashion_mnist/captions.csv", "fashion_mnist"),  # a generic file name: its folder names the dataset
    ("/home/me/digits.csv.gz", "digits"),
    ("/srv/coco/annotations/captions_train2017.json", "captions_train2017"),
    ("/srv/photos/", "photos"),  # a folder input
])
def test_dataset_name_from_the_ingest_input(ingest_input, name):
    assert dataset_name(ingest_input) == name


def test_data_version_is_the_dvc_file_md5_else_the_input_file_md5(tmp_path):
    (tmp_path / "data" / "set").mkdir(parents=True)
    (tmp_path / "data" / "set" / "captions.csv").write_text("path,caption\n")
    (tmp_path / "data.dvc").write_text("outs:\n- md5: a986226f1ea85095364879278042711c.dir\n  path: data\n")
    own = tmp_path / "mine.csv"
    own.write_bytes(b"url,caption\nhttp://x/1.png,a cat\n")
    assert data_version(str(tmp_path / "data" / "set" / "captions.csv"), tmp_path) == (
        "a986226f1ea85095364879278042711c.dir", "data.dvc")
    assert data_version(str(own), tmp_path) == (hashlib.md5(own.read_bytes()).hexdigest(), "md5 of mine.csv")
    (tmp_path / "folder").mkdir()
    assert data_version(str(tmp_path / "folder"), tmp_path) is None  # an untracked folder has no DVC hash
    assert data_version("http://example.com/list.csv", tmp_path) is None


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_provenance_tags_name_commit_dirty_flag_data_and_dvc_experiment(tmp_path, monkeypatch):
    git(tmp_path, "init", "-q")
    (tmp_path / "captions.csv").write_text("path,caption\n")
    git(tmp_path, "add", "captions.csv")
    git(tmp_path, "commit", "-q", "-m", "data")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    tags = provenance_tags("captions.csv")
    assert tags == {"dataset": "captions", "mlflow.source.git.commit": head, "git_dirty": "false",
                    "data_version": hashlib.md5(b"path,caption\n").hexdigest(),
                    "data_version_source": "md5 of captions.csv"}
    (tmp_path / "captions.csv").write_text("path,caption\nx.png,a coat\n")  # a tracked file changes
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-bear")  # what `dvc exp run` sets for its stage commands
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", head)
    tags = provenance_tags("captions.csv")
    assert tags["git_dirty"] == "true" and git_state().short == head[:7] + "+dirty"
    assert tags["dvc_experiment"] == "lucky-bear" and tags["dvc_baseline_rev"] == head


def test_mlflow_ui_links_follow_the_tracking_uri_and_the_env_var(monkeypatch):
    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    assert mlflow_run_url("sqlite:///mlruns/mlflow.db", "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert mlflow_run_url("https://mlflow.example.org/", "3", "abc") == (
        "https://mlflow.example.org/#/experiments/3/runs/abc")  # a tracking server serves its own UI
    monkeypatch.setenv("MLFLOW_UI_URL", "http://box:8080/")
    assert mlflow_version_url("sqlite:///x.db", "clip digits", "4") == "http://box:8080/#/models/clip%20digits/versions/4"


@pytest.fixture
def store(mlflow_store):
    uri, checkpoint = mlflow_store
    return uri, checkpoint.parent


RECORDS = [{"step": s, "epoch": s / 10, "loss": 2.0 - s / 10, "lr": 1e-3, "logit_scale": 14.3, "temperature": 0.07,
            "positive_cosine": 0.5, "hardest_negative_cosine": 0.3, "margin": 0.2, "modality_gap": 0.8 - s / 100}
           for s in (0, 2, 4)]
METRICS = {"zero_shot_top1": 0.8, "zero_shot_top5": 0.99, "retrieval_image_to_text_r1": 0.4,
           "retrieval_text_to_image_r1": 0.3, "linear_probe_top1": 0.85, "margin": 0.25, "temperature": 0.05}


def test_a_run_logs_prefixed_series_inputs_tags_and_a_described_version(store, monkeypatch):
    uri, tmp_path = store
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-bear")
    ingest_input = tmp_path / "digits" / "captions.csv"
    ingest_input.parent.mkdir()
    ingest_input.write_text("path,caption\n")
    kept = tmp_path / "kept.parquet"
    pl.DataFrame({"uid": ["a", "b", "c"], "caption": ["x", "y", "z"], "shard": [0, 0, 1]}).write_parquet(kept)
    with tracked_run(run_name="pretrain-clip") as run:
        mlflow.log_params({"loss.name": "clip", "train.epochs": 3, "ingest.input": str(ingest_input)})
        mlflow.set_tags(provenance_tags(str(ingest_input)))
        log_training_inputs(str(kept), str(ingest_input), data_version(str(ingest_input)))
        for record in RECORDS:  # what the clip_model asset's on_log does
            mlflow.log_metrics(training_series(record), step=record["step"])
        mlflow.log_metrics({"train_summary/rows": 3})
        digest = checkpoint_digest(tmp_path / "checkpoint")
        _, version = log_and_register(tmp_path / "checkpoint", "clip", digest)
    client = MlflowClient(uri)
    description = client.get_model_version("clip", version).description
    assert "not yet evaluated" in description and "pretrain-clip" in description
    (tmp_path / "metrics.json").write_text("{}")
    log_evaluation(run.info.run_id, "clip", version, digest, METRICS, [tmp_path / "metrics.json"])

    data = client.get_run(run.info.run_id).data
    # every training value a series at every logged step; evaluation under eval/, never into the series
    for key in ("loss", "lr", "temperature", "logit_scale", "margin", "modality_gap", "positive_cosine"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, f"train/{key}")] == [0, 2, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/margin")] == [0]
    assert data.metrics["eval/temperature"] == 0.05 and data.metrics["train/temperature"] == 0.07
    assert all(name.split("/")[0] in {"train", "train_summary", "eval"} for name in data.metrics), data.metrics
    # tags: dataset, data version, DVC experiment (git: the test runs inside the project's work tree)
    assert data.tags["dataset"] == "digits" and data.tags["dvc_experiment"] == "lucky-bear"
    assert data.tags["data_version"] == hashlib.md5(b"path,caption\n").hexdigest()
    assert len(data.tags["mlflow.source.git.commit"]) == 40 and data.tags["git_dirty"] in {"true", "false"}
    # inputs: kept.parquet with its md5 and schema, and the source it came from with its DVC hash
    inputs = {i.dataset.name: i for i in client.get_run(run.info.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"digits/kept", "digits"}
    kept_input = inputs["digits/kept"]
    assert kept_input.dataset.digest == hashlib.md5(kept.read_bytes()).hexdigest()
    assert '"uid"' in kept_input.dataset.schema and str(kept) in kept_input.dataset.source
    assert {t.key: t.value for t in kept_input.tags} == {"mlflow.data.context": "training", "rows": "3"}
    assert inputs["digits"].dataset.digest == data.tags["data_version"]
    # the version says what trained it, on what, and how it scored
    description = client.get_model_version("clip", version).description
    for part in ("pretrain-clip", run.info.run_id, "loss `clip`", "3 rows", "dataset `digits`",
                 f"`{data.tags['data_version']}`", "DVC experiment `lucky-bear`", "zero_shot_top1 0.8000",
                 "linear_probe_top1 0.8500", f"git {data.tags['mlflow.source.git.commit'][:12]}"):
        assert part in description, (part, description)
    assert run_link(run.info.run_id) == (f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/"
                                         f"{run.info.run_id}")
    assert version_link("clip", version) == f"http://127.0.0.1:5000/#/models/clip/versions/{version}"
    (row,) = training_runs("clip-pipeline")  # the report's table reads the prefixed names
    assert row["zero-shot top-1"] == 0.8 and row["train rows"] == 3


def test_the_report_table_still_reads_runs_logged_before_the_prefixes(store):
    with tracked_run(run_name="old"):
        mlflow.log_metrics({"zero_shot_top1": 0.7, "train_rows": 900})
    with tracked_run(run_name="new"):
        mlflow.log_metrics({"eval/zero_shot_top1": 0.8, "train_summary/rows": 1000})
    rows = training_runs("clip-pipeline")
    assert [(r["run"], r["zero-shot top-1"], r["train rows"]) for r in rows] == [("new", 0.8, 1000), ("old", 0.7, 900)]
