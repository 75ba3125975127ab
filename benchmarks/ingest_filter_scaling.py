"""How ingest (local files, now confined to `ingest.data_root`) and filtering grow with the number of rows: wall time
and peak RSS of the coordinating process and of the ingest workers at several sizes, for this code and, with
`--before SRC`, for another checkout of the project run side by side on the same synthetic data.

    git worktree add /tmp/clip-before 9e15c05
    uv run --frozen python benchmarks/ingest_filter_scaling.py --sizes 10000 30000 90000 --before /tmp/clip-before

Each figure is the best of `--repeats` fresh processes, the two versions interleaved (worker memory sampled every
0.1 s with psutil): synthetic 28x28 grayscale PNGs with captions in a csv, ingested with 2 processes x 4 threads into
shards (PNG), then filtered with the default rules (language, exact duplicates).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["red", "blue", "cotton", "vintage", "summer", "classic", "coat", "shirt", "bag", "sneaker", "dress", "boot"]

CHILD = r"""
import json, resource, sys, threading, time
from pathlib import Path
import psutil
from clipcore.config import FilterConfig, IngestConfig
root, out = Path(sys.argv[1]), Path(sys.argv[2])
try:  # this layout
    from clipcore.ingest.stage import ingest
    extra = {"data_root": str(root)}
except ImportError:  # the flat layout before the stage folders
    from clipcore.ingest import ingest
    extra = {}
worker_peak, done = [0], threading.Event()
def sample():  # the ingest workers' resident memory, largest seen (ru_maxrss of children would count the fork)
    while not done.wait(0.1):
        for child in psutil.Process().children(recursive=True):
            try:
                worker_peak[0] = max(worker_peak[0], child.memory_info().rss)
            except psutil.Error:
                pass
threading.Thread(target=sample, daemon=True).start()
config = IngestConfig(input=str(root / "captions.csv"), url_col="path", local_paths=True, encode_format="png",
                      shard_size=10000, processes=2, threads=4, **extra)
t = time.perf_counter(); ingest(config, out / "shards", progress=False); ingest_s = time.perf_counter() - t
done.set()
ingest_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try:
    from clipcore.filter.stage import run_filter
except ImportError:
    from pipelines.filter_stage import run_filter
(out / "filtered").mkdir()
t = time.perf_counter(); run_filter(out / "shards", FilterConfig(), out / "filtered", progress=False)
filter_s = time.perf_counter() - t
print(json.dumps({"ingest_s": ingest_s, "filter_s": filter_s, "ingest_coordinator_mib": ingest_mib,
                  "filter_process_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_mib": worker_peak[0] / 2**20}))
"""


def make_dataset(root: Path, rows: int, seed: int = 0) -> None:
    """`rows` distinct PNG files and a captions.csv naming them (relative paths)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    lines = ["path,caption"]
    for i in range(rows):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        lines.append(f"images/{i}.png,a {' '.join(rng.choice(WORDS, 4))} photo")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")


def measure(src: Path, root: Path) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": str(src)}
        done = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, str(root), out], env=env, cwd=src,
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 90_000])
    parser.add_argument("--repeats", type=int, default=2, help="runs per version and size (best shown)")
    parser.add_argument("--before", type=Path, help="another checkout of the project to measure beside this one")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    versions = {"this": here, **({"before": args.before.resolve()} if args.before else {})}
    print(f"{'code':<7} {'rows':>7} {'ingest s':>9} {'us/row':>7} {'coord MiB':>10} {'worker MiB':>11} "
          f"{'filter s':>9} {'us/row':>7} {'filter MiB':>11}")
    for rows in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            make_dataset(Path(tmp), rows)
            runs: dict[str, list[dict]] = {name: [] for name in versions}
            for i in range(args.repeats):  # interleaved, order alternating, so neither version always goes first
                order = list(versions.items()) if i % 2 == 0 else list(versions.items())[::-1]
                for name, src in order:
                    runs[name].append(measure(src, Path(tmp)))
            for name, measured in runs.items():
                r = {k: min(m[k] for m in measured) for k in measured[0]}  # best of the repeats
                print(f"{name:<7} {rows:>7} {r['ingest_s']:>9.2f} {1e6 * r['ingest_s'] / rows:>7.0f} "
                      f"{r['ingest_coordinator_mib']:>10.0f} {r['worker_mib']:>11.0f} {r['filter_s']:>9.2f} "
                      f"{1e6 * r['filter_s'] / rows:>7.0f} {r['filter_process_mib']:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
