"""Which process owns a run, so that a run left open by a killed process can be told from one still going.

An owner is `<host>:<pid>@<process start time>`; a reused pid has another start time, so it never revives a dead
owner. MLflow runs carry it as a tag (pipelines.tracking), Dagster runs as RUN_OWNER_TAG (set by PipelineResource).
"""

from __future__ import annotations

import os
import socket

import psutil


def _identity(pid: int) -> str | None:
    try:
        return f"{pid}@{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None


def current_owner() -> str:
    """This process as an owner string."""
    return f"{socket.gethostname()}:{_identity(os.getpid())}"


def owner_is_dead(owner: str) -> bool:
    """True when `owner` is a process of this host that no longer runs; False when it runs, or is another host's
    (which this host cannot judge), or is not an owner string at all."""
    host, _, identity = owner.partition(":")
    if host != socket.gethostname() or "@" not in identity or not identity.split("@")[0].isdigit():
        return False
    return _identity(int(identity.split("@")[0])) != identity


RUN_OWNER_TAG = "clip/owner_process"  # on each Dagster run: the process executing it


def fail_dead_runs(instance) -> list[str]:
    """Mark FAILURE every Dagster run still STARTED whose owning process (RUN_OWNER_TAG) is gone, e.g. killed during
    `dvc repro` or with the UI's run worker (Dagster's DefaultRunLauncher cannot check its workers' health itself);
    returns their ids."""
    from dagster import DagsterRunStatus, RunsFilter

    dead = [r for r in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
            if owner_is_dead(r.tags.get(RUN_OWNER_TAG, ""))]
    for run in dead:
        instance.report_run_failed(run, f"its process {run.tags[RUN_OWNER_TAG]} ended without ending it")
    return [r.run_id for r in dead]
