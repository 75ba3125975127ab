"""Train-step throughput: our model + loss vs open_clip's on the same architecture, batch and precision, one run.

`--arch tiny` (default): ViT image tower (28 px, 3 channels, patch 7, width 128, 2 layers, head width 64), causal
text tower (width 64, 2 layers, 2 heads, context 16, vocab 1000), 64-d embeddings. `--arch vit-b-32`: CLIP ViT-B/32
(224 px, patch 32, 768 x 12 layers; text 512 x 12 layers, 8 heads, context 77, vocab 49,408; 512-d). Both models:
QuickGELU (transformers' CLIP default), symmetric InfoNCE, AdamW (fused on a GPU); fp32 on the CPU, bf16 autocast and
TF32 on a GPU. open_clip (>= 3.3) is installed only in the dev environment. Steps alternate between the two models
so that drift in machine speed hits both alike. FLOPs per sample are counted on one step (FlopCounterMode); with
`--peak-tflops` (H100 SXM bf16 dense: 989) the MFU is printed too.

    uv run python benchmarks/train_step_vs_open_clip.py --batch 256 --steps 30
    uv run python benchmarks/train_step_vs_open_clip.py --arch vit-b-32 --batch 256 --peak-tflops 989   # a GPU

Prints samples/s for each and the ratio, and writes benchmarks/results/train_step_vs_open_clip.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ARCHS = {  # our ModelConfig fields; open_clip's configs are derived from them
    "tiny": {"image_size": 28, "channels": 3, "patch_size": 7, "vision_width": 128, "vision_layers": 2,
             "vision_heads": 2, "text_width": 64, "text_layers": 2, "text_heads": 2, "context_length": 16,
             "vocab_size": 1000, "embed_dim": 64},
    "vit-b-32": {"image_size": 224, "channels": 3, "patch_size": 32, "vision_width": 768, "vision_layers": 12,
                 "vision_heads": 12, "text_width": 512, "text_layers": 12, "text_heads": 8, "context_length": 77,
                 "vocab_size": 49408, "embed_dim": 512},
}
EOT = 3  # the end-of-text id both text towers pool at


def ours_step_fn(arch: dict, device: torch.device):
    from clipcore.config import LossConfig, ModelConfig, TrainConfig
    from clipcore.model.clip_model import ClipModel
    from clipcore.train.loop import backward_step, build_optimizer

    model = ClipModel(ModelConfig(**arch), eot_id=EOT).to(device).train()
    optimizer = build_optimizer(model, TrainConfig(), fused=device.type == "cuda")
    loss_config = LossConfig()

    def step(pixels, ids):
        optimizer.zero_grad(set_to_none=True)
        backward_step(model, model, pixels, ids, loss_config)  # what train_clip runs
        optimizer.step()
        model.clamp_logit_scale()

    return step, sum(p.numel() for p in model.parameters())


def open_clip_step_fn(arch: dict, device: torch.device):
    import math

    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=arch["vision_layers"], width=arch["vision_width"],
                           head_width=arch["vision_width"] // arch["vision_heads"], patch_size=arch["patch_size"],
                           image_size=arch["image_size"])
    text = CLIPTextCfg(context_length=arch["context_length"], vocab_size=arch["vocab_size"], width=arch["text_width"],
                       heads=arch["text_heads"], layers=arch["text_layers"], eos_id=EOT)
    model = CLIP(arch["embed_dim"], vision, text, quick_gelu=True).to(device).train()
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
    parser.add_argument("--arch", choices=sorted(ARCHS), default="tiny", help="model size (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=256, help="samples per step (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s at this precision, for the MFU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    arch = ARCHS[args.arch]
    torch.manual_seed(0)
    pixels = torch.randn(args.batch, arch["channels"], arch["image_size"], arch["image_size"], device=device)
    ids = torch.randint(4, arch["vocab_size"], (args.batch, arch["context_length"]), device=device)
    ids[:, -1] = EOT  # end-of-text, pooled by both
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    runners = {"ours": ours_step_fn(arch, device), "open_clip": open_clip_step_fn(arch, device)}
    flops = {}
    for name, (step, _) in runners.items():
        with FlopCounterMode(display=False) as counter, autocast:
            step(pixels, ids)
        flops[name] = counter.get_total_flops() / args.batch
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
    results = {}
    for name, t in times.items():
        rate = args.batch / statistics.median(t)
        tflops = flops[name] * rate / 1e12
        results[name] = {"median_step_s": statistics.median(t), "samples_per_second": rate,
                         "parameters": runners[name][1], "flops_per_sample": flops[name], "achieved_tflops": tflops,
                         "mfu": tflops / args.peak_tflops if args.peak_tflops else None}
    ratio = results["ours"]["samples_per_second"] / results["open_clip"]["samples_per_second"]
    for name, r in results.items():
        mfu = f"  MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
        print(f"{name:<10} params {r['parameters']:>11,}  step {r['median_step_s'] * 1000:8.1f} ms  "
              f"{r['samples_per_second']:8.1f} samples/s  {r['flops_per_sample'] / 1e9:7.2f} GFLOP/sample  "
              f"{r['achieved_tflops']:7.3f} TFLOP/s{mfu}")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"ratio ours / open_clip: {ratio:.2f}  ({args.arch}, {where}, batch {args.batch})")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    suffix = "" if (args.arch, device.type) == ("tiny", "cpu") else f"_{args.arch}_{device.type}"
    (out / f"train_step_vs_open_clip{suffix}.json").write_text(json.dumps(
        {"device": where, "arch": args.arch, "batch": args.batch, "steps": args.steps, "results": results,
         "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
