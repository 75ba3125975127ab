"""The pretrain stage's two launchers: in this process, or torchrun as an external process through Dagster Pipes
(logs and metric records stream back into the Dagster run; the same launch works on a cluster with the
dagster-k8s Pipes client or an sbatch wrapper around the same command)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import torch
from dagster import AssetExecutionContext, PipesSubprocessClient

from clipcore.config import PipelineConfig
from clipcore.train.stage import run_pretraining


def resumable_run_id(state_path: Path) -> str:
    """The MLflow run id stored in a training state (the run an interrupted training logged to)."""
    if not state_path.exists():
        raise FileNotFoundError(f"resume: no training state at {state_path}; train with train.checkpoint_every > 0")
    run_id = torch.load(state_path, weights_only=True, mmap=True)["extra"].get("mlflow_run_id")  # reads only this
    if not run_id:
        raise ValueError(f"resume: {state_path} records no MLflow run id (written outside the pipeline?)")
    return run_id


def train_in_process(kept_path: str, shard_root: str, out: Path, cfg: PipelineConfig, on_log: Callable[[dict], None],
                     resume: bool, mlflow_run_id: str) -> tuple[dict, list[dict]]:
    """run_pretraining here (its checkpoints carry the MLflow run id); returns (summary, history)."""
    trained = run_pretraining(pl.read_parquet(kept_path), shard_root, out, cfg, on_log=on_log, resume=resume,
                              extra_state={"mlflow_run_id": mlflow_run_id})
    return trained.summary(1), trained.result.history


def torchrun_command(params_path: str, overrides: list[str], kept_path: str, shard_root: str, out: Path,
                     nproc_per_node: int, nnodes: int, resume: bool, mlflow_run_id: str) -> list[str]:
    """The torchrun command line of pipelines.pipes_train. A single node runs pipelines.loopback_torchrun: torchrun
    whose store and workers' sockets listen on 127.0.0.1 only (stock `--standalone` listens on every interface)."""
    if nnodes == 1:
        command = [sys.executable, "-m", "pipelines.loopback_torchrun", f"--nproc-per-node={nproc_per_node}",
                   "--nnodes=1", "--rdzv-backend=loopback", "--rdzv-endpoint=127.0.0.1:0"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
                   f"--nnodes={nnodes}"]
    command += ["-m", "pipelines.pipes_train", "--params", params_path, "--kept", kept_path, "--shards", shard_root,
                "--output-dir", str(out)]
    for item in overrides:
        command += ["--set", item]
    command += ["--mlflow-run-id", mlflow_run_id] + (["--resume"] if resume else [])
    return command


def train_through_pipes(context: AssetExecutionContext, client: PipesSubprocessClient, command: list[str],
                        out: Path, on_log: Callable[[dict], None]) -> tuple[dict, list[dict]]:
    """Run the torchrun command through Pipes; replay the streamed metric records into `on_log`."""
    invocation = client.run(context=context, command=command)
    records = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and "step" in m]
    for record in records:
        on_log(record)
    summary = json.loads((out / "train_summary.json").read_text())
    summary["streamed_records"] = len(records)
    return summary, json.loads((out / "history.json").read_text())
