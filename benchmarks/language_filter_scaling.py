"""Time and peak memory of the filter's language rule against the number of distinct captions it scores.

The rule (clipcore.filter.language.disallowed_languages, `filter.language_min_ratio`) scores every distinct caption
of a shard once with lingua's confidence values; the former rule took lingua's first choice alone
(`detect_languages_in_parallel_of`). Each size runs both, each in a fresh process (peak RSS is per process):

    uv run python benchmarks/language_filter_scaling.py --sizes 10000 40000 160000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("red", "blue", "black", "white", "grey", "leather", "wool", "cotton", "summer", "winter", "cheap", "new",
         "vintage", "women", "men", "kids", "sandal", "sneaker", "boot", "coat", "shirt", "dress", "bag",
         "trouser", "pullover", "sale", "photo", "of", "a", "the", "with", "for", "in", "on", "at", "beach",
         "city")
FOREIGN = ["una camiseta negra de algodón", "ein schwarzer Mantel für den Winter", "une robe d'été légère",
           "scarpe da ginnastica bianche nuove", "calça jeans azul tamanho M"]


def captions(n: int, seed: int = 0) -> list[str]:
    """`n` distinct captions, 3-8 words, one in twenty a foreign one with a number appended."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 20 == 0:
            out.append(f"{rng.choice(FOREIGN)} {i}")
        else:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + f" {i}")
    return out


def measure(size: int, rule: str) -> dict:
    from clipcore.config import FilterConfig
    from clipcore.filter.language import code, detector, disallowed_languages

    config = FilterConfig()
    texts = captions(size)
    detector(tuple(config.language_candidates))  # model loading is not per caption
    start = time.perf_counter()
    if rule == "ratio":
        found = disallowed_languages(texts, config.languages, config.language_candidates, config.language_min_ratio)
    else:
        first = detector(tuple(config.language_candidates)).detect_languages_in_parallel_of(texts)
        found = [None if lang is None or code(lang) in config.languages else code(lang) for lang in first]
    seconds = time.perf_counter() - start
    return {"captions": size, "rule": rule, "seconds": round(seconds, 2),
            "us_per_caption": round(1e6 * seconds / size, 1),
            "rejected": sum(f is not None for f in found),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 160_000])
    parser.add_argument("--out", default="benchmarks/results/language_filter_scaling.json")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # size rule: run in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1])))
        return
    rows = []
    print(f"{'captions':>9} {'rule':>12} {'s':>7} {'us/caption':>10} {'rejected':>8} {'peak RSS MB':>11}")
    for size in args.sizes:
        for rule in ("first_choice", "ratio"):
            result = subprocess.run([sys.executable, __file__, "--one", str(size), rule], check=True,
                                    capture_output=True, text=True)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{row['captions']:>9} {row['rule']:>12} {row['seconds']:>7} {row['us_per_caption']:>10} "
                  f"{row['rejected']:>8} {row['peak_rss_mb']:>11}", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
