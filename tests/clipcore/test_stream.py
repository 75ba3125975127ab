"""The training stream's parts against independent references: the crop against torchvision's, the split of shards
across processes and streams, resampling weights, and the streamed holdout against a plain sort."""

import random
from collections import Counter

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from clipcore.data.stream import Source, StreamSpec, build_train_transform, crop_box, group_pieces, group_samples
from clipcore.train.kept_rows import select_holdout, training_rows
from tests.clipcore.pairs import write_shards


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3), ("RGB", 1), ("L", 3)])
def test_crop_is_torchvisions_resized_crop_of_the_same_box(mode, channels):
    shape = (40, 33) if mode == "L" else (40, 33, 3)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))
    spec = StreamSpec(sources=(), image_size=28, channels=channels, tokenizer_path="", context_length=8,
                      augment_scale=(0.5, 1.0))
    ours = build_train_transform(spec)(image, random.Random(5))
    top, left, height, width = crop_box(40, 33, (0.5, 1.0), random.Random(5))
    reference = F.to_image(image)
    if reference.shape[0] != channels:
        reference = F.rgb_to_grayscale(reference) if channels == 1 else reference.expand(3, -1, -1)
    reference = F.resized_crop(reference, top, left, height, width, [28, 28], antialias=True)
    assert ours.dtype == torch.uint8 and torch.equal(ours, reference)
    assert 0.5 * 40 * 33 * 0.9 <= height * width <= 40 * 33  # area within the scale (rounding aside)


def keys_read(spec: StreamSpec, stream: int, total: int, groups: int) -> list[str]:
    return [r.key for g in range(groups)
            for _, r in group_samples(spec, group_pieces(spec, stream, total, g), stream, g)]


def test_processes_and_streams_read_disjoint_shards_covering_each_epoch_once(tmp_path):
    """8 shards, 2 processes x 2 streams: in an epoch every stream reads 2 whole shards, no two streams the same, and
    together every sample exactly once; the next epoch deals them differently."""
    images = torch.zeros(8 * 10, 4, 4, dtype=torch.uint8)
    shards = write_shards(tmp_path, images, ["a caption"] * 80, shard_size=10)
    spec = StreamSpec(sources=(Source(shards),), image_size=4, channels=1, tokenizer_path="", context_length=8,
                      streams=2, shuffle_shards=2).with_pieces(2)
    epoch = [keys_read(spec, s, 4, 1) for s in range(4)]
    assert all(len(k) == 20 for k in epoch)
    assert sorted(k for keys in epoch for k in keys) == [f"{i:09d}" for i in range(80)]
    shards_of = [{int(k) // 10 for k in keys} for keys in epoch]
    assert all(len(s) == 2 for s in shards_of) and len(set().union(*shards_of)) == 8
    second = [{int(r.key) // 10 for _, r in group_samples(spec, group_pieces(spec, s, 4, 1), s, 1)} for s in range(4)]
    assert second != shards_of


def test_fewer_shards_than_streams_are_split_into_parts(tmp_path):
    shards = write_shards(tmp_path, torch.zeros(30, 4, 4, dtype=torch.uint8), ["c"] * 30, shard_size=15)
    spec = StreamSpec(sources=(Source(shards),), image_size=4, channels=1, tokenizer_path="", context_length=8,
                      streams=2, shuffle_shards=1).with_pieces(2)  # 4 streams, 2 shards: each in 2 parts
    reads = [keys_read(spec, s, 4, 1) for s in range(4)]
    assert sorted(k for keys in reads for k in keys) == [f"{i:09d}" for i in range(30)]
    assert all(7 <= len(keys) <= 8 for keys in reads)


def test_resampled_sources_are_drawn_by_their_weights(tmp_path):
    """Source a (weight 3, 2 shards) against b (weight 1, 2 shards): a's shards come up 3x as often."""
    a = write_shards(tmp_path / "a", torch.zeros(4, 4, 4, dtype=torch.uint8), ["c"] * 4, shard_size=2)
    b = write_shards(tmp_path / "b", torch.zeros(4, 4, 4, dtype=torch.uint8), ["c"] * 4, shard_size=2)
    spec = StreamSpec(sources=(Source(a, weight=3.0), Source(b, weight=1.0)), image_size=4, channels=1,
                      tokenizer_path="", context_length=8, resampled=True, shuffle_shards=1).with_pieces(1)
    drawn = Counter(group_pieces(spec, 0, 1, g)[0][0] for g in range(4000))
    assert drawn[0] / drawn[1] == pytest.approx(3.0, rel=0.1)


def test_streamed_holdout_is_the_lowest_hashes_and_never_trains(tmp_path):
    kept = tmp_path / "kept.parquet"
    uids = [f"{i:09d}" for i in range(5000)]
    pl.DataFrame({"uid": uids, "caption": ["c"] * 5000, "shard": ["00000.tar"] * 5000}).write_parquet(kept)
    holdout = select_holdout(kept, 100, seed=7)
    naive = pl.DataFrame({"uid": uids}).with_columns(h=pl.col("uid").hash(7)).sort("h", "uid").head(100)
    assert holdout["uid"].to_list() == sorted(naive["uid"].to_list())
    rows = training_rows(kept, holdout, max_rows=None)
    assert rows.rows == 4900 and rows.holdout == frozenset(holdout["uid"])
    capped = training_rows(kept, holdout, max_rows=10)
    assert capped.rows == 10 and capped.last_key == sorted(set(uids) - rows.holdout)[9]


KEPT_WITH_WORKERS = """
import sys, polars as pl, torch
from clipcore.data.stream import Source, StreamSpec
from clipcore.train.batches import step_batches
from tests.clipcore.pairs import write_shards
from clipcore.model.tokenizer import train_tokenizer
root = sys.argv[1]
images = torch.arange(256, dtype=torch.uint8)[:, None, None].expand(-1, 8, 8).contiguous()  # sample i: all pixels i
captions = [f"caption {i}" for i in range(256)]
shards = write_shards(__import__("pathlib").Path(root) / "shards", images, captions, shard_size=64)
pl.DataFrame({"uid": [f"{i:09d}" for i in range(1, 256, 2)], "shard": [f"{i // 64:05d}.tar" for i in range(1, 256, 2)]}
             ).lazy().collect().write_parquet(f"{root}/kept.parquet")  # polars' thread pool runs in the parent
tokenizer = train_tokenizer(captions, vocab_size=300, context_length=8)
tokenizer.save(f"{root}/tok.json")
spec = StreamSpec(sources=(Source(shards, kept=f"{root}/kept.parquet"),), image_size=8, channels=1,
                  tokenizer_path=f"{root}/tok.json", context_length=8, streams=2, augment_scale=None).with_pieces(1)
seen = [int(v) for b in step_batches(spec, 0, 8, 16, 0, 1, [(0, 0)] * 2, workers=2) for v in b.pixels[:, 0, 0, 0]]
print(sorted(seen) == list(range(1, 256, 2)), len(seen))
"""


def test_kept_manifest_read_in_forked_workers_after_the_parent_used_polars(tmp_path):
    """Regression: reading the kept manifest with polars in forked DataLoader workers, after the parent had used
    polars, hung forever. 2 workers read one epoch of a manifest keeping the odd samples: each exactly once, no hang."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", KEPT_WITH_WORKERS, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split() == ["True", "128"]
