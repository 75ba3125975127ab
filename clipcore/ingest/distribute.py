"""Distributors: run the same work items (one shard each) on a local process pool or as Ray tasks on a cluster.

Both call `task(item, *args)` once per item and return its results; a task that raises fails the run with its
traceback. Ray is imported only when `ingest.distributor` is `ray`. Ray's tasks run in the cluster's own Python
environment (the one `ray start` was run from): the driver's `uv run` environment is not shipped to them.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

from clipcore.config import IngestConfig

DISTRIBUTORS = ("local", "ray")
_counter = None  # rows done, shared by the local pool's workers (set in each worker process)


def _init_worker(counter) -> None:
    global _counter
    _counter = counter
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def count_row() -> None:
    """One row done (the local pool's progress bar); nothing elsewhere."""
    if _counter is not None:
        with _counter.get_lock():
            _counter.value += 1


def node_id() -> str:
    """The machine a task runs on: its Ray node id inside a Ray task, else the host name."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def distribute(task: Callable, items: Sequence, args: tuple, config: IngestConfig, progress: bool = True) -> list:
    """`task(item, *args)` for every item on `config.distributor`; the results in item order."""
    if not items:
        return []
    total = sum(item.rows for item in items)
    bar = tqdm(total=total, desc=f"ingest ({len(items)} shards, {config.distributor})", unit="img",
               disable=not progress)
    try:
        if config.distributor == "ray":
            return run_ray(task, items, args, config.ray_address, bar)
        if config.distributor == "local":
            return run_local(task, items, args, config.processes, bar)
        raise ValueError(f"ingest.distributor must be one of {DISTRIBUTORS}, not {config.distributor!r}")
    finally:
        bar.close()


def run_local(task: Callable, items: Sequence, args: tuple, processes: int, bar: tqdm) -> list:
    """A spawn process pool of `processes` workers, one item at a time each."""
    spawn = multiprocessing.get_context("spawn")
    counter = spawn.Value("l", 0)
    with ProcessPoolExecutor(max_workers=max(1, min(processes, len(items))), mp_context=spawn,
                             initializer=_init_worker, initargs=(counter,)) as pool:
        futures = [pool.submit(task, item, *args) for item in items]
        while not all(f.done() for f in futures):
            time.sleep(0.25)
            bar.update(counter.value - bar.n)
        results = [f.result() for f in futures]  # re-raise a worker's crash with its traceback
        bar.update(counter.value - bar.n)
    return results


def run_ray(task: Callable, items: Sequence, args: tuple, address: str, bar: tqdm) -> list:
    """One Ray task per item (1 CPU each, spread over the nodes), on the cluster at `address` ($RAY_ADDRESS when
    empty; a Ray instance on this machine when neither is set). The driver only waits: the tasks write the outputs."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # read when ray is imported
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, log_to_driver=False)
    try:
        remote = ray.remote(_call).options(num_cpus=1, scheduling_strategy="SPREAD")
        shared = ray.put(args)  # once in the object store, not once per task
        pending = {remote.remote(task, item, shared): i for i, item in enumerate(items)}
        results: list = [None] * len(items)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                results[i] = ray.get(ref)  # re-raises a task's error (RayTaskError with its traceback)
                bar.update(items[i].rows)
        return results
    finally:
        if started:
            ray.shutdown()


def _call(task: Callable, item, args: tuple):
    """A Ray task's body: Ray passes `args` (an object reference) resolved, as one value."""
    return task(item, *args)
