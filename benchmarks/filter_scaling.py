"""How the filter stage grows with the number of manifest rows: wall time, CPU time, time per row and peak RSS of a
fresh process filtering synthetic ingest folders of 1M, 5M and 20M rows, for this code and, with `--before SRC`,
for another checkout of the project on the same folders.

    mkdir /tmp/filter-before && git archive 1db25dd~1 clipcore | tar -x -C /tmp/filter-before
    .venv/bin/python benchmarks/filter_scaling.py --before /tmp/filter-before --before-sizes 1000000 5000000

The folders hold only shard manifests (`NNNNN.parquet`, `--shard-rows` rows each, written one at a time, so making
20M rows holds one shard in memory): uid, url, a caption of 3-8 words from a word list (5%: 1-2 words), sizes (3%
too small, 2% too wide), sha256, a 64-bit perceptual hash and the shard; 2% of the rows failed to download, 3%
repeat an earlier image (sha256), 1% an earlier perceptual hash and 3% are near duplicates (1-`--near-bits` bits
flipped), 0.5% are blank (hash 0). Rules: the defaults (basic rules, exact image duplicates) with near duplicates on
(`--near-bits`) and language detection off; at the first size it also runs with language detection on, and the
difference is its cost.
CPU time (user + system) is shown beside wall time: the machine may be shared, and wall time then says more about
the neighbours than about the code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

WORDS = np.array(["red", "blue", "green", "black", "white", "cotton", "wool", "linen", "leather", "denim",
                  "vintage", "classic", "modern", "summer", "winter", "spring", "autumn", "coat", "shirt", "bag",
                  "sneaker", "dress", "boot", "hat", "scarf", "jacket", "skirt", "sandal", "belt", "watch",
                  "photo", "of", "a", "the", "with", "and", "for", "on", "in", "woman", "man", "girl", "boy",
                  "kid", "model", "studio", "street", "beach", "city", "park", "shop", "new", "sale", "size",
                  "small", "large", "soft", "warm", "light", "dark", "long", "short", "slim", "loose", "striped",
                  "floral", "plain"])
HEX = np.frombuffer(b"0123456789abcdef", np.uint8)

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from clipcore.config import FilterConfig
from clipcore.filter.stage import run_filter
import clipcore
ingest, out, languages, near = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
config = FilterConfig(languages=("en",) if languages else (), near_duplicate_bits=near)
wall, cpu = time.perf_counter(), time.process_time()
result = run_filter(ingest, config, out, progress=False)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                  "peak_mib": usage.ru_maxrss / 1024, "kept": result.counts["kept"],
                  "reasons": result.counts["rejected_by_reason"], "code": clipcore.__file__}))
"""


def hex16(values: np.ndarray) -> pl.Series:
    """(N,) uint64 -> 16-hex-digit strings, vectorised."""
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    digits = HEX[(values[:, None] >> shifts) & np.uint64(15)]
    return pl.Series(np.ascontiguousarray(digits).view("S16").ravel()).cast(pl.String)


def flip_bits(rng: np.random.Generator, values: np.ndarray, max_bits: int) -> np.ndarray:
    """Each value with 1..max_bits random bits flipped (a bit may be drawn twice: then fewer)."""
    out = values.copy()
    flips = rng.integers(1, max_bits + 1, len(values))
    for j in range(max_bits):
        bit = np.uint64(1) << rng.integers(0, 64, len(values)).astype(np.uint64)
        out ^= np.where(flips > j, bit, np.uint64(0))
    return out


def make_shard(rng: np.random.Generator, index: int, start: int, n: int, near_bits: int,
               previous: tuple[np.ndarray, np.ndarray] | None) -> tuple[pl.DataFrame, tuple[np.ndarray, np.ndarray]]:
    """One shard manifest of rows start..start+n; `previous` (sha words, phashes) of the last shard supply repeats."""
    sha = rng.integers(0, 2**64 - 1, (n, 2), dtype=np.uint64, endpoint=True)
    phash = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    pool_sha = sha if previous is None else np.concatenate([previous[0], sha])
    pool_phash = phash if previous is None else np.concatenate([previous[1], phash])
    offset = len(pool_sha) - n  # row i of this shard is pool row offset + i: a repeat copies a row before it

    def earlier(rows: np.ndarray) -> np.ndarray:
        return (rng.random(len(rows)) * (offset + rows)).astype(np.int64)

    draw = rng.random(n)
    repeat, same, near, blank = draw < 0.03, (draw >= 0.03) & (draw < 0.04), (draw >= 0.04) & (draw < 0.07), (
        draw >= 0.07) & (draw < 0.075)
    for mask, kind in ((repeat, "sha"), (same, "phash"), (near, "near")):
        rows = np.flatnonzero(mask & (np.arange(n) + offset > 0))
        source = earlier(rows)
        if kind == "sha":
            sha[rows], phash[rows] = pool_sha[source], pool_phash[source]
        else:
            phash[rows] = pool_phash[source] if kind == "phash" else flip_bits(rng, pool_phash[source], near_bits)
    phash[blank] = 0
    words = WORDS[rng.integers(0, len(WORDS), (n, 8))]
    length = np.where(rng.random(n) < 0.05, rng.integers(1, 3, n), rng.integers(3, 9, n))  # 5% too few words
    side = rng.integers(200, 1024, n)[:, None] * np.c_[np.ones(n), rng.uniform(0.5, 2, n)]
    side = side.astype(np.int64)
    side[rng.random(n) < 0.03, 0] = 10  # too small
    side[rng.random(n) < 0.02, 1] = 4000  # too wide
    failed = rng.random(n) < 0.02
    sha_text = pl.select(pl.concat_str([hex16(sha[:, 0]), hex16(sha[:, 1]), hex16(sha[:, 0] ^ sha[:, 1]),
                                        hex16(sha[:, 1] + np.uint64(1))])).to_series()
    frame = pl.DataFrame({
        "uid": pl.int_range(start, start + n, eager=True).cast(pl.String).str.zfill(9),
        "url": pl.select(pl.format("https://img.example.com/{}.jpg", pl.int_range(start, start + n)))["literal"],
        "caption": pl.DataFrame({f"w{j}": words[:, j] for j in range(8)}).select(pl.concat_str(
            [pl.when(pl.lit(length) > j).then(pl.col(f"w{j}")) for j in range(8)], separator=" ",
            ignore_nulls=True))["w0"],
        "width": np.minimum(side[:, 0], 256).astype(np.int32), "height": np.minimum(side[:, 1], 256).astype(np.int32),
        "original_width": side[:, 0].astype(np.int32), "original_height": side[:, 1].astype(np.int32),
        "sha256": sha_text, "phash": hex16(phash), "shard": [f"{index:05d}.tar"] * n,
        "status": np.where(failed, "failed_to_download", "success"),
    }).with_columns(error=pl.when(pl.lit(failed)).then(pl.lit("http_404")))
    nulls = ["width", "height", "original_width", "original_height", "sha256", "phash", "shard"]
    frame = frame.with_columns(pl.when(pl.lit(failed)).then(None).otherwise(pl.col(c)).alias(c) for c in nulls)
    return frame, (sha, phash)


def make_dataset(folder: Path, rows: int, shard_rows: int, near_bits: int, seed: int = 0) -> None:
    """Shard manifests of `rows` rows in `folder`, written one shard at a time."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    previous = None
    for index, start in enumerate(range(0, rows, shard_rows)):
        frame, previous = make_shard(rng, index, start, min(shard_rows, rows - start), near_bits, previous)
        frame.write_parquet(folder / f"{index:05d}.parquet")


def measure(src: Path, ingest: Path, languages: bool, near_bits: int, timeout: float | None = None) -> dict | None:
    """Filter `ingest` in a fresh process running the code in `src`; None when it ran past `timeout` seconds (the
    process is killed)."""
    with tempfile.TemporaryDirectory(dir=ingest.parent) as out:
        env = {**os.environ, "PYTHONPATH": str(src)}
        try:
            done = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, str(ingest), out, str(int(languages)),
                                   str(near_bits)], env=env, cwd=src, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode:
            raise RuntimeError(f"{src} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if not result["code"].startswith(str(src)):
            raise RuntimeError(f"the child imported {result['code']}, not the code in {src}")
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--near-bits", type=int, default=4, help="filter.near_duplicate_bits")
    parser.add_argument("--before", type=Path, help="another checkout of the project to measure beside this one")
    parser.add_argument("--before-sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--before-timeout", type=float, default=1200, help="seconds before a run of --before is "
                        "stopped (its near-duplicate rule is quadratic)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="where the folders go")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    print(f"{'code':<7} {'rows':>10} {'language':>8} {'wall s':>8} {'cpu s':>8} {'us/row':>7} {'cpu us/row':>10} "
          f"{'peak MiB':>9} {'kept':>10}", flush=True)
    for i, rows in enumerate(args.sizes):
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            start = time.perf_counter()
            make_dataset(Path(tmp) / "ingest", rows, args.shard_rows, args.near_bits)
            print(f"# {rows} rows generated in {time.perf_counter() - start:.0f} s", flush=True)
            runs = [("this", here, False)] + ([("this", here, True)] if i == 0 else [])
            runs += [("before", args.before.resolve(), False)] if args.before and rows in args.before_sizes else []
            for name, src, languages in runs:
                timeout = args.before_timeout if name == "before" else None
                r = measure(src, Path(tmp) / "ingest", languages, args.near_bits, timeout)
                if r is None:
                    print(f"{name:<7} {rows:>10} {'on' if languages else 'off':>8}  stopped after {timeout:.0f} s",
                          flush=True)
                    continue
                print(f"{name:<7} {rows:>10} {'on' if languages else 'off':>8} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
                      f"{1e6 * r['wall_s'] / rows:>7.2f} {1e6 * r['cpu_s'] / rows:>10.2f} {r['peak_mib']:>9.0f} "
                      f"{r['kept']:>10}", flush=True)
                print(f"#   rejected by reason: {json.dumps(r['reasons'])}", flush=True)


if __name__ == "__main__":
    main()
