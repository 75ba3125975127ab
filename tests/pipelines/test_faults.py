"""Fault injection: stages killed (SIGKILL) at random points, run twice at once, fed a tampered checkpoint or an
unloadable champion. After each fault, nothing is misattributed: every published folder's value describes the files
beside it, every registered version's artifacts are the checkpoint it was tagged with, and every version carrying
zero-shot metrics scores exactly those numbers when measured again from its own artifacts. The next run of the stage
succeeds and closes what the killed one left open (MLflow runs, Dagster runs)."""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from mlflow import MlflowClient

from clipcore.config import load_params
from clipcore.evaluate.evaluation import zero_shot
from clipcore.evaluate.stage import open_test_set
from clipcore.model.clip_model import checkpoint_digest, checkpoint_templates, load_checkpoint
from tests.conftest import TINY_PARAMS

CLI = str(Path(sys.executable).with_name("clip-pipeline"))
FAST = ["train.epochs=2", "eval.probe_size=0"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_data):
    """A project folder (params, outputs, MLflow store, Dagster home) where v1 went through the whole chain. The
    tests below share it (each fault lands on whatever the one before left, as in a real project)."""
    tmp_path = tmp_path_factory.mktemp("project")
    (tmp_path / "params.yaml").write_text(TINY_PARAMS.format(data=tiny_data))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
           "DAGSTER_HOME": str(tmp_path / ".dagster"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    project = {"dir": tmp_path, "env": env, "uri": env["MLFLOW_TRACKING_URI"]}
    first = cli(project, "run")
    assert first.returncode == 0, first.stderr[-2000:]
    return project


def client_of(project) -> MlflowClient:
    """The project's store for runs and registry alike (an earlier test's global registry URI must not leak in)."""
    return MlflowClient(project["uri"], registry_uri=project["uri"])


def start(project, stage: str) -> subprocess.Popen:
    overrides = [a for o in FAST for a in ("--set", o)]
    return subprocess.Popen([CLI, stage, "--params", "params.yaml", *overrides], cwd=project["dir"],
                            env=project["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: see kill()


def kill(process: subprocess.Popen) -> None:
    """SIGKILL a stage and then what it started (Dagster's `tail -F` compute-log followers would otherwise outlive it,
    holding its output pipes open, and `communicate` would wait for them forever)."""
    process.send_signal(signal.SIGKILL)
    process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)


def cli(project, stage: str) -> subprocess.CompletedProcess:
    process = start(project, stage)
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def published(project, asset: str) -> dict | None:
    path = project["dir"] / "outputs" / asset / "asset.json"
    return json.loads(path.read_text())["value"] if path.exists() else None


def assert_nothing_misattributed(project) -> None:
    client = client_of(project)
    trained = published(project, "clip_model")
    if trained:
        assert checkpoint_digest(project["dir"] / trained["checkpoint"]) == trained["checkpoint_sha256"]
        tags = client.get_model_version("clip", trained["model_version"]).tags
        assert tags["checkpoint_sha256"] == trained["checkpoint_sha256"]
    evaluation = published(project, "evaluation")
    if evaluation:
        details = json.loads((project["dir"] / evaluation["details"]).read_text())
        assert details["checkpoint_sha256"] == evaluation["checkpoint_sha256"]
        assert details["model_version"] == evaluation["model_version"]
        assert json.loads((project["dir"] / evaluation["metrics_path"]).read_text()) == evaluation["metrics"]
    eval_config = load_params(project["dir"] / "params.yaml", FAST).eval
    mlflow.set_tracking_uri(project["uri"])
    mlflow.set_registry_uri(project["uri"])
    for version in client.search_model_versions("name='clip'"):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/clip/{version.version}",
                                                         dst_path=str(project["dir"] / "dl" / str(version.version))))
        assert checkpoint_digest(local / "artifacts" / "checkpoint") == version.tags["checkpoint_sha256"]
        if "zero_shot_top1" in version.tags:  # measured again from this version's own artifacts
            again = top1_of(local / "artifacts" / "checkpoint", eval_config)
            assert float(version.tags["zero_shot_top1"]) == pytest.approx(again, abs=1e-6), version.version


def top1_of(checkpoint: Path, eval_config) -> float:
    """Zero-shot top-1 of a checkpoint on the test set, with its own templates."""
    model, tokenizer = load_checkpoint(checkpoint)
    tally, _ = zero_shot(model, tokenizer, open_test_set(eval_config, model.config), checkpoint_templates(checkpoint))
    return tally["top1"]


def assert_nothing_left_open(project) -> None:
    client = client_of(project)
    experiment = client.get_experiment_by_name("clip-pipeline")
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    os.environ["DAGSTER_HOME"], home = str(project["dir"] / ".dagster"), os.environ.get("DAGSTER_HOME")
    try:
        with DagsterInstance.get() as instance:
            assert not instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    finally:
        os.environ.pop("DAGSTER_HOME") if home is None else os.environ.update(DAGSTER_HOME=home)


def test_stages_killed_at_random_points_misattribute_nothing(project):
    rng = random.Random(10)
    for stage, longest in (("pretrain", 25.0), ("evaluate", 15.0), ("promote", 12.0), ("report", 12.0)):
        process = start(project, stage)
        time.sleep(rng.uniform(3.0, longest))
        kill(process)
        assert_nothing_misattributed(project)
        again = cli(project, stage)  # the stage recovers: no stale lock, no half-written folder in the way
        assert again.returncode == 0, again.stderr[-2000:]
        assert_nothing_misattributed(project)
        assert_nothing_left_open(project)
    # the reruns, in chain order, rebuilt the chain on the retrained model: the report found every part consistent
    assert published(project, "champion")["candidate_version"] == published(project, "clip_model")["model_version"]


def registered(project) -> int:
    return len(client_of(project).search_model_versions("name='clip'"))


def test_two_pretrain_runs_at_once_one_is_refused(project):
    before = registered(project)
    first, second = start(project, "pretrain"), start(project, "pretrain")
    results = [(p.wait(600), p.communicate()[1]) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    refused = next(err for code, err in results if code != 0)
    assert "stage `clip_model` is being written by another run (pid " in refused
    assert refused.strip().splitlines()[-1].startswith("clip-pipeline: stage `clip_model` is being written")
    assert "Stack Trace" not in refused and "Traceback" not in refused  # Dagster's log line says it, briefly
    assert_nothing_misattributed(project)
    assert registered(project) == before + 1


def test_evaluate_refuses_a_checkpoint_other_than_the_registered_one(project):
    assert cli(project, "evaluate").returncode == 0
    version = published(project, "clip_model")["model_version"]
    before = client_of(project).get_model_version("clip", version).tags["zero_shot_top1"]
    templates = project["dir"] / "outputs" / "clip_model" / "checkpoint" / "templates.txt"
    kept = templates.read_text()
    templates.write_text("a drawing of a {}.\n")
    result = cli(project, "evaluate")
    assert result.returncode != 0 and "materialize clip_model again" in result.stderr
    assert client_of(project).get_model_version("clip", version).tags["zero_shot_top1"] == before
    templates.write_text(kept)


def test_a_champion_whose_artifacts_are_gone_is_reported_and_replaced(project):
    client = client_of(project)
    champion = client.get_model_version_by_alias("clip", "champion")
    location = client.get_model_version_download_uri("clip", champion.version)
    shutil.rmtree(location.removeprefix("file://"))
    for stage in ("pretrain", "evaluate", "promote"):
        assert cli(project, stage).returncode == 0, stage
    decision = published(project, "champion")
    assert decision["promoted"] and "cannot be downloaded" in decision["reason"], decision["reason"]
    assert decision["champion_version"] == str(champion.version)
    new = published(project, "clip_model")["model_version"]
    assert str(client.get_model_version_by_alias("clip", "champion").version) == new
