"""The pretrain stage's two launchers: in this process, or torchrun as an external process through Dagster Pipes
(logs and metric records stream back into the Dagster run).

One node runs pipelines.loopback_torchrun (every socket on 127.0.0.1). Several nodes meet through torchrun's c10d
rendezvous at `rdzv_endpoint` (HOST:PORT on node 0, reachable from every node): nothing there binds loopback only,
and every node runs the same command with its own `node_rank` (the README shows it under SLURM and Kubernetes).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

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
    trained = run_pretraining(kept_path, shard_root, out, cfg, on_log=on_log, resume=resume,
                              extra_state={"mlflow_run_id": mlflow_run_id})
    return trained.summary(1), trained.result.history


def torchrun_launcher(nproc_per_node: int, nnodes: int = 1, rdzv_endpoint: str = "", rdzv_id: str = "",
                      node_rank: int = 0) -> list[str]:
    """torchrun's part of the command line (what follows it is the module or script every process runs).

    One node: pipelines.loopback_torchrun, whose store and workers' sockets listen on 127.0.0.1 only (stock
    `--standalone` listens on every interface). Several nodes: `torch.distributed.run` with the c10d rendezvous at
    `rdzv_endpoint` under the job id `rdzv_id`; the stores and gloo/NCCL listen on every interface, since the nodes
    must reach each other. Node `node_rank` 0 hosts the rendezvous store (`is_host`: no guessing from host names,
    which a Kubernetes Service name or a second address defeats); c10d then numbers the nodes itself (by host name,
    then agent pid), so torchrun's `--node-rank`, which it ignores under c10d, is not passed.
    """
    if nnodes == 1:
        if rdzv_endpoint or rdzv_id or node_rank:
            raise ValueError("rdzv_endpoint, rdzv_id and node_rank are for nnodes > 1 (one node meets on 127.0.0.1)")
        return [sys.executable, "-m", "pipelines.loopback_torchrun", f"--nproc-per-node={nproc_per_node}",
                "--nnodes=1", "--rdzv-backend=loopback", "--rdzv-endpoint=127.0.0.1:0"]
    if nnodes < 1:
        raise ValueError(f"nnodes must be >= 1, not {nnodes}")
    host, _, port = rdzv_endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint=HOST:PORT (node 0's address, reachable from every "
                         f"node), not {rdzv_endpoint!r}")
    if not rdzv_id:
        raise ValueError(f"nnodes={nnodes} needs rdzv_id: one job id, the same on every node")
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank must be in 0..{nnodes - 1}, not {node_rank}")
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}",
            f"--rdzv-conf=is_host={'true' if node_rank == 0 else 'false'}"]


def torchrun_command(params_path: str, overrides: list[str], kept_path: str, shard_root: str, out: Path,
                     nproc_per_node: int, nnodes: int, resume: bool, mlflow_run_id: str, rdzv_endpoint: str = "",
                     rdzv_id: str = "", node_rank: int = 0) -> list[str]:
    """The torchrun command line of pipelines.pipes_train (torchrun_launcher says how nodes meet). Every node of a
    multi-node job runs it with its own `node_rank`; the paths must name the same files on every node."""
    command = torchrun_launcher(nproc_per_node, nnodes, rdzv_endpoint, rdzv_id, node_rank)
    command += ["-m", "pipelines.pipes_train", "--params", params_path, "--kept", kept_path, "--shards", shard_root,
                "--output-dir", str(out)]
    for item in overrides:
        command += ["--set", item]
    return command + ["--mlflow-run-id", mlflow_run_id] + (["--resume"] if resume else [])


def train_through_pipes(context: AssetExecutionContext, client: PipesSubprocessClient, command: list[str],
                        out: Path, on_log: Callable[[dict], None]) -> tuple[dict, list[dict]]:
    """Run the torchrun command through Pipes; replay the streamed metric records into `on_log`."""
    context.log.info(f"torchrun: {shlex.join(command)}")  # what the other nodes of a multi-node job run
    invocation = client.run(context=context, command=command)
    records = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and "step" in m]
    for record in records:
        on_log(record)
    summary = json.loads((out / "train_summary.json").read_text())
    summary["streamed_records"] = len(records)
    return summary, json.loads((out / "history.json").read_text())
