"""MLflow under faults: runs of killed processes are closed, and concurrent first uses of a fresh store all work."""

import os
import signal
import subprocess
import sys

from mlflow import MlflowClient

OPEN_RUN_AND_WAIT = """
import sys, time
from pipelines.tracking import configure_mlflow, tracked_run
configure_mlflow(sys.argv[1], sys.argv[2], "faults")
with tracked_run(run_name=sys.argv[3]) as run:
    print(run.info.run_id, flush=True)
    time.sleep(120)
"""
FIRST_USE = """
import sys
from pipelines.tracking import configure_mlflow, tracked_run
configure_mlflow(sys.argv[1], sys.argv[2], "faults")
with tracked_run(run_name="first-use"):
    pass
"""


def open_run(uri, artifacts, name):
    process = subprocess.Popen([sys.executable, "-c", OPEN_RUN_AND_WAIT, uri, str(artifacts), name],
                               stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def test_a_killed_process_run_is_marked_killed_and_a_live_one_is_left_running(tmp_path):
    from pipelines.tracking import configure_mlflow

    uri, artifacts = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts"
    killed, killed_id = open_run(uri, artifacts, "killed")
    alive, alive_id = open_run(uri, artifacts, "alive")
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        client = MlflowClient(uri)
        assert client.get_run(killed_id).info.status == "RUNNING"  # what a kill leaves behind
        configure_mlflow(uri, str(artifacts), "faults")  # the next stage to open the store
        run = client.get_run(killed_id)
        assert run.info.status == "KILLED" and run.info.end_time is not None
        assert f":{killed.pid}@" in run.data.tags["killed_because"]
        assert client.get_run(alive_id).info.status == "RUNNING"
    finally:
        alive.kill()
        alive.wait()


def test_concurrent_first_uses_of_a_fresh_store_all_succeed(tmp_path):
    uri, artifacts = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts"
    processes = [subprocess.Popen([sys.executable, "-c", FIRST_USE, uri, str(artifacts)], stderr=subprocess.PIPE,
                                  text=True) for _ in range(6)]
    errors = [p.communicate()[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, "\n".join(e[-600:] for e in errors if e)
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "faults"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
