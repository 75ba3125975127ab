"""torchrun for one machine, listening on loopback only: `python -m pipelines.loopback_torchrun --nnodes=1
--rdzv-backend=loopback --rdzv-endpoint=127.0.0.1:0 TORCHRUN_ARGS...` (what `pretrain_stage.torchrun_command` runs
for a single node; port 0: any free one).

Stock torchrun cannot do this: torch's TCPStore server listens on every interface whatever host it is given (the
address is only for clients), so `--standalone` leaves two stores open to the network (the c10d rendezvous store and
the workers' store) and `--rdzv-backend=static --master-addr=127.0.0.1` still one. TCPStore does accept a listening
socket instead (`master_listen_fd`), so the `loopback` rendezvous backend registered here binds one on 127.0.0.1
and hosts its single store there: the rendezvous and, as with `static`, the workers' store (MASTER_ADDR=127.0.0.1).
The workers' gloo and NCCL sockets are pinned to the loopback interface too (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME,
unless already set); otherwise gloo listens on whatever address the host name resolves to.
"""

from __future__ import annotations

import os
import socket

from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous import (
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    rendezvous_handler_registry,
)
from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous
from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
LOOPBACK_INTERFACE = "lo"
BACKEND = "loopback"
TIMEOUT_SECONDS = 600  # torchrun's static backend's default


class LoopbackRendezvous(StaticTCPRendezvous):
    """torchrun's static single-node rendezvous with its store listening on a socket bound to 127.0.0.1."""

    def __init__(self, listener: socket.socket, run_id: str, timeout: int):
        super().__init__(LOOPBACK, listener.getsockname()[1], rank=0, world_size=1, run_id=run_id, timeout=timeout)
        self._listener = listener  # kept open: the store serves on this file descriptor

    def get_backend(self) -> str:
        return BACKEND

    def next_rendezvous(self) -> RendezvousInfo:
        if not self._store:
            self._store = TCPStore(self.master_addr, self.master_port, self.world_size, True, self.timeout,
                                   multi_tenant=True, master_listen_fd=self._listener.fileno())
        return super().next_rendezvous()  # wraps the store above in the run's prefix


def create_loopback_handler(params: RendezvousParameters) -> RendezvousHandler:
    """The `loopback` backend's handler: one node only (nothing else could reach its store), the endpoint's port
    (0 or none: any free one) on 127.0.0.1."""
    if params.min_nodes != 1 or params.max_nodes != 1:
        raise ValueError(f"--rdzv-backend={BACKEND} runs on one node; got --nnodes={params.min_nodes}:"
                         f"{params.max_nodes}")
    host, port = parse_rendezvous_endpoint(params.endpoint or LOOPBACK, default_port=0)
    if host not in LOOPBACK_NAMES:
        raise ValueError(f"--rdzv-backend={BACKEND} listens on {LOOPBACK}; got --rdzv-endpoint={params.endpoint}")
    listener = socket.create_server((LOOPBACK, port), backlog=128)
    return LoopbackRendezvous(listener, params.run_id, int(params.config.get("timeout", TIMEOUT_SECONDS)))


def main() -> None:
    """Register the backend, pin the workers' collectives to loopback and run torchrun's own command line."""
    from torch.distributed.run import main as torchrun_main

    rendezvous_handler_registry.register(BACKEND, create_loopback_handler)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    torchrun_main()


if __name__ == "__main__":
    main()
