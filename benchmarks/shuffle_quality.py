"""How well the training stream shuffles: the order in which one stream visits the samples of synthetic shards
(keys only, nothing decoded), against shard order and against a uniform permutation of the whole set.

Measures, for the first epoch's worth of samples:
- same-shard share: how often two consecutive samples come from the same shard (shard order: ~1; uniform: 1/shards);
- shards per batch: distinct shards among each batch of `--batch` samples (uniform: nearly all shards);
- displacement: mean |position in the stream - position in shard order| / samples (shard order: 0; uniform: ~1/3).

    uv run python benchmarks/shuffle_quality.py --shards 32 --per-shard 1000 --batch 256
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from clipcore.data.stream import Source, StreamSpec, group_pieces, group_samples
from clipcore.ingest.stage import ShardWriter


def write_key_shards(root: Path, shards: int, per_shard: int) -> tuple[str, ...]:
    """Shards of empty placeholder samples (the order is read from the headers; nothing is decoded)."""
    paths = []
    for s in range(shards):
        path = root / f"{s:05d}.tar"
        with ShardWriter(path) as writer:
            for i in range(per_shard):
                writer.write(f"{s * per_shard + i:09d}", {"png": b"x", "txt": b"y"})
        paths.append(str(path))
    return tuple(paths)


def stream_order(spec: StreamSpec, samples: int) -> np.ndarray:
    """The global indices (shard * per_shard + i, from the keys) of one stream's first `samples` samples."""
    spec = spec.with_pieces(1)
    order, group = [], 0
    while len(order) < samples:
        order += [int(ref.key) for _, ref in group_samples(spec, group_pieces(spec, 0, spec.streams, group), 0, group)]
        group += 1
    return np.array(order[:samples])


def quality(order: np.ndarray, per_shard: int, batch: int) -> dict[str, float]:
    shard = order // per_shard
    batches = [len(set(shard[i:i + batch])) for i in range(0, len(order) - batch + 1, batch)]
    return {"same_shard_share": float(np.mean(shard[1:] == shard[:-1])),
            "shards_per_batch": float(np.mean(batches)),
            "displacement": float(np.mean(np.abs(order - np.arange(len(order)))) / len(order))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    n = args.shards * args.per_shard
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_key_shards(Path(tmp), args.shards, args.per_shard)
        rows = {"shard order": np.arange(n), "uniform permutation": np.random.default_rng(0).permutation(n)}
        for group in (1, 4, 8):
            spec = StreamSpec(sources=(Source(shards),), image_size=28, channels=1, tokenizer_path="",
                              context_length=8, shuffle_shards=group)
            rows[f"stream, shuffle_shards={group}"] = stream_order(spec, n)
    print(f"{args.shards} shards x {args.per_shard} samples, batch {args.batch}, one stream, first epoch")
    print(f"{'order':<28}{'same-shard share':>18}{'shards/batch':>14}{'displacement':>14}")
    for name, order in rows.items():
        q = quality(order, args.per_shard, args.batch)
        print(f"{name:<28}{q['same_shard_share']:>18.3f}{q['shards_per_batch']:>14.1f}{q['displacement']:>14.3f}")


if __name__ == "__main__":
    main()
