"""Training batches: a seeded permutation per epoch, each process's slice of every global batch, assembled and
normalized by a torch DataLoader (optionally in worker processes, pinned for the GPU) ahead of the model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from clipcore.data.images import normalize_uint8


class RowBatches(Dataset):
    """In-memory (image, caption) rows; an item is a whole batch, selected by a tensor of row indices."""

    def __init__(self, images: torch.Tensor, tokens: torch.Tensor):
        self.images, self.tokens = images, tokens  # (N, H, W) uint8, (N, L) int64

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize_uint8(self.images[index]), self.tokens[index]  # (B, C, H, W) float, (B, L)


@dataclass
class Batch:
    step: int
    order: torch.Tensor  # this epoch's permutation of the rows (saved in checkpoints)
    pixels: torch.Tensor  # (B_local, C, H, W)
    ids: torch.Tensor  # (B_local, L)


def step_batches(rows: RowBatches, generator: torch.Generator, order: torch.Tensor, first_step: int, total: int,
                 batch_size: int, rank: int, world: int, workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """This process's batch of every step in [first_step, total).

    Every epoch starts with `torch.randperm(generator)` (the same on every process); global batch k of the epoch is
    rows order[k*batch_size:(k+1)*batch_size] and process `rank` gets its `world`-th share. The permutation is drawn
    when its epoch's first step is reached, so a run resumed with a saved (generator, order, step) continues the
    exact sequence. Steps dropping the last partial batch: steps_per_epoch = N // batch_size.
    """
    steps_per_epoch = len(rows) // batch_size
    local = batch_size // world
    step = first_step
    while step < total:
        epoch_start = step - step % steps_per_epoch
        if step == epoch_start:
            order = torch.randperm(len(rows), generator=generator)
        end = min(total, epoch_start + steps_per_epoch)
        starts = [(s - epoch_start) * batch_size + rank * local for s in range(step, end)]
        loader = DataLoader(rows, sampler=[order[a:a + local] for a in starts], batch_size=None,
                            num_workers=workers, pin_memory=pin_memory)
        for pixels, ids in loader:
            yield Batch(step, order, pixels, ids)
            step += 1
