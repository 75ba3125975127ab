"""Train-step throughput: our model + loss vs open_clip's on the same architecture, batch and precision, one run.

Both: ViT image tower (28 px, 3 channels, patch 7, width 128, 2 layers, head width 64), causal text tower
(width 64, 2 layers, 2 heads, context 16, vocab 1000), 64-d embeddings, QuickGELU (transformers' CLIP default),
symmetric InfoNCE, AdamW; fp32 on the CPU (bf16 autocast on a GPU). open_clip (>= 3.3) is installed only in the dev
environment. Steps alternate between the two models so that drift in machine speed hits both alike.

    uv run python benchmarks/train_step_vs_open_clip.py --batch 256 --steps 30

Prints samples/s for each and the ratio, and writes benchmarks/results/train_step_vs_open_clip.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def ours_step_fn(batch: int, device: torch.device):
    from clipcore.config import LossConfig, ModelConfig, TrainConfig
    from clipcore.model import ClipModel
    from clipcore.training import build_optimizer, compute_loss

    config = ModelConfig(channels=3, vision_heads=2, vocab_size=1000)
    model = ClipModel(config).to(device).train()
    optimizer = build_optimizer(model, TrainConfig(), fused=device.type == "cuda")
    loss_config = LossConfig()

    def step(pixels, ids):
        image_emb, text_emb = model(pixels, ids)
        loss = compute_loss(model, image_emb.float(), text_emb.float(), loss_config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.clamp_logit_scale()

    return step, sum(p.numel() for p in model.parameters())


def open_clip_step_fn(batch: int, device: torch.device):
    import math

    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    model = CLIP(64, CLIPVisionCfg(layers=2, width=128, head_width=64, patch_size=7, image_size=28),
                 CLIPTextCfg(context_length=16, vocab_size=1000, width=64, heads=2, layers=2, eos_id=3),
                 quick_gelu=True).to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=2e-3, betas=(0.9, 0.98), eps=1e-6, fused=device.type == "cuda" or None)
    loss_fn = ClipLoss()

    def step(pixels, ids):
        image_features, text_features, logit_scale = model(pixels, ids)  # normalized; exp(logit_scale)
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return step, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    pixels = torch.randn(args.batch, 3, 28, 28, device=device)
    ids = torch.randint(4, 1000, (args.batch, 16), device=device)
    ids[:, -1] = 3  # end-of-text, pooled by both
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    runners = {"ours": ours_step_fn(args.batch, device), "open_clip": open_clip_step_fn(args.batch, device)}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(args.warmup + args.steps):
        for name, (step, _) in runners.items():
            start = time.perf_counter()
            with autocast:
                step(pixels, ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    results = {name: {"median_step_s": statistics.median(t), "samples_per_second": args.batch / statistics.median(t),
                      "parameters": runners[name][1]} for name, t in times.items()}
    ratio = results["ours"]["samples_per_second"] / results["open_clip"]["samples_per_second"]
    for name, r in results.items():
        print(f"{name:<10} params {r['parameters']:>9,}  step {r['median_step_s'] * 1000:7.1f} ms  "
              f"{r['samples_per_second']:8.1f} samples/s")
    threads = torch.get_num_threads()
    print(f"ratio ours / open_clip: {ratio:.2f}  ({device.type}, batch {args.batch}, {threads} threads)")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "train_step_vs_open_clip.json").write_text(json.dumps(
        {"device": device.type, "batch": args.batch, "steps": args.steps, "results": results, "ratio": ratio},
        indent=2))


if __name__ == "__main__":
    main()
