"""Peak memory per process vs global batch: our local contrastive loss (linear in N) vs the full N x N one (quadratic).

Scaling the global batch N = world x local batch by adding processes at a fixed local batch, each process of
`clipcore.training.compute_loss` ("ours") gathers every process's embeddings with gradients and scores only its own
B rows against all N columns, so its logits are (B, N) and its memory should grow linearly in N. The naive
alternative ("full"), implemented here, feeds the gathered (N, D) embeddings to the same loss function as rows too
(offset 0): every process computes the whole (N, N) loss, so its memory grows quadratically in N. Both variants train
the same default tiny model (`ModelConfig()`, DDP, AdamW) on the same random batch; their mean losses and their
first gradient norms (after DDP's averaging) must agree, which checks that both compute the same training step.

For every (variant, loss, world) one real `python -m torch.distributed.run --standalone --nproc-per-node W` launch
(gloo on the CPU, OMP_NUM_THREADS=1 per process) runs a few full training steps. The peak step memory of a process
is, on the CPU, its peak resident set (getrusage ru_maxrss) minus the same read just before the first step, with
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ set so that freed large tensors leave the resident set (the kernel's
VmHWM high-water mark, reset before the steps through /proc/self/clear_refs, is recorded beside it as a
cross-check); on CUDA, torch.cuda.max_memory_allocated after reset_peak_memory_stats minus the allocated bytes at
that point. The maximum over processes is reported, beside the theoretical bytes of one logits matrix (B x N x 4
for ours, N x N x 4 for full). Then memory = a + b N and memory = a + c N^2 are fitted by least squares per
variant and loss, and the better fit (R^2) is printed, with the fitted growth in units of one logits matrix (how
many logits-shaped tensors are live at the peak: it should be the same small count for both variants).

Why 2048 x 1..4 processes by default: the per-process step peak is max(model backward peak, forward activations +
loss tensors). At a local batch of 512 the model's own backward peak sits ~15 MiB above the end of the forward, and
ours' (B, N) loss tensors only rise above it from N ~ 2000, so at 512 x 1, 2, 4, 8 ours reads nearly flat with a
knee (a convex shape the quadratic fits better) although it grows linearly above the knee. From a local batch of
2048 the loss tensors clear that floor at every N; the full variant at 8 x 2048 would need 16384^2 matrices.

    uv run --frozen python benchmarks/memory_vs_global_batch.py                  # clip + siglip, ~10 min on 2 cores
    uv run --frozen python benchmarks/memory_vs_global_batch.py --local-batch 512 --worlds 1 2 4 8
    uv run --frozen python benchmarks/memory_vs_global_batch.py --losses clip clip_reg siglip cyclip

Writes benchmarks/results/memory_vs_global_batch.json (machine, settings, every measurement, the fits).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = ("ours", "full")
MIB = 2**20


# --------------------------------------------------------------------------------------------- worker (per process)

def full_matrix_loss(model, image_emb: torch.Tensor, text_emb: torch.Tensor, config) -> torch.Tensor:
    """The naive distributed loss: every process scores all N gathered rows against all N columns."""
    from clipcore.train.distributed import gather_with_grad
    from clipcore.train.losses import contrastive_loss

    # No rescaling is needed: all_gather's backward sums the world identical copies of each row's gradient and
    # DDP's average divides by world again; the logit scale and bias get the same gradient on every process.
    # (The first gradient norm, compared with ours in the table, checks this.)
    image_all, text_all, _ = gather_with_grad(image_emb, text_emb)  # (N, D) each
    return contrastive_loss(config, image_all, text_all, model.scale(), model.logit_bias)


def _read_status_kib(field: str) -> int | None:
    """A `VmXXX:` line of /proc/self/status in KiB (None where there is no procfs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Return freed heap to the OS and reset the kernel's VmHWM to the current resident set (Linux >= 4.0)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _init_process_group(device: torch.device) -> None:
    import torch.distributed as dist

    from clipcore.train.distributed import init_from_env

    world = int(os.environ["WORLD_SIZE"])
    if device.type == "cuda" and world > torch.cuda.device_count():
        # NCCL wants one GPU per process; more processes than GPUs share them over gloo
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        dist.init_process_group("gloo")
    else:
        init_from_env(device)


def _build(args, device: torch.device):
    """The default tiny model (with a tokenizer trained on a few fake captions) and this process's random rows."""
    from clipcore.config import ModelConfig
    from clipcore.model.clip_model import build_model
    from clipcore.model.tokenizer import EOT, SOT, train_tokenizer
    from clipcore.train.distributed import rank_and_world

    config = ModelConfig()
    captions = [f"a {c} {k} photo of a {t}" for c in ("red", "blue", "dark", "light") for k in ("small", "large")
                for t in ("shirt", "sneaker", "ankle boot", "bag", "dress", "coat")]
    tokenizer = train_tokenizer(captions, config.vocab_size, config.context_length)
    torch.manual_seed(args.seed)
    model = build_model(config, tokenizer).to(device).train()
    rank, world = rank_and_world()
    n = args.local_batch * world
    generator = torch.Generator().manual_seed(args.seed)  # one global batch, the same in every launch
    images = torch.randint(0, 256, (n, config.image_size, config.image_size), dtype=torch.uint8,
                           generator=generator)  # (N, H, W)
    ids = torch.randint(4, config.vocab_size, (n, config.context_length), generator=generator)  # (N, L)
    ids[:, 0] = tokenizer.token_to_id(SOT)
    ids[:, -1] = tokenizer.token_to_id(EOT)  # pooled by the text tower
    rows = slice(rank * args.local_batch, (rank + 1) * args.local_batch)
    return model, images[rows].clone(), ids[rows].clone()


def worker(args) -> None:
    """One process of one launch: a few training steps, then the peak step memory (max over processes)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from clipcore.config import LossConfig, TrainConfig
    from clipcore.model.device import resolve_device
    from clipcore.train.distributed import is_distributed, mean_over_processes, rank_and_world
    from clipcore.train.loop import build_optimizer, compute_loss
    from clipcore.train.losses import LOSSES

    torch.set_num_threads(1)
    device = resolve_device(args.device)
    _init_process_group(device)
    rank, world = rank_and_world()
    model, images, ids = _build(args, device)
    loss_config = LossConfig(name=args.loss)
    model.logit_bias.requires_grad_(LOSSES[args.loss].uses_bias)  # DDP needs every trainable parameter used
    forward = DistributedDataParallel(model) if is_distributed() else model  # as train_clip does
    optimizer = build_optimizer(model, TrainConfig(), fused=device.type == "cuda")
    loss_fn = compute_loss if args.variant == "ours" else full_matrix_loss
    pixels = model.normalize(images).to(device)  # (B, 1, H, W)
    ids = ids.to(device)  # (B, L)
    del images

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        hwm_reset = _reset_cpu_peak()
        baseline_rss = _read_status_kib("VmRSS")
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    losses, seconds, grad_norm = [], [], None
    for step in range(args.steps):
        start = time.perf_counter()
        image_emb, text_emb = forward(pixels, ids)  # (B, D) each
        value = loss_fn(model, image_emb.float(), text_emb.float(), loss_config)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if step == 0:  # after DDP's averaging: must agree between the variants (AdamW would hide a scaled gradient)
            grad_norm = torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm().item()
        optimizer.step()
        model.clamp_logit_scale()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        losses.append(mean_over_processes(value.detach()))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - baseline
        extra = {}
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
        hwm = _read_status_kib("VmHWM")
        extra = {"baseline_rss_bytes": None if baseline_rss is None else baseline_rss * 1024,
                 "baseline_maxrss_bytes": baseline,
                 "vmhwm_peak_bytes": (hwm - baseline_rss) * 1024 if hwm_reset and hwm and baseline_rss else None}
    record = {"rank": rank, "peak_step_bytes": int(peak), "step_seconds": seconds, **extra}
    records = [None] * world
    if is_distributed():
        dist.all_gather_object(records, record)
    else:
        records = [record]
    if rank == 0:
        Path(args.result).write_text(json.dumps({"losses": losses, "grad_norm": grad_norm, "ranks": records}))
    if dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- driver

def launch(variant: str, loss: str, world: int, args, scratch: Path) -> dict:
    """One torchrun launch of `world` worker processes; returns its measurement."""
    result = scratch / f"{variant}_{loss}_{world}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           # large tensors in their own mappings, unmapped when freed, so the resident set tracks live tensors
           "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               str(Path(__file__).resolve()), "--worker", "--variant", variant, "--loss", loss,
               "--local-batch", str(args.local_batch), "--steps", str(args.steps), "--seed", str(args.seed),
               "--device", args.device, "--result", str(result)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{variant}/{loss}/world {world} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    measured = json.loads(result.read_text())
    n = args.local_batch * world
    rows = args.local_batch if variant == "ours" else n
    peaks = [r["peak_step_bytes"] for r in measured["ranks"]]
    hwms = [r.get("vmhwm_peak_bytes") for r in measured["ranks"]]
    return {"variant": variant, "loss": loss, "world": world, "global_batch": n,
            "peak_step_bytes": max(peaks), "peak_step_bytes_per_rank": peaks,
            "vmhwm_peak_bytes": max(hwms) if None not in hwms else None,
            "logits_bytes": rows * n * 4,  # one fp32 (rows, N) logits matrix
            "losses": measured["losses"], "first_grad_norm": measured["grad_norm"], "launch_seconds": wall,
            "median_step_seconds": float(np.median([s for r in measured["ranks"] for s in r["step_seconds"]])),
            "ranks": measured["ranks"]}


def fit(ns: list[int], values: list[float]) -> dict:
    """Least squares of values = a + b N and values = a + c N^2; R^2 of each and which is better."""
    n, y = np.asarray(ns, dtype=float), np.asarray(values, dtype=float)
    out = {}
    for name, x in (("linear", n), ("quadratic", n**2)):
        design = np.stack([np.ones_like(x), x], axis=1)
        (a, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
        residual = y - design @ np.array([a, slope])
        r2 = 1 - (residual**2).sum() / ((y - y.mean()) ** 2).sum()
        out[name] = {"a": float(a), "slope": float(slope), "r2": float(r2)}
    out["better"] = "linear" if out["linear"]["r2"] >= out["quadratic"]["r2"] else "quadratic"
    return out


def report(loss: str, rows: dict[str, list[dict]], local_batch: int) -> dict:
    """Print one loss's table and fits; returns the fits."""
    print(f"\nloss {loss}  (local batch {local_batch}; peak step memory per rank, max over ranks; MiB)")
    print(f"{'world':>5} {'N':>5} | {'ours':>8} {'x':>5} {'logits':>7} {'x':>5} | "
          f"{'full':>8} {'x':>5} {'logits':>7} {'x':>5} | {'loss diff':>9} {'grad diff':>9}")
    first = {v: rows[v][0] for v in VARIANTS}
    for ours, full in zip(rows["ours"], rows["full"], strict=True):
        cells = []
        for r, f in ((ours, first["ours"]), (full, first["full"])):
            cells.append(f"{r['peak_step_bytes'] / MIB:8.1f} {r['peak_step_bytes'] / f['peak_step_bytes']:5.2f} "
                         f"{r['logits_bytes'] / MIB:7.1f} {r['logits_bytes'] / f['logits_bytes']:5.0f}")
        # ours vs full: largest relative difference of the mean loss over the steps and of the first gradient norm
        loss_diff = max(abs(a / b - 1) for a, b in zip(ours["losses"], full["losses"], strict=True))
        grad_diff = abs(ours["first_grad_norm"] / full["first_grad_norm"] - 1)
        print(f"{ours['world']:>5} {ours['global_batch']:>5} | {cells[0]} | {cells[1]} | "
              f"{loss_diff:9.1e} {grad_diff:9.1e}")
    fits = {}
    for variant in VARIANTS:
        ns = [r["global_batch"] for r in rows[variant]]
        f = fits[variant] = fit(ns, [r["peak_step_bytes"] / MIB for r in rows[variant]])
        # slope in units of one logits matrix: how many (rows, N) fp32 matrices are live at the peak
        per_unit = (local_batch * 4 if variant == "ours" else 4) / MIB
        unit = f["linear"]["slope"] if variant == "ours" else f["quadratic"]["slope"]
        f["logits_matrices_at_peak"] = unit / per_unit
        print(f"  {variant:<4} fit  a + b N: R^2 {f['linear']['r2']:.4f}   a + c N^2: R^2 {f['quadratic']['r2']:.4f}"
              f"   -> {f['better']}  (growth = {f['logits_matrices_at_peak']:.1f} logits matrices)")
    return fits


def machine() -> dict:
    cuda = torch.cuda.is_available()
    return {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "gpu_count": torch.cuda.device_count() if cuda else 0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local-batch", type=int, default=2048, help="pairs per process (default 2048)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 3, 4],
                        help="processes per launch, one global batch size each (default 1 2 3 4)")
    parser.add_argument("--losses", nargs="+", default=["clip", "siglip"],
                        choices=["clip", "clip_reg", "siglip", "cyclip"], help="loss names (default clip siglip)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per launch (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory_vs_global_batch.json")
    # internal: one torchrun process
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--loss", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    info = machine()
    print(f"{info['cpu_count']} CPUs, torch {info['torch']}, device {info['device']}; local batch "
          f"{args.local_batch}, worlds {args.worlds}, {args.steps} steps per launch")
    measurements, fits = [], {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for loss in args.losses:
            rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for world in args.worlds:
                for variant in VARIANTS:
                    m = launch(variant, loss, world, args, Path(scratch))
                    rows[variant].append(m)
                    measurements.append(m)
                    print(f"  {loss:<8} {variant:<4} world {world}: {m['peak_step_bytes'] / MIB:8.1f} MiB "
                          f"({m['launch_seconds']:.0f} s)", flush=True)
            fits[loss] = report(loss, rows, args.local_batch)
    total = time.perf_counter() - start
    print(f"\ntotal {total:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"local_batch": args.local_batch, "worlds": args.worlds, "losses": args.losses, "steps": args.steps,
                "seed": args.seed, "device": args.device, "model": "ModelConfig() defaults",
                "measure": "CUDA max_memory_allocated - allocated at reset" if info["device"] != "cpu" else
                "ru_maxrss - ru_maxrss before the first step (MALLOC_MMAP_THRESHOLD_=65536, OMP_NUM_THREADS=1)"}
    args.out.write_text(json.dumps({"machine": info, "settings": settings, "seconds": total, "fits": fits,
                                    "measurements": measurements}, indent=2))


if __name__ == "__main__":
    main()
