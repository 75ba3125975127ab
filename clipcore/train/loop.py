"""The pretraining loop: AdamW with decay only on matrices, warm-up + cosine schedule, bf16 on CUDA."""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm
from transformers import PreTrainedModel

from clipcore.config import LossConfig, TrainConfig
from clipcore.data.stream import StreamSpec
from clipcore.model.clip_model import ClipModel
from clipcore.model.device import resolve_device
from clipcore.model.margins import margin_diagnostics
from clipcore.train.batches import Batch, step_batches
from clipcore.train.distributed import (
    all_gather_tensor,
    all_reduce_sum,
    gather_with_grad,
    init_from_env,
    is_distributed,
    mean_over_processes,
    rank_and_world,
)
from clipcore.train.losses import LOSSES, contrastive_loss


@dataclass
class TrainResult:
    """What a training run did: per-logged-step history and throughput."""

    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    data_wait_seconds: float = 0.0
    device: str = "cpu"
    extra_state: dict = field(default_factory=dict)
    flops_per_sample: float = 0.0  # forward + backward, counted on the first step
    peak_memory_bytes: int = 0  # this process: CUDA max allocated, or CPU peak resident set
    peak_tflops: float | None = None
    skipped_samples: int = 0  # undecodable samples skipped by every process's streams (resumed runs included)

    @property
    def samples_per_second(self) -> float:
        return self.samples / max(self.seconds, 1e-9)

    @property
    def achieved_tflops(self) -> float:
        """Model FLOP/s actually sustained by this process (its share of each global batch)."""
        return self.flops_per_sample * self.samples_per_second / 1e12

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilization against `train.peak_tflops` (None when no peak is configured)."""
        return self.achieved_tflops / self.peak_tflops if self.peak_tflops else None


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA's max allocated bytes, or the CPU's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def compute_loss(model: ClipModel, image_proj: torch.Tensor, text_proj: torch.Tensor, config: LossConfig,
                 scale: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch on `config.name` to clipcore.train.losses; across processes, each scores its rows against all columns.

    `image_proj`, `text_proj` (B, D) are this process's projections before L2 normalization (the towers' output with
    `normalize=False`): the objectives see their unit-norm versions (gathered across processes), and the
    `sq_euclid_raw` regularizer these rows as they are. `scale` and `bias` default to the model's `scale()` and
    `logit_bias`."""
    scale = model.scale() if scale is None else scale
    bias = model.logit_bias if bias is None else bias
    image_emb, text_emb = F.normalize(image_proj, dim=-1), F.normalize(text_proj, dim=-1)  # (B, D) unit norm
    columns = gather_with_grad(image_emb, text_emb)  # (N, D), (N, D), offset
    return contrastive_loss(config, image_emb, text_emb, scale, bias, *columns, image_raw=image_proj,
                            text_raw=text_proj)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 embeddings (autocast) are promoted for the loss; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def backward_step(forward: torch.nn.Module, model: ClipModel, pixels: torch.Tensor, ids: torch.Tensor,
                  config: LossConfig, micro_batches: int = 1,
                  autocast=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward of one batch, gradients accumulated into the parameters' `.grad`.

    With `micro_batches` > 1 (GradCache, Gao et al. 2021): a contrastive loss needs every row at once, so embed all
    micro-batches without an autograd graph, take the loss and its gradients w.r.t. the embeddings, the scale and the
    bias, then re-run each micro-batch with a graph and back-propagate those gradients into the towers. Gradients equal
    the single-batch ones; only one micro-batch's activations are alive. Under DDP, gradients are averaged across
    processes once, on the last micro-batch. The towers run with `normalize=False` (the loss normalizes; see
    `compute_loss`). Returns (loss, image embeddings, text embeddings), detached and unit-norm.
    """
    autocast = autocast or nullcontext()
    if micro_batches == 1:
        with autocast:
            image_proj, text_proj = (_at_least_fp32(e) for e in forward(pixels, ids, normalize=False))  # (B, D)
            value = compute_loss(model, image_proj, text_proj, config)
        value.backward()
        return value.detach(), *_unit(image_proj, text_proj)
    chunks = list(zip(pixels.chunk(micro_batches), ids.chunk(micro_batches), strict=True))
    with torch.no_grad(), autocast:
        cached = [forward(p, i, normalize=False) for p, i in chunks]
    image_proj = _at_least_fp32(torch.cat([c[0] for c in cached])).requires_grad_()
    text_proj = _at_least_fp32(torch.cat([c[1] for c in cached])).requires_grad_()
    scale = model.scale().detach().requires_grad_()
    bias = model.logit_bias.detach().requires_grad_()
    value = compute_loss(model, image_proj, text_proj, config, scale=scale, bias=bias)
    value.backward()  # gradients w.r.t. the cached projections, scale and bias only
    image_grads = image_proj.grad.split([len(c[0]) for c in cached])
    text_grads = text_proj.grad.split([len(c[1]) for c in cached])
    no_sync = getattr(forward, "no_sync", None)  # DDP: reduce gradients once, after the last micro-batch
    for k, ((p, i), g_image, g_text) in enumerate(zip(chunks, image_grads, text_grads, strict=True)):
        last = k == len(chunks) - 1
        with nullcontext() if last or no_sync is None else no_sync():
            with autocast:
                image_part, text_part = forward(p, i, normalize=False)
            surrogate = (image_part * g_image).sum() + (text_part * g_text).sum()
            if last:  # the scale's (and bias's) gradient enters through the same backward as the towers'
                surrogate = surrogate + (model.scale() * scale.grad).sum()
                if bias.grad is not None:  # only SigLIP uses the bias
                    surrogate = surrogate + (model.logit_bias * bias.grad).sum()
            surrogate.backward()
    return value.detach(), *_unit(image_proj, text_proj)


def _unit(image_proj: torch.Tensor, text_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached unit-norm embeddings of a step's projections (the margin diagnostics' input)."""
    return F.normalize(image_proj.detach(), dim=-1), F.normalize(text_proj.detach(), dim=-1)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Turn on activation recomputation in every transformers tower that supports it."""
    towers = [m for m in model.modules() if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing]
    if not towers:
        raise ValueError("train.grad_checkpointing: the model has no tower that supports gradient checkpointing")
    for tower in towers:
        tower.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def build_optimizer(model: torch.nn.Module, config: TrainConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only, never on gains, biases, embeddings' 1-d params or the logit scale."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=1e-6, fused=fused or None)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: linear from 0 to 1 over the warm-up, then cosine down to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def save_training_state(path: str | Path, next_step: int, streams: torch.Tensor, skipped: int,
                        model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, result: TrainResult,
                        extra: dict) -> None:
    """Everything a resumed run needs, written to a temporary file and renamed (a crash never leaves half a file).
    Plain tensors and containers only, so it loads with `torch.load(weights_only=True)`. The data position is every
    stream's (group, offset): `streams` is (processes, streams per process, 2), whatever the dataset's size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"next_step": next_step, "streams": streams, "skipped": skipped, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(), "history": result.history, "extra": extra}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                        result: TrainResult, rank: int, world: int, streams: int) -> tuple[int, list[tuple[int, int]]]:
    """Restore what `save_training_state` wrote; returns (the step to run next, this process's stream positions)."""
    state = torch.load(path, weights_only=True)
    saved = state["streams"]  # (W, L, 2)
    if tuple(saved.shape[:2]) != (world, streams):
        raise ValueError(f"{path} was saved by {saved.shape[0]} processes x {saved.shape[1]} data streams; resume with "
                         f"the same (now {world} x {streams})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    result.history = list(state["history"])
    result.extra_state = dict(state["extra"])
    result.skipped_samples = int(state["skipped"]) if rank == 0 else 0  # the saved count is every process's sum
    return int(state["next_step"]), [tuple(p) for p in saved[rank].tolist()]


@dataclass
class TrainingSetup:
    """What every step of one run shares, built once by `setup_training`."""

    model: ClipModel  # the bare model: parameters, logit scale, checkpoints
    eager: torch.nn.Module  # the model, DDP-wrapped across processes: runs the FLOP-counted first step
    forward: torch.nn.Module  # `eager`, compiled when `train.compile`: runs every other step
    train: TrainConfig
    loss: LossConfig
    device: torch.device
    memory_format: torch.memory_format
    autocast: torch.autocast | nullcontext
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    result: TrainResult
    rank: int
    world: int
    local: int  # this process's share of the global batch
    samples_per_epoch: int  # for the `epoch` of the log records
    total: int  # steps of the whole run, resumed or not
    first_step: int  # 0, or the step a resumed run continues from
    positions: list[tuple[int, int]]  # this process's streams' (group, offset), updated by every batch
    state_path: str | Path | None
    extra_state: dict

    def to_device(self, batch: Batch) -> Batch:
        """The batch's pixels (normalized there: uint8 crosses to the GPU, a quarter of float32) and ids on the
        training device, pixels in the configured memory format."""
        pixels = self.model.normalize(batch.pixels.to(self.device, non_blocking=True))  # (B, C, H, W) float
        ids = batch.ids.to(self.device, non_blocking=True)  # (B, L)
        return replace(batch, pixels=pixels.contiguous(memory_format=self.memory_format), ids=ids)


def prepare_model(model: ClipModel, train: TrainConfig, loss: LossConfig,
                  device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, torch.memory_format]:
    """Move `model` to `device` in training mode and wrap it; returns (eager, forward, memory format).

    `eager` is the model, DDP-wrapped when distributed; `forward` is `eager`, compiled when `train.compile`."""
    memory_format = torch.channels_last if train.channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format).train()
    model.logit_bias.requires_grad_(LOSSES[loss.name].uses_bias)  # DDP needs every trainable parameter used
    if train.grad_checkpointing:
        enable_gradient_checkpointing(model)
    eager = DistributedDataParallel(model) if is_distributed() else model
    forward = torch.compile(eager) if train.compile else eager
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return eager, forward, memory_format


def training_steps(train: TrainConfig, samples_per_epoch: int) -> int:
    """Steps of a run: `train.samples_seen` (else `epochs` x `samples_per_epoch`) samples, full batches only."""
    samples = train.samples_seen if train.samples_seen is not None else round(train.epochs * samples_per_epoch)
    return max(1, samples // train.batch_size)


def setup_training(model: ClipModel, train: TrainConfig, loss: LossConfig, samples_per_epoch: int,
                   state_path: str | Path | None = None, resume: bool = False,
                   extra_state: dict | None = None) -> TrainingSetup:
    """Check the batch sizes against the processes, seed, place the model, build the optimizer and schedule, and with
    `resume` restore them and the streams' positions from `state_path`."""
    if samples_per_epoch < train.batch_size:
        raise ValueError(f"{samples_per_epoch} training rows < batch_size={train.batch_size}")
    device = resolve_device(train.device, "train.device")
    init_from_env(device)
    rank, world = rank_and_world()
    if train.batch_size % world:
        raise ValueError(f"batch_size={train.batch_size} is not divisible by the {world} processes")
    local = train.batch_size // world  # each process's share of the global batch
    if local % train.accum_steps:
        raise ValueError(f"the per-process batch {local} is not divisible by accum_steps={train.accum_steps}")
    torch.manual_seed(train.seed)  # the global RNG too follows the seed
    eager, forward, memory_format = prepare_model(model, train, loss, device)
    total = training_steps(train, samples_per_epoch)
    optimizer = build_optimizer(model, train, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(train.warmup_steps, total))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    result = TrainResult(device=str(device))
    streams = data_streams(train)
    positions, first_step = [(0, 0)] * streams, 0
    if resume:
        if state_path is None or not Path(state_path).exists():
            raise FileNotFoundError(f"cannot resume: no training state at {state_path}")
        first_step, positions = load_training_state(state_path, model, optimizer, scheduler, result, rank, world,
                                                    streams)
    return TrainingSetup(
        model=model, eager=eager, forward=forward, train=train, loss=loss, device=device, memory_format=memory_format,
        autocast=autocast, optimizer=optimizer, scheduler=scheduler, result=result, rank=rank, world=world,
        local=local, samples_per_epoch=samples_per_epoch, total=total, first_step=first_step, positions=positions,
        state_path=state_path, extra_state=extra_state or {},
    )


def data_streams(train: TrainConfig) -> int:
    """Logical data streams per process: `train.data_streams`, else one per DataLoader worker (at least one)."""
    return train.data_streams or max(1, train.workers)


def log_step(run: TrainingSetup, step: int, value: torch.Tensor, image_emb: torch.Tensor, text_emb: torch.Tensor,
             lr: float, bar: tqdm, on_log: Callable[[dict[str, float]], None] | None) -> None:
    """Append this step's record to the history, show it on the bar and hand it to `on_log` (rank 0 only)."""
    scale = run.model.scale().item()
    record = {
        "step": step, "epoch": step * run.train.batch_size / run.samples_per_epoch, "loss": mean_over_processes(value),
        "lr": lr, "logit_scale": scale, "temperature": 1 / scale,
        **margin_diagnostics(image_emb, text_emb),
    }
    run.result.history.append(record)
    bar.set_postfix(loss=f"{record['loss']:.3f}", T=f"{record['temperature']:.4f}")
    if on_log and run.rank == 0:
        on_log(record)


def train_step(run: TrainingSetup, batch: Batch, bar: tqdm,
               on_log: Callable[[dict[str, float]], None] | None = None) -> None:
    """One optimizer step on `batch` (already on the device): gradients, update, schedule, logit-scale clamp, the
    log record every `train.log_every` steps and on the last, and the training state every `train.checkpoint_every`."""
    train, step = run.train, batch.step
    # the first step runs eagerly and counts its FLOPs (forward + backward) for the throughput and MFU estimates
    counting = step == run.first_step
    run.positions[batch.stream] = batch.position
    run.result.skipped_samples += batch.skipped
    run.optimizer.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) if counting else nullcontext() as counter:
        value, image_emb, text_emb = backward_step(run.eager if counting else run.forward, run.model, batch.pixels,
                                                   batch.ids, run.loss, train.accum_steps, run.autocast)
    if counting:
        run.result.flops_per_sample = counter.get_total_flops() / run.local
    lr = run.optimizer.param_groups[0]["lr"]  # the rate this step used
    run.optimizer.step()
    run.scheduler.step()
    run.model.clamp_logit_scale()
    if step % train.log_every == 0 or step == run.total - 1:
        log_step(run, step, value, image_emb, text_emb, lr, bar, on_log)
    # after the log record, so the saved history includes it
    if run.state_path and train.checkpoint_every and (step + 1) % train.checkpoint_every == 0:
        streams = all_gather_tensor(torch.tensor(run.positions, dtype=torch.long))  # (W, L, 2), every process
        skipped = all_reduce_sum(run.result.skipped_samples)
        if run.rank == 0:
            save_training_state(run.state_path, step + 1, streams, skipped, run.model, run.optimizer, run.scheduler,
                                run.result, run.extra_state)


def train_clip(
    model: ClipModel,
    data: StreamSpec,
    samples_per_epoch: int,
    train: TrainConfig,
    loss: LossConfig,
    on_log: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
    state_path: str | Path | None = None,
    resume: bool = False,
    extra_state: dict | None = None,
) -> TrainResult:
    """Train `model` in place on the (image, caption) pairs `data` streams, with the configured objective.

    `samples_per_epoch` (the training rows) turns `train.epochs` into steps unless `train.samples_seen` is set.
    `on_log` receives {step, epoch, loss, lr, temperature, logit_scale, diagnostics} every `train.log_every` steps
    (and on the last step); the same records are returned in `TrainResult.history`.

    With `state_path` and `train.checkpoint_every`, the whole training state is written there atomically every
    that many steps; `resume=True` continues from it, giving on the CPU bitwise the weights of an uninterrupted
    run. `extra_state` (e.g. the MLflow run id) is stored beside it and comes back in `TrainResult.extra_state`.
    """
    run = setup_training(model, train, loss, samples_per_epoch, state_path, resume, extra_state)
    if data.streams != data_streams(train):
        raise ValueError(f"the stream spec has {data.streams} streams, train.data_streams gives {data_streams(train)}")
    start = time.perf_counter()
    bar = tqdm(total=run.total, initial=run.first_step, unit="step",
               desc=f"pretrain ({loss.name}, {run.device.type} x{run.world})", disable=not progress or run.rank > 0)
    batches = step_batches(data.with_pieces(run.world), run.first_step, run.total, train.batch_size, run.rank,
                           run.world, run.positions, train.workers, pin_memory=run.device.type == "cuda")
    fetch = time.perf_counter()
    for batch in batches:
        batch = run.to_device(batch)
        run.result.data_wait_seconds += time.perf_counter() - fetch
        train_step(run, batch, bar, on_log)
        bar.update()
        fetch = time.perf_counter()
    bar.close()
    result = run.result
    result.steps, result.samples = run.total - run.first_step, (run.total - run.first_step) * train.batch_size
    result.peak_memory_bytes = peak_memory_bytes(run.device)
    result.peak_tflops = train.peak_tflops
    result.skipped_samples = all_reduce_sum(result.skipped_samples)  # every process's
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
