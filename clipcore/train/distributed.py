"""torch.distributed helpers: process-group setup from torchrun's environment and gathering with gradients."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...); False when not under torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return True


def gather_with_grad(image_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every process's (B, D) rows as (N, D), differentiable (gradients flow back to their owners), and this
    process's row offset. Without a process group: the inputs themselves and offset 0."""
    if not is_distributed():
        return image_emb, text_emb, 0
    images = funcol.all_gather_single(image_emb, 0, dist.group.WORLD)  # backward: reduce-scatter of the gradients
    texts = funcol.all_gather_single(text_emb, 0, dist.group.WORLD)
    return images, texts, dist.get_rank() * len(image_emb)


def mean_over_processes(value: torch.Tensor) -> float:
    """A scalar averaged over every process (for logging)."""
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value.item()


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def all_gather_tensor(value: torch.Tensor) -> torch.Tensor:
    """Every process's `value` stacked as (world, *value.shape) (without a process group: (1, *value.shape))."""
    if not is_distributed():
        return value[None]
    device = torch.device("cuda") if dist.get_backend() == "nccl" else value.device  # NCCL moves CUDA tensors only
    gathered = [torch.empty_like(value, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, value.to(device))
    return torch.stack(gathered).cpu()


def all_reduce_sum(value: int) -> int:
    """An integer summed over every process."""
    if not is_distributed():
        return value
    total = torch.tensor(value, dtype=torch.long, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(total)
    return int(total)
