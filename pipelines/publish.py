"""Publishing a stage's products atomically, one run at a time.

A stage writes into a private work folder, `outputs/.partial/<asset>/`, while it holds an exclusive lock on its
stage (`outputs/.locks/<asset>.lock`); a second run of the same stage is refused at once with a clear message,
never interleaved. When the stage is done it writes its value (`asset.json`) into the work folder and swaps the
folder into place by rename, so a reader sees the whole of one run's files or the whole of the previous run's,
never a mix. A run that dies leaves the published folder as it was. Readers that must not see the swap in the middle
of their reading (evaluation loading a checkpoint) hold a shared lock on the folder while they read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.io import ASSET_FILE, value_json

LOCKS, PARTIAL = ".locks", ".partial"


class StageBusyError(RuntimeError):
    """Another run of the same stage holds its lock."""


@dataclass(frozen=True)
class StageWrite:
    """One run's writing of a stage: `work` is where it writes, `final` where the files will be once published."""

    name: str
    final: Path
    work: Path
    outputs_dir: Path

    def publish(self, value: object) -> None:
        """Write `value` as `work/asset.json` and swap `work` into place as `final`."""
        (self.work / ASSET_FILE).write_text(value_json(value))
        old = self.work.with_name(f"{self.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        with _flock(_lock_path(self.outputs_dir, f"{self.name}.publish"), fcntl.LOCK_EX):
            if self.final.exists():
                os.rename(self.final, old)
            os.rename(self.work, self.final)
        shutil.rmtree(old, ignore_errors=True)


def copy_into_place(source: Path, target: Path) -> None:
    """Copy `source` to `target` (a file DVC keeps in git beside the stage folders: outputs/metrics.json,
    outputs/history.json), replaced whole, so a reader never sees half of it."""
    tmp = target.with_name(f"{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _lock_path(outputs_dir: Path, name: str) -> Path:
    locks = Path(outputs_dir) / LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    return locks / f"{name}.lock"


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def stage_writer(outputs_dir: str | Path, name: str, keep_partial: bool = False) -> Iterator[StageWrite]:
    """Hold stage `name`'s lock and give a fresh work folder (or, with `keep_partial`, the one an interrupted run of
    this stage left, e.g. to resume a training from its state).

    Raises:
        StageBusyError: another run (any process on this machine, or on one sharing the folder with working
            `flock`) is writing this stage now.
    """
    outputs_dir = Path(outputs_dir)
    path = _lock_path(outputs_dir, name)
    try:
        lock = _flock(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fd = lock.__enter__()
    except BlockingIOError:
        holder = path.read_text().strip() or "unknown"
        raise StageBusyError(f"stage `{name}` is being written by another run ({holder}); wait for it to finish "
                             f"or stop it (lock: {path})") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        work = outputs_dir / PARTIAL / name
        if not keep_partial:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        yield StageWrite(name, outputs_dir / name, work, outputs_dir)
    finally:
        lock.__exit__(None, None, None)


@contextlib.contextmanager
def reading(outputs_dir: str | Path, name: str) -> Iterator[None]:
    """Keep stage `name`'s published folder from being swapped while the block reads it."""
    with _flock(_lock_path(Path(outputs_dir), f"{name}.publish"), fcntl.LOCK_SH):
        yield
