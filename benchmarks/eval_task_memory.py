"""Peak RSS of evaluating a synthetic CLIP_benchmark-layout classification task of N images, each measurement a fresh
process: `evaluate_task` (streamed through clipcore.data.task_shards) beside the same task read whole into memory
first (`LabeledSet.load()` then zero-shot on the tensors), the form a reader that materializes the set would have.

    uv run --frozen python benchmarks/eval_task_memory.py --sizes 5000 20000 50000 \
        --out benchmarks/results/eval_task_memory.txt

Data (made once under `--data`, written by clipcore.data.task_export through a generated LabeledSet, so writing is
streamed too): 64x64 RGB lossless PNGs of smooth noise, 10 classes, 10,000 images a shard (CLIP_benchmark's default),
the first N of one 50,000-image task (`limit`). Model: a tiny untrained ViT CLIP at 64 px RGB, CPU, batch 500, no
linear probe (a probe keeps (N, D) float embeddings: 50k x 32 floats here). Peak RSS is the child's ru_maxrss
(interpreter, torch and the model included); seconds and CPU seconds (user + system) cover the evaluation only;
zero-shot top-1 is printed so both modes are seen to compute the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from eval_memory import CLASSES, make_checkpoint  # benchmarks/ is on sys.path when a benchmark runs

CHILD = r"""
import json, resource, sys, time
import numpy as np
from clipcore.data.labeled_sets import tensor_set
from clipcore.data.task_shards import open_task, task_labeled_set
from clipcore.evaluate.evaluation import zero_shot
from clipcore.evaluate.tasks import evaluate_task
from clipcore.model.clip_model import load_checkpoint
data, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model, tok = load_checkpoint(f"{data}/checkpoint")
model.eval()
task = open_task(f"{data}/task")
t, cpu0 = time.perf_counter(), sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
if mode == "stream":
    top1 = evaluate_task(model, tok, task, batch_size=500, limit=n, probe_size=0).metrics["zero_shot_top1"]
else:
    images, labels = task_labeled_set(task, "test", 64, 3, limit=n).load(500)  # the whole set as one tensor
    top1 = zero_shot(model, tok, tensor_set(images, labels, task.class_names), task.templates, 500)[0]["top1"]
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s": time.perf_counter() - t, "cpu": usage.ru_utime + usage.ru_stime - cpu0,
                  "mib": usage.ru_maxrss / 1024, "top1": round(top1, 6)}))
"""


def make_task(data: Path, count: int) -> None:
    """A `count`-image task under data/task, generated batch by batch."""
    import numpy as np
    import torch
    from PIL import Image

    from clipcore.data.labeled_sets import LabeledSet
    from clipcore.data.task_export import write_classification_task
    from clipcore.model.prompts import load_templates

    if (data / "task" / "test" / "nshards.txt").exists():
        return

    def read(batch_size: int):
        rng = np.random.default_rng(0)
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            coarse = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
            images = np.stack([np.asarray(Image.fromarray(c).resize((64, 64), Image.BICUBIC)) for c in coarse])
            yield torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), np.arange(start, start + n) % 10

    write_classification_task(data / "task", LabeledSet(CLASSES, count, read), load_templates("fashion_mnist"))


def measure(here: Path, data: Path, rows: int, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(here), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, str(data), str(rows), mode], env=env,
                          cwd=here, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 20_000, 50_000])
    parser.add_argument("--modes", nargs="+", default=["stream", "in-memory"], choices=["stream", "in-memory"])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "eval_task_memory_data")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    args.data.mkdir(parents=True, exist_ok=True)
    make_task(args.data, max(args.sizes))
    if not (args.data / "checkpoint").exists():
        make_checkpoint(args.data, image_size=64)  # eval_memory.py's, at the task's size
    lines = [f"{'mode':<10} {'images':>7} {'peak RSS MiB':>13} {'seconds':>8} {'CPU s':>7}  zero-shot top-1"]
    print(lines[0], flush=True)
    for rows in args.sizes:
        for mode in args.modes:
            r = measure(here, args.data, rows, mode)
            lines.append(f"{mode:<10} {rows:>7} {r['mib']:>13.0f} {r['s']:>8.1f} {r['cpu']:>7.1f}  {r['top1']}")
            print(lines[-1], flush=True)
    if args.out:
        args.out.write_text(__doc__.split("\n\n")[0] + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
