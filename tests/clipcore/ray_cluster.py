"""A real two-node Ray cluster on this machine for tests: a head node and a worker node, each its own raylet with one
CPU, meeting on loopback."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # read when ray is imported: workers use this .venv

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402


@contextlib.contextmanager
def two_node_cluster() -> Iterator[str]:
    """Start the cluster, yield its address, and shut it (and any driver connected here) down afterwards."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                "temp_dir": temp})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
