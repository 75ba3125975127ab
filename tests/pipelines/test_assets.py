"""Each asset through `dagster.materialize` on a tiny slice, MLflow in tmp_path; then the whole graph."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from dagster import AssetCheckKey, AssetKey, DagsterInstance
from dagster._core.errors import DagsterAssetCheckFailedError
from mlflow import MlflowClient

from pipelines.definitions import ASSETS, defs
from pipelines.launch import build_resources, materialize_stages


@pytest.fixture
def env(tmp_path, tiny_params, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    resources = build_resources(params_path=str(tiny_params), outputs_dir=str(tmp_path / "outputs"),
                                artifact_root=str(tmp_path / "mlruns" / "artifacts"))
    return {"resources": resources, "outputs": tmp_path / "outputs", "uri": uri,
            "instance": DagsterInstance.ephemeral()}


class Results:
    """The runs of one `materialize_stages` call, read as one."""

    def __init__(self, results):
        self.results = results
        self.success = all(r.success for r in results)

    def asset_materializations_for_node(self, name):
        return [m for r in self.results for m in r.asset_materializations_for_node(name)]

    def get_asset_check_evaluations(self):
        return [e for r in self.results for e in r.get_asset_check_evaluations()]


def run(env, selection, overrides=()):
    return Results(materialize_stages(selection, env["resources"], env["instance"], list(overrides), "DEBUG"))


def checks_passed(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_definitions_load():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"caption_shards", "filtered_captions", "clip_model", "evaluation", "champion", "report"}


def test_ingest_then_filter_assets(env):
    result = run(env, ["caption_shards"])
    meta = result.asset_materializations_for_node("caption_shards")[0].metadata
    assert meta["rows"].value == 1224 and meta["shards"].value == 3  # 500 rows per shard
    assert meta["by_error"].value["undecodable_image"] == 6  # 0.5% of 1200 files corrupt
    # one partition per shard; a rerun finds every shard complete and writes none
    assert env["instance"].get_dynamic_partitions("ingest_shards") == ["00000", "00001", "00002"]
    assert len(result.asset_materializations_for_node("caption_shards")) == 3
    again = run(env, ["caption_shards"]).asset_materializations_for_node("caption_shards")[0].metadata
    assert again["shards_written"].value == 0 and again["rows"].value == 1224
    assert checks_passed(result) == {"ingest_accounts_for_every_row": True}

    result = run(env, ["filtered_captions"])
    meta = result.asset_materializations_for_node("filtered_captions")[0].metadata
    assert meta["kept"].value + meta["rejected"].value == 1224
    reasons = meta["rejected_by_reason"].value
    assert reasons["ingest_failed:undecodable_image"] == 6 and reasons["duplicate_image"] > 0
    assert reasons["language_not_allowed"] > 0 and reasons["caption_too_few_words"] > 0
    assert sum(reasons.values()) == meta["rejected"].value
    assert checks_passed(result) == {"filter_counts_reconcile": True}


def test_ingest_check_fails_when_no_row_was_ingested(env, tmp_path):
    """A wrong ingest.data_root fails every local path: the blocking check fails (naming the reason and the setting)
    instead of passing with nothing kept, and filtering does not start."""
    with pytest.raises(DagsterAssetCheckFailedError, match="ingest_accounts_for_every_row"):
        run(env, ["caption_shards", "filtered_captions"], [f"ingest.data_root={tmp_path / 'elsewhere'}"])
    evaluation = env["instance"].event_log_storage.get_latest_asset_check_execution_by_key(
        [AssetCheckKey(AssetKey("caption_shards"), "ingest_accounts_for_every_row")])
    check = next(iter(evaluation.values())).event.dagster_event.event_specific_data
    assert not check.passed and check.metadata["success"].value == 0
    assert "file_not_found" in check.description and "ingest.data_root" in check.description
    assert env["instance"].get_latest_materialization_event(AssetKey("filtered_captions")) is None


def test_whole_graph_registry_and_served_model(env, tmp_path):
    result = run(env, [a.key.to_user_string() for a in ASSETS])
    assert result.success and all(checks_passed(result).values()), checks_passed(result)
    assert "alias_matches_decision" in checks_passed(result)
    metrics = json.loads((env["outputs"] / "metrics.json").read_text())
    for key in ("zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall", "retrieval_image_to_text_r1",
                "retrieval_text_to_image_r10"):
        assert 0.0 <= metrics[key] <= 1.0
    html = (env["outputs"] / "report" / "index.html").read_text()
    for section in ("Data funnel", "Training", "Zero-shot classification", "Retrieval", "Run and model"):
        assert section in html
    assert "data:image/png;base64," in html
    client = MlflowClient(env["uri"])
    champion = client.get_model_version_by_alias("clip", "champion")
    assert str(champion.version) == "1" and champion.tags["promotion"] == "promoted"

    # The champion, loaded in a new process, reproduces the evaluation's zero-shot top-1 on the same images.
    script = Path(__file__).with_name("served_top1.py")
    out = subprocess.run([sys.executable, str(script), env["uri"], str(tmp_path / "outputs" / "..")],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2],
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TINY_PARAMS":
                              str(env["resources"]["pipeline"].params_path)})
    served = json.loads(out.stdout.strip().splitlines()[-1])
    assert served["embedding_norms_ok"] and served["text_dim"] == served["image_dim"]
    assert served["top1"] == pytest.approx(metrics["zero_shot_top1"], abs=0.01)

    # A worse candidate (a few steps at a tiny learning rate: near chance, while the champion is far above it)
    # is refused: the champion stays, and the decision is recorded on the version.
    assert metrics["zero_shot_top1"] > 0.15
    result = run(env, ["clip_model", "evaluation", "champion", "report"],
                 overrides=["train.epochs=0.1", "train.lr=1e-6"])
    decision = result.asset_materializations_for_node("report")[0].metadata
    assert decision["promoted"].value is False and "does not beat" in decision["decision"].value
    gate = result.asset_materializations_for_node("champion")[0].metadata
    assert gate["promoted"].value is False and gate["champion_top1_same_test_set"].value == pytest.approx(
        metrics["zero_shot_top1"])  # the champion, re-evaluated on the same test set, scores what it scored
    assert checks_passed(result)["alias_matches_decision"]
    html = (env["outputs"] / "report" / "index.html").read_text()
    assert "does not beat" in html and "Candidate vs champion" in html
    assert str(client.get_model_version_by_alias("clip", "champion").version) == "1"
    assert client.get_model_version("clip", "2").tags["promotion"] == "refused"
    mlflow.set_tracking_uri(env["uri"])
    run_data = client.get_run(champion.run_id).data
    assert "train/loss" in run_data.metrics and run_data.params["loss.name"] == "clip"
    assert run_data.params["filter.enabled"] == "True"  # the filter params behind the kept rows it trained on
    steps = [m.step for m in client.get_metric_history(champion.run_id, "train/loss")]
    assert steps[:2] == [0, 2]
    for key in ("modality_gap", "margin", "temperature", "positive_cosine"):  # batch diagnostics: series, every step
        assert [m.step for m in client.get_metric_history(champion.run_id, f"train/{key}")] == steps
    assert run_data.metrics["eval/zero_shot_top1"] == pytest.approx(metrics["zero_shot_top1"])
    assert {"eval/margin", "eval/temperature", "train_summary/rows"} <= set(run_data.metrics)
    assert not [k for k in run_data.metrics if "/" not in k]  # nothing unprefixed beside the series
    assert run_data.tags["dataset"] == "fashion_mnist" and "data_version" in run_data.tags
    assert {i.dataset.name for i in client.get_run(champion.run_id).inputs.dataset_inputs} == {
        "fashion_mnist/kept", "fashion_mnist"}
    assert "zero_shot_top1 " in champion.description and "dataset `fashion_mnist`" in champion.description
    # the run as a link in the asset metadata; the Dagster runs tagged with the dataset
    pretrain = env["instance"].get_latest_materialization_event(AssetKey("clip_model")).asset_materialization
    assert pretrain.metadata["mlflow_run"].value.endswith(f"/runs/{pretrain.metadata['mlflow_run_id'].value}")
    assert env["instance"].get_run_by_id(result.results[0].run_id).tags["dataset"] == "fashion_mnist"
    # in-process training writes every logged step's loss line to its Dagster run's event log, as Pipes does
    lines = [e.user_message for r in result.results for e in env["instance"].all_logs(r.run_id)]
    logged = client.get_metric_history(client.get_model_version("clip", "2").run_id, "train/loss")  # that training's
    assert sum(line.startswith("step ") and ": loss " in line for line in lines) == len(logged) > 0


def test_pretrain_through_pipes_with_two_torchrun_processes(env):
    """launcher=torchrun: an external 2-process torchrun under Dagster Pipes streams logs and metrics back."""
    run(env, ["caption_shards", "filtered_captions"])
    result = materialize_stages(["clip_model"], env["resources"], env["instance"],
                                ["train.epochs=2", "train.checkpoint_every=5"],
                                asset_config={"clip_model": {"launcher": "torchrun", "nproc_per_node": 2}})[0]
    meta = result.asset_materializations_for_node("clip_model")[0].metadata
    assert meta["launcher"].value == "torchrun x2" and meta["streamed_records"].value > 3
    logs = [e.message for e in env["instance"].all_logs(result.run_id) if e.user_message]
    assert any("trained" in m and "2 processes" in m for m in logs)  # a log line streamed from the external rank 0
    client = MlflowClient(env["uri"])
    history = client.get_metric_history(meta["mlflow_run_id"].value, "train/loss")
    assert len(history) == meta["streamed_records"].value  # streamed metric records reached MLflow
    gap = client.get_metric_history(meta["mlflow_run_id"].value, "train/modality_gap")  # the whole record streams
    assert [m.step for m in gap] == [m.step for m in history]
    state = torch.load(env["outputs"] / "clip_model" / "train_state.pt", weights_only=True)  # published with it
    assert state["extra"]["mlflow_run_id"] == meta["mlflow_run_id"].value  # what `resume: true` continues


def test_pretrain_resumes_an_interrupted_training_in_the_same_mlflow_run(env, monkeypatch):
    """A training that dies at step 15 (state saved every 10 steps) is resumed by `resume: true`: from step 10, in
    the MLflow run the first attempt opened, which ends FINISHED with one registered model."""
    import pipelines.pretrain_stage as stage

    run(env, ["caption_shards", "filtered_captions"])
    overrides = ["train.epochs=2", "train.log_every=1", "train.checkpoint_every=10"]
    real = stage.run_pretraining

    def dies_at_step_15(*args, on_log, **kwargs):
        def log(record):
            on_log(record)
            if record["step"] == 15:
                raise RuntimeError("simulated crash")
        return real(*args, on_log=log, **kwargs)

    monkeypatch.setattr(stage, "run_pretraining", dies_at_step_15)
    with pytest.raises(RuntimeError, match="simulated crash"):
        materialize_stages(["clip_model"], env["resources"], env["instance"], overrides)
    crashed_run_id = env["instance"].get_runs(limit=1)[0].run_id
    monkeypatch.setattr(stage, "run_pretraining", real)
    resumed = materialize_stages(["clip_model"], env["resources"], env["instance"], overrides,
                                 asset_config={"clip_model": {"resume": True}})[0]
    assert resumed.success
    meta = resumed.asset_materializations_for_node("clip_model")[0].metadata
    client = MlflowClient(env["uri"])
    (only_run,) = client.search_runs([client.get_experiment_by_name("clip-pipeline").experiment_id])
    assert meta["mlflow_run_id"].value == only_run.info.run_id and only_run.info.status == "FINISHED"
    assert only_run.data.tags["resumed_by_dagster_run_id"] == resumed.run_id
    assert only_run.data.tags["dagster_run_id"] == crashed_run_id
    total = meta["steps"].value + 10  # the resumed attempt ran the steps after the checkpoint
    steps = [m.step for m in client.get_metric_history(only_run.info.run_id, "train/loss")]
    assert steps.count(11) == 2 and steps.count(16) == 1 and max(steps) == total - 1  # 10-15 were logged twice
    assert [str(v.version) for v in client.search_model_versions("name='clip'")] == ["1"]


def test_a_failing_blocking_check_stops_what_depends_on_it(env, monkeypatch):
    """A filter run that loses a kept row (injected fault) fails `filter_counts_reconcile`, an ERROR-severity blocking
    check: the run fails and `clip_model`, downstream of it, is never materialized."""
    import polars as pl

    import pipelines.assets.filter as stage

    run(env, ["caption_shards"])
    real = stage.run_filter

    def loses_a_row(ingest_dir, config, out, *args, **kwargs):
        result = real(ingest_dir, config, out, *args, **kwargs)
        pl.read_parquet(out / "kept.parquet").head(-1).write_parquet(out / "kept.parquet")
        return result

    monkeypatch.setattr(stage, "run_filter", loses_a_row)
    with pytest.raises(Exception, match="filter_counts_reconcile"):
        run(env, ["filtered_captions", "clip_model"])
    (failed_run,) = env["instance"].get_runs(limit=1)
    records = env["instance"].get_records_for_run(failed_run.run_id).records
    materialized = {r.event_log_entry.dagster_event.asset_key.to_user_string() for r in records
                    if r.event_log_entry.dagster_event and r.event_log_entry.dagster_event.is_step_materialization}
    checks = [r.event_log_entry.dagster_event.event_specific_data for r in records
              if r.event_log_entry.dagster_event
              and r.event_log_entry.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert materialized == {"filtered_captions"}  # clip_model never ran
    assert [(c.check_name, c.passed, c.severity.value) for c in checks] == [("filter_counts_reconcile", False, "ERROR")]
    assert not (env["outputs"] / "clip_model").exists()
