"""Two torchrun agents on this machine (`--nnodes 2 --nproc-per-node 1`, c10d rendezvous on 127.0.0.1, node ranks 0
and 1) train exactly as one agent with two processes: the same weights, bit for bit, and the same loss history. Both
jobs run `clip-pipeline train` under the launcher pretrain_stage.torchrun_launcher builds, so this holds whatever the
data path inside the training is."""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from clipcore.config import load_params
from clipcore.filter.stage import run_filter
from clipcore.ingest.stage import ingest
from pipelines.pretrain_stage import torchrun_launcher
from tests.conftest import TINY_PARAMS

OVERRIDES = ["train.epochs=1", "train.holdout_size=50", "train.log_every=1"]
SECONDS = 120  # per job; a node whose peer died waits for it up to torchrun's join timeout, so a hang is cut here


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, tiny_data) -> dict[str, Path]:
    """params.yaml, ingest shards and the filter's kept rows, built once with the library functions."""
    root = tmp_path_factory.mktemp("multinode")
    params = root / "params.yaml"
    params.write_text(TINY_PARAMS.format(data=tiny_data))
    config = load_params(params)
    ingest(config.ingest, root / "shards", progress=False)
    run_filter(root / "shards", config.filter, root / "filtered", progress=False)
    return {"root": root, "params": params, "shards": root / "shards", "kept": root / "filtered" / "kept.parquet"}


def train_args(data: dict[str, Path], out: Path) -> list[str]:
    """`clip-pipeline train` as the module torchrun runs in every process."""
    args = ["-m", "pipelines.cli", "train", "--params", str(data["params"]), "--kept", str(data["kept"]),
            "--shards", str(data["shards"]), "--output-dir", str(out)]
    for item in OVERRIDES:
        args += ["--set", item]
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(commands: list[list[str]], seconds: float) -> str:
    """Start every command at once and wait for all; if one fails or time runs out, stop the rest and fail. Returns
    their output."""
    # the same threads for both layouts: torchrun sets OMP_NUM_THREADS=1 only for several processes per agent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for c in commands]
    deadline = time.monotonic() + seconds
    try:
        while any(j.poll() is None for j in jobs) and time.monotonic() < deadline:
            if any(j.poll() not in (None, 0) for j in jobs):
                break
            time.sleep(0.1)
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
        outputs = [job.communicate()[0] for job in jobs]
    for command, job, output in zip(commands, jobs, outputs, strict=True):
        assert job.returncode == 0, f"{' '.join(command[:9])} ... exited {job.returncode}:\n{output[-4000:]}"
    return "\n".join(outputs)


@pytest.fixture(scope="module")
def one_node(filtered) -> tuple[Path, str]:
    """One agent of two processes, uninterrupted: its output folder and what it printed."""
    out = filtered["root"] / "one_node"
    return out, run_together([torchrun_launcher(2) + train_args(filtered, out)], SECONDS)


def test_two_nodes_of_one_process_train_as_one_node_of_two(filtered, one_node):
    (one_node, one_printed), two_nodes = one_node, filtered["root"] / "two_nodes"
    rendezvous = {"nnodes": 2, "rdzv_endpoint": f"127.0.0.1:{free_port()}", "rdzv_id": "test-multinode"}
    printed = [one_printed,
               run_together([torchrun_launcher(1, **rendezvous, node_rank=rank) + train_args(filtered, two_nodes)
                             for rank in (0, 1)], SECONDS)]
    for output in printed:  # rank 0's summary: one data-parallel job of 2 processes, not two jobs of 1
        assert output.count('"processes": 2') == 1 and '"processes": 1' not in output, output[-4000:]
    weights = [(out / "checkpoint" / "model.safetensors").read_bytes() for out in (one_node, two_nodes)]
    histories = [json.loads((out / "history.json").read_text()) for out in (one_node, two_nodes)]
    assert len(histories[0]) > 3
    assert histories[0] == histories[1]  # every logged loss, lr, temperature... equal as floats, not merely close
    assert weights[0] == weights[1]


def test_two_processes_killed_mid_run_resume_to_the_same_bits(filtered, one_node):
    """SIGKILL to the whole 2-process job (agent and both trainers) as soon as its first training state is on disk
    (state every 3 steps: the kill lands at some step after it), then `--resume`: the final weights equal the
    uninterrupted job's bit for bit."""
    import signal

    out = filtered["root"] / "killed"
    command = torchrun_launcher(2) + train_args(filtered, out) + ["--set", "train.checkpoint_every=3"]
    job = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)  # its own process group, killed below
    deadline = time.monotonic() + SECONDS
    while not (out / "train_state.pt").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL and not (out / "checkpoint" / "model.safetensors").exists()
    run_together([command + ["--resume"]], SECONDS)
    reference = one_node[0] / "checkpoint" / "model.safetensors"
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == reference.read_bytes()


def test_multi_node_launcher_needs_a_rendezvous():
    launcher = torchrun_launcher(4, nnodes=2, rdzv_endpoint="node0.cluster:29400", rdzv_id="job7", node_rank=1)
    assert launcher[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=node0.cluster:29400",
            "--rdzv-id=job7", "--rdzv-conf=is_host=false"} <= set(launcher)
    assert "--rdzv-conf=is_host=true" in torchrun_launcher(4, 2, "node0.cluster:29400", "job7", node_rank=0)
    for endpoint, rdzv_id, rank, message in [("", "job", 0, "rdzv_endpoint=HOST:PORT"),
                                             ("node0", "job", 0, "rdzv_endpoint=HOST:PORT"),
                                             ("node0:0", "job", 0, "rdzv_endpoint=HOST:PORT"),
                                             ("node0:29400", "", 0, "rdzv_id"),
                                             ("node0:29400", "job", 2, "node_rank must be in 0..1")]:
        with pytest.raises(ValueError, match=message):
            torchrun_launcher(1, 2, endpoint, rdzv_id, rank)
    with pytest.raises(ValueError, match="are for nnodes > 1"):
        torchrun_launcher(2, 1, "127.0.0.1:29400", "job", 0)

