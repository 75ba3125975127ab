"""Peak memory of a pretraining process against the size of the dataset it trains on: the real stage entry point
(`clipcore.train.stage.run_pretraining`: holdout selection and kept-manifest reads, tokenizer trained on the streamed
captions, training streamed from the shards) on synthetic shards of 50k, 250k and 1M small JPEGs, a fixed number of
steps each (`train.samples_seen`), each run in a fresh process.

Every size reads a prefix of one set of shards (10k samples per shard by default) through its own kept.parquet
(uid = sample key, caption, shard = tar file name). Reported per run: peak RSS of the training process (`ru_maxrss`),
the largest peak RSS of a DataLoader worker and the largest sum over the process tree (psutil, sampled every 50 ms;
forked workers share pages with their parent, so the sum overcounts), and wall seconds.

Variants (`--variants`): `this/0` (this code, `train.workers=0`: the stream read in the training process),
`this/W` (this code with `--workers` DataLoader workers) and, with `--before SRC`, `before/W`: a checkout of the
in-memory implementation (e.g. `git worktree add /tmp/clip-0dfef4f 0dfef4f`; its `run_pretraining` takes the kept
DataFrame and `train.epochs`, set for the same steps) at `--before-sizes` only.

    .venv/bin/python benchmarks/memory_vs_dataset_size.py --sizes 50000 250000 1000000 \
        --before /tmp/clip-0dfef4f --before-sizes 50000 250000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

WORDS = ["red", "blue", "green", "cotton", "vintage", "summer", "classic", "coat", "shirt", "bag", "sneaker", "dress",
         "boot", "wool", "leather", "striped", "black", "white", "long", "short", "sleeve", "pocket", "slim", "loose"]

CHILD = r"""
import json, resource, sys, threading, time
import polars as pl, psutil
kept, shard_root, out, steps, batch, workers, train_rows, mode = sys.argv[1:9]
steps, batch, workers, train_rows = int(steps), int(batch), int(workers), int(train_rows)
import clipcore
from clipcore.config import ModelConfig, PipelineConfig, TrainConfig
from clipcore.train.stage import run_pretraining
me, peaks, done = psutil.Process(), {"worker": 0, "tree": 0, "workers_seen": 0}, threading.Event()
def sample():  # the DataLoader workers' resident memory, largest seen, and the whole tree's
    while not done.wait(0.05):
        tree = me.memory_info().rss
        children = me.children(recursive=True)
        peaks["workers_seen"] = max(peaks["workers_seen"], len(children))
        for child in children:
            try:
                rss = child.memory_info().rss
            except psutil.Error:
                continue
            peaks["worker"] = max(peaks["worker"], rss)
            tree += rss
        peaks["tree"] = max(peaks["tree"], tree)
threading.Thread(target=sample, daemon=True).start()
model = ModelConfig(image_size=32, channels=3, patch_size=8, vision_width=32, vision_heads=2, vision_layers=2,
                    text_width=32, text_heads=2, text_layers=2, embed_dim=32, vocab_size=400)
train = dict(batch_size=batch, workers=workers, device="cpu", holdout_size=1000, warmup_steps=10, log_every=50)
if mode == "before":  # the in-memory implementation: run length in epochs of N // batch steps
    train["epochs"] = steps / (train_rows // batch)
else:
    train["samples_seen"] = steps * batch
config = PipelineConfig(model=model, train=TrainConfig(**train))
start = time.perf_counter()
if mode == "before":
    result = run_pretraining(pl.read_parquet(kept), shard_root, out, config, progress=False)
else:
    result = run_pretraining(kept, shard_root, out, config, progress=False)
seconds = time.perf_counter() - start
done.set()
print(json.dumps({"code": clipcore.__file__, "steps": result.result.steps, "train_rows": result.train_rows,
                  "seconds": seconds, "train_seconds": result.result.seconds,
                  "main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_mib": peaks["worker"] / 2**20, "tree_mib": peaks["tree"] / 2**20,
                  "workers_seen": peaks["workers_seen"], "skipped": getattr(result.result, "skipped_samples", 0)}))
"""

def synthetic_jpegs(rng: np.random.Generator, count: int, size: int) -> list[bytes]:
    """`count` size x size RGB JPEGs (quality 90): smooth random colour fields with mild noise."""
    low = rng.integers(0, 256, (count, 4, 4, 3), dtype=np.uint8)
    noise = rng.integers(-8, 9, (count, size, size, 3), dtype=np.int16)
    out = []
    for i in range(count):
        smooth = np.asarray(Image.fromarray(low[i]).resize((size, size), Image.BILINEAR), dtype=np.int16)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(smooth + noise[i], 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def write_shards(root: Path, samples: int, shard_size: int, size: int) -> tuple[list[str], float]:
    """(shard file names, seconds to write) of `samples` synthetic pairs (keys `%09d`), reused when already there;
    also writes `manifest.parquet` (uid, caption, shard) of all of them."""
    from clipcore.ingest.stage import ShardWriter

    names = [f"{i:05d}.tar" for i in range(-(-samples // shard_size))]
    done = root / f"done-{samples}-{shard_size}-{size}"
    if done.exists():
        return names, float(done.read_text())
    (root / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    uids, captions, shards = [], [], []
    start = time.perf_counter()
    for index, name in enumerate(names):
        first, last = index * shard_size, min((index + 1) * shard_size, samples)
        images = synthetic_jpegs(rng, last - first, size)
        with ShardWriter(root / "shards" / name) as writer:
            for i, payload in zip(range(first, last), images, strict=True):
                caption = " ".join(rng.choice(WORDS, rng.integers(3, 9)))
                writer.write(f"{i:09d}", {"jpg": payload, "txt": caption.encode()})
                uids.append(f"{i:09d}")
                captions.append(caption)
                shards.append(name)
    pl.DataFrame({"uid": uids, "caption": captions, "shard": shards}).write_parquet(root / "manifest.parquet")
    seconds = time.perf_counter() - start
    done.write_text(str(seconds))
    return names, seconds


def measure(mode: str, code_root: Path | None, kept: Path, shard_root: Path, steps: int, batch: int, workers: int,
            train_rows: int, timeout: float | None) -> dict:
    """One fresh training process on `kept`: its peaks and times (see CHILD), or {"hung": seconds} when it was
    still running after `timeout` seconds (it and its workers are then killed)."""
    env = dict(os.environ)
    if code_root is not None:
        env["PYTHONPATH"] = str(code_root)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-W", "ignore", "-c", CHILD, str(kept), str(shard_root), out, str(steps),
                   str(batch), str(workers), str(train_rows), mode]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                 cwd=code_root or Path.cwd(), start_new_session=True)
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # its own session: the child and its DataLoader workers
            child.communicate()
            return {"hung": timeout}
    if child.returncode:
        raise RuntimeError(f"training child failed:\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def report_row(label: str, size: int, r: dict) -> str:
    if "hung" in r:
        return f"{label:<10} {size:>9}  HUNG: no result after {r['hung']:.0f} s (killed)"
    return (f"{label:<10} {size:>9} {r['steps']:>5} {r['main_mib']:>9.0f} {r['worker_mib']:>10.0f} "
            f"{r['tree_mib']:>9.0f} {r['train_seconds']:>8.1f} {r['seconds']:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/clip-memory-bench"), help="where the shards go")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 250_000, 1_000_000])
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=32, help="side of the synthetic JPEGs (and the model's)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["this/0", "this/W", "before/W"])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a run counts as hung")
    parser.add_argument("--before", type=Path, help="a checkout of the in-memory implementation (e.g. 0dfef4f)")
    parser.add_argument("--before-sizes", type=int, nargs="*", default=[50_000])
    args = parser.parse_args()

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"machine: {os.cpu_count()} cores, {mem:.0f} GiB, no GPU; shared with other jobs "
          f"(load average at start {os.getloadavg()[0]:.1f}); python {sys.version.split()[0]}, polars {pl.__version__}")
    names, seconds = write_shards(args.root, max(args.sizes), args.shard_size, args.image_size)
    shard_root = args.root / "shards"
    disk = sum((shard_root / n).stat().st_size for n in names)
    print(f"shards: {max(args.sizes)} synthetic {args.image_size}x{args.image_size} RGB JPEGs (q90) + captions, "
          f"{len(names)} shards of {args.shard_size} ({disk / 2**30:.2f} GiB); written in {seconds:.0f} s "
          f"({seconds / max(args.sizes) * 1e6:.0f} us/sample, one process)")
    print(f"each run: run_pretraining, tiny ViT (32 px, patch 8, width 32, 2 layers) + text (width 32), "
          f"{args.steps} steps of batch {args.batch_size} (train.samples_seen), holdout 1000, CPU; /W = "
          f"{args.workers} DataLoader workers\n")
    manifest = pl.scan_parquet(args.root / "manifest.parquet")
    print(f"{'variant':<10} {'samples':>9} {'steps':>5} {'main MiB':>9} {'worker MiB':>10} {'tree MiB':>9} "
          f"{'train s':>8} {'total s':>8}")
    results = {}
    for size in args.sizes:
        kept = args.root / f"kept-{size}.parquet"
        if not kept.exists():
            manifest.head(size).collect().write_parquet(kept)
        for variant in args.variants:
            mode, workers = variant.split("/")
            workers = args.workers if workers == "W" else int(workers)
            if mode == "before" and (args.before is None or size not in args.before_sizes):
                continue
            r = measure(mode, args.before if mode == "before" else None, kept, shard_root, args.steps,
                        args.batch_size, workers, size - 1000, args.timeout)
            results[variant, size] = r
            print(report_row(variant, size, r), flush=True)
    print()
    for variant in args.variants:
        done = {size: r for (v, size), r in results.items() if v == variant and "hung" not in r}
        if len(done) < 2:
            continue
        small, large = min(done), max(done)
        for key, label in [("main_mib", "training process"), ("worker_mib", "largest worker"), ("tree_mib", "tree")]:
            if done[small][key] == 0:
                continue
            growth = done[large][key] / done[small][key] - 1
            verdict = "within" if abs(growth) <= 0.10 else "NOT within"
            print(f"{variant}: {label} peak at {large} vs {small} samples: {growth:+.1%} ({verdict} 10%)")

    print()
    for (variant, size), r in results.items():
        if "hung" not in r:
            print(f"  {variant} {size}: code from {r['code']}, {r['train_rows']} training rows, {r['workers_seen']} "
                  f"worker processes seen, {r['skipped']} skipped")


if __name__ == "__main__":
    main()
