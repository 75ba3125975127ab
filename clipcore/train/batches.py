"""Training batches: this process's share of every global batch, streamed from the shards (clipcore.data.stream) by a
torch DataLoader (optionally in worker processes, pinned for the GPU) ahead of the model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from clipcore.data.stream import PairStream, StreamSpec, collate_one


@dataclass
class Batch:
    step: int
    pixels: torch.Tensor  # (B_local, C, H, W) uint8 until the training device normalizes it
    ids: torch.Tensor  # (B_local, L)
    stream: int  # the logical stream it came from
    position: tuple[int, int]  # that stream's position after it (saved in checkpoints)
    skipped: int  # undecodable samples skipped while making it


def step_batches(spec: StreamSpec, first_step: int, total: int, batch_size: int, rank: int, world: int,
                 positions: list[tuple[int, int]], workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """This process's batch of every step in [first_step, total): `batch_size // world` pairs of its streams, starting
    each stream at its saved position."""
    dataset = PairStream(spec, rank, world, batch_size // world, first_step, positions)
    loader = DataLoader(dataset, batch_size=None, collate_fn=collate_one, num_workers=workers, pin_memory=pin_memory,
                        persistent_workers=False, prefetch_factor=2 if workers else None)
    for step, batch in zip(range(first_step, total), loader, strict=False):
        yield Batch(step, batch.pixels, batch.ids, batch.stream, batch.position, batch.skipped)
