"""What DVC costs on an ingest output of N samples: hashing the shard folder and storing it in the cache (`dvc commit`),
`dvc status` right after and after one shard is rewritten, and the cache's disk use, for each cache link type.

    uv run --frozen python benchmarks/dvc_at_scale.py --samples 100000 300000 1000000 --cache-types copy hardlink

Synthetic shards as ingest writes them (webdataset tars of 10,000 samples: a ~700-byte PNG, a caption and a json
each, plus one parquet manifest per shard) in a scratch git + DVC repository with one stage whose out is the folder;
DVC 3.67.1 (as the project pins), each command a fresh process, timed end to end. Writes
benchmarks/results/dvc_at_scale.txt.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from clipcore.ingest.shard_writer import ShardWriter

DVC = ["uv", "tool", "run", "--quiet", "--from", "dvc==3.67.1", "dvc"]
SHARD = 10_000
RESULTS = Path(__file__).parent / "results" / "dvc_at_scale.txt"


def write_shards(folder: Path, samples: int, seed: int = 0) -> int:
    """`samples` samples in ceil(samples / SHARD) shards (tar + parquet); returns the folder's bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    pngs = []
    for _ in range(64):  # distinct payloads, reused: the bytes hashed are what matters, not their variety
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    for shard in range(-(-samples // SHARD)):
        uids = [f"{i:09d}" for i in range(shard * SHARD, min(samples, (shard + 1) * SHARD))]
        with ShardWriter(folder / f"{shard:05d}.tar") as writer:
            for uid in uids:
                writer.write(uid, {"png": pngs[int(uid) % 64], "txt": f"a photo number {uid}".encode(),
                                   "json": json.dumps({"uid": uid}).encode()})
        pl.DataFrame({"uid": uids, "status": ["success"] * len(uids)}).write_parquet(folder / f"{shard:05d}.parquet")
    return sum(p.stat().st_size for p in folder.iterdir())


def timed(cmd: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> float:
    """Seconds `cmd` took; its exit status must be one of `ok`."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True)
    if done.returncode not in ok:
        raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    return time.perf_counter() - start


def du(path: Path) -> int:
    """Bytes on disk under `path`, hard links counted once (what a second copy really costs)."""
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def measure(samples: int, cache_type: str, scratch: Path) -> dict:
    repo = scratch / f"repo-{samples}-{cache_type}"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*DVC, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*DVC, "config", "cache.type", cache_type], cwd=repo, check=True)
    size = write_shards(repo / "shards", samples)
    (repo / "dvc.yaml").write_text("stages:\n  ingest:\n    cmd: 'true'\n    outs: [shards]\n")
    commit = timed([*DVC, "commit", "-f", "-q"], repo)  # hash every file, store it in the cache
    status = timed([*DVC, "status", "-q"], repo)  # hashes from DVC's state database (size + mtime unchanged)
    tar = repo / "shards" / "00000.tar"  # rewrite one shard as ingest does (a new file renamed into place), one byte
    payload = bytearray(tar.read_bytes())  # of it changed: DVC must hash it again and see the difference
    payload[-1] ^= 1
    tar.with_suffix(".tmp").write_bytes(payload)
    os.replace(tar.with_suffix(".tmp"), tar)
    status_changed = subprocess.run([*DVC, "status", "-q"], cwd=repo, capture_output=True)
    status_one = timed([*DVC, "status", "-q"], repo, ok=(0, 1))  # `status -q` exits 1 when something changed
    both = du(repo)  # workspace + cache, hard links once
    startup = timed([*DVC, "version"], repo)  # what any dvc command costs before it looks at the data
    result = {"samples": samples, "startup_s": startup, "cache_type": cache_type,
              "files": len(list((repo / "shards").iterdir())),
              "gib": size / 2**30, "commit_s": commit, "status_s": status, "status_one_rewritten_s": status_one,
              "reported_changed": status_changed.returncode != 0 or b"modified" in status_changed.stdout,
              "extra_disk_gib": (both - size) / 2**30}
    shutil.rmtree(repo)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--cache-types", nargs="+", default=["copy", "hardlink"])
    parser.add_argument("--scratch", default=None, help="folder for the scratch repositories (default: a temp dir)")
    args = parser.parse_args()
    lines = [f"{'samples':>9} {'cache':>8} {'files':>6} {'GiB':>6} {'dvc start s':>11} {'commit s':>9} "
             f"{'status s':>9} {'status, 1 shard rewritten s':>27} {'change seen':>11} {'cache extra GiB':>16}"]
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for samples in args.samples:
            for cache_type in args.cache_types:
                r = measure(samples, cache_type, Path(scratch))
                lines.append(f"{r['samples']:>9} {r['cache_type']:>8} {r['files']:>6} {r['gib']:>6.2f} "
                             f"{r['startup_s']:>11.1f} {r['commit_s']:>9.1f} {r['status_s']:>9.1f} "
                             f"{r['status_one_rewritten_s']:>27.1f} {'yes' if r['reported_changed'] else 'NO':>11} "
                             f"{r['extra_disk_gib']:>16.2f}")
                print(lines[-1], flush=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
