"""A single-node torchrun launch (the form pretrain_stage.torchrun_command builds) listens on loopback only: the
launcher's store and every worker's gloo socket. Stock `torchrun --standalone` listens on every interface."""

import ipaddress
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pipelines.pretrain_stage import torchrun_command

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads listening sockets from /proc")

WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    import torch.distributed as dist

    flags = Path(sys.argv[1])
    dist.init_process_group("gloo")
    total = torch.ones(1)
    dist.all_reduce(total)  # every process group socket is up
    if dist.get_rank() == 0:
        (flags / "ready").write_text(str(int(total.item())))
    deadline = time.monotonic() + 25
    while not (flags / "done").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    dist.barrier()
    dist.destroy_process_group()
""")


def single_node_launcher(nproc: int) -> list[str]:
    """torchrun_command's launcher part, without pipelines.pipes_train and its arguments."""
    command = torchrun_command("params.yaml", [], "kept.parquet", "shards", Path("out"), nproc, 1, False, "run")
    return command[:command.index("pipelines.pipes_train") - 1]


def listening_sockets(root: psutil.Process) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of `root` and its descendants."""
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        found += [(process.pid, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return found


def wait_for(path: Path, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.communicate(timeout=5)[0] if process.poll() is not None else "(still running)"
            raise AssertionError(f"the job never got ready (exit {process.poll()}):\n{output}")
        time.sleep(0.05)


def test_single_node_command_form():
    launcher = single_node_launcher(2)
    assert launcher[1:3] == ["-m", "pipelines.loopback_torchrun"] and "--standalone" not in launcher
    assert "--rdzv-backend=loopback" in launcher and "--rdzv-endpoint=127.0.0.1:0" in launcher
    multi = torchrun_command("p.yaml", [], "k", "s", Path("o"), 2, 2, False, "run", "node0:29400", "job", 1)
    assert multi[1:3] == ["-m", "torch.distributed.run"]  # several nodes need the network: torchrun as it is
    assert "--rdzv-backend=c10d" in multi and "--rdzv-endpoint=node0:29400" in multi  # tests/pipelines/test_multinode


def test_single_node_job_listens_on_loopback_only(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    job = subprocess.Popen([*single_node_launcher(2), str(tmp_path / "worker.py"), str(tmp_path)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(tmp_path / "ready", job, seconds=25)
        sockets = listening_sockets(psutil.Process(job.pid))
        (tmp_path / "done").touch()
        output = job.communicate(timeout=25)[0]
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output
    assert (tmp_path / "ready").read_text() == "2"  # both workers joined one process group
    assert any(pid == job.pid for pid, _, _ in sockets), sockets  # the launcher's store was seen
    exposed = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
    assert not exposed, f"listening beyond loopback: {exposed} (all: {sockets})"
