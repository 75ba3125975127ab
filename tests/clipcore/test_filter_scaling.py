"""The filter at scale equals independent references: naive set-based exact de-duplication and O(n^2) pairwise
Hamming near duplicates, on random 64-bit hashes with planted near duplicates and big buckets; the partitioned stage
(many shards, tiny partitions, spilled to disk) equals the in-memory filter; its outputs keep their contract; the
streaming quantile equals numpy.quantile."""

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

import clipcore.filter.dedupe as dedupe
from clipcore.config import FilterConfig
from clipcore.filter.quantile import ScoreHistogram, exact_quantile
from clipcore.filter.rules import filter_manifest
from clipcore.filter.stage import KEPT_ROW_GROUP, read_filtered, run_filter


def planted_hashes(rng: np.random.Generator, n: int, max_bits: int) -> np.ndarray:
    """(n,) uint64: random hashes with near duplicates of earlier rows (0..max_bits + 1 bits flipped), a blank-image
    bucket (many identical zeros), many distinct hashes sharing their low 24 bits, and a loose cluster."""
    h = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    for i in rng.choice(np.arange(1, n), n // 8, replace=False):
        flips = rng.choice(64, int(rng.integers(0, max_bits + 2)), replace=False)
        h[i] = h[rng.integers(0, i)] ^ np.uint64(sum(1 << int(f) for f in flips))
    h[rng.choice(n, n // 20, replace=False)] = 0  # blank images
    shared = rng.choice(n, n // 10, replace=False)
    h[shared] = (h[shared] & ~np.uint64(0xFFFFFF)) | np.uint64(0xABCDEF)
    base = rng.integers(0, 2**63, dtype=np.uint64)
    for i in rng.choice(n, n // 10, replace=False):  # a cluster wider than max_bits: some pairs near, some not
        flips = rng.choice(64, int(rng.integers(0, 2 * max_bits + 1)), replace=False)
        h[i] = base ^ np.uint64(sum(1 << int(f) for f in flips))
    return h


def naive_near(h: np.ndarray, max_bits: int) -> np.ndarray:
    """(n,) True where an earlier hash is within max_bits bits: every pair compared."""
    return np.array([i > 0 and bool((np.bitwise_count(h[:i] ^ h[i]) <= max_bits).any()) for i in range(len(h))])


@pytest.mark.parametrize("max_bits", [0, 1, 3, 5])
def test_near_duplicates_equal_the_pairwise_reference(max_bits, monkeypatch):
    rng = np.random.default_rng(max_bits)
    h = planted_hashes(rng, 3000, max_bits)
    want = set(np.flatnonzero(naive_near(h, max_bits)).tolist())
    rows = pl.DataFrame({"rid": np.arange(len(h), dtype=np.uint64), "h": h})
    for bucket, depth in [(dedupe.BUCKET_ROWS, dedupe.MAX_DEPTH), (2, 2), (3, 1), (10**9, 1)]:
        monkeypatch.setattr(dedupe, "BUCKET_ROWS", bucket)  # from all-pairs-in-a-bucket to banding again and again
        monkeypatch.setattr(dedupe, "MAX_DEPTH", depth)
        got = dedupe.near_duplicates(rows, max_bits)["rid"].to_list()
        assert len(got) == len(set(got)) and set(got) == want


def test_blockwise_comparison_equals_the_reference():
    rng = np.random.default_rng(1)
    h = planted_hashes(rng, 2500, 4)
    assert np.array_equal(dedupe.earlier_within(h, 4), naive_near(h, 4))


def test_a_chain_keeps_only_its_first_row():
    """A ~ B ~ C, A and C 4 bits apart: C is a near duplicate of B (which passed every earlier rule) although B is
    rejected; the former sequential rule ("within max_bits of an earlier *kept* row") kept C."""
    a = 0x0123_4567_89AB_CDEF
    hashes = [a, a ^ 0b11, a ^ 0b1111]
    manifest = synthetic([f"a photo number {i}" for i in range(3)], list("abc"), [f"{x:016x}" for x in hashes])
    kept, rejected = filter_manifest(manifest, FilterConfig(near_duplicate_bits=2, languages=()))
    assert kept["uid"].to_list() == ["0"] and rejected["filter_reason"].to_list() == ["near_duplicate_image"] * 2


def synthetic(captions, sha, phash, status=None, uids=None):
    n = len(captions)
    status = status or ["success"] * n
    return pl.DataFrame({
        "uid": uids or [str(i) for i in range(n)], "url": [f"http://x/{i}.jpg" for i in range(n)],
        "caption": captions, "width": [28] * n, "height": [28] * n, "original_width": [28] * n,
        "original_height": [28] * n, "sha256": sha, "phash": phash, "shard": [f"{i // 100:05d}.tar" for i in range(n)],
        "status": status, "error": [None if s == "success" else "http_404" for s in status],
    })


def random_manifest(rng: np.random.Generator, n: int, max_bits: int) -> pl.DataFrame:
    """A manifest in uid order with failed rows, too-short captions, repeated images, captions and hashes."""
    words = ["red", "coat", "bag", "shoe", "blue", "summer", "dress", "hat"]
    captions = [" ".join(rng.choice(words, int(rng.integers(1, 5)))) for _ in range(n)]  # 1-word ones fail
    sha = [f"s{int(x)}" for x in rng.integers(0, int(n * 0.8), n)]  # ~25% repeat an earlier image
    h = planted_hashes(rng, n, max_bits)
    phash = [None if rng.random() < 0.02 else f"{int(x):016x}" for x in h]
    status = ["success" if rng.random() > 0.05 else "failed_to_download" for _ in range(n)]
    return synthetic(captions, sha, phash, status, uids=[f"{i:09d}" for i in range(n)])


def naive_filter(manifest: pl.DataFrame, config: FilterConfig) -> dict[str, str | None]:
    """uid -> reason: the per-row rules from the stage's polars expression, then the duplicate rules one row at a
    time in uid order with Python sets and pairwise Hamming distances."""
    from clipcore.filter.rules import basic_reason

    rows = manifest.sort("uid").with_columns(basic_reason(config).alias("r")).to_dicts()
    reason = {r["uid"]: r["r"] for r in rows}
    passing = [r for r in rows if r["r"] is None] if config.enabled else []  # disabled: no duplicate rule
    if config.dedupe_images:
        seen: set = set()
        for r in passing:
            reason[r["uid"]] = "duplicate_image" if r["sha256"] in seen else None
            seen.add(r["sha256"])
        passing = [r for r in passing if reason[r["uid"]] is None]
    if config.near_duplicate_bits is not None:
        hashed = [r for r in passing if r["phash"] is not None]
        h = np.array([int(r["phash"], 16) for r in hashed], dtype=np.uint64)
        for r, near in zip(hashed, naive_near(h, config.near_duplicate_bits), strict=True):
            reason[r["uid"]] = "near_duplicate_image" if near else None
        passing = [r for r in passing if reason[r["uid"]] is None]
    if config.dedupe_captions:
        seen = set()
        for r in passing:
            reason[r["uid"]] = "duplicate_caption" if r["caption"] in seen else None
            seen.add(r["caption"])
    return reason


def write_shards(manifest: pl.DataFrame, folder, rows_per_shard: int) -> None:
    folder.mkdir()
    for i, start in enumerate(range(0, manifest.height, rows_per_shard)):
        manifest.slice(start, rows_per_shard).write_parquet(folder / f"{i:05d}.parquet")


CONFIGS = [FilterConfig(languages=(), near_duplicate_bits=3, dedupe_captions=True),
           FilterConfig(languages=(), near_duplicate_bits=0, dedupe_images=False),
           FilterConfig(languages=(), dedupe_captions=True), FilterConfig(languages=()),
           FilterConfig(languages=(), enabled=False, near_duplicate_bits=3)]


@pytest.mark.parametrize("config", CONFIGS, ids=["all", "near-only", "exact", "default", "disabled"])
def test_in_memory_and_partitioned_filters_equal_the_naive_reference(config, tmp_path):
    rng = np.random.default_rng(7)
    manifest = random_manifest(rng, 3000, 3)
    want = naive_filter(manifest, config)
    kept, rejected = filter_manifest(manifest, config)
    got = {**dict.fromkeys(kept["uid"]), **dict(zip(rejected["uid"], rejected["filter_reason"], strict=True))}
    assert got == want
    write_shards(manifest, tmp_path / "ingest", 170)
    result = run_filter(tmp_path / "ingest", config, tmp_path / "out", progress=False, part_rows=400)
    kept_p, rejected_p = read_filtered(tmp_path / "out")
    assert kept_p.equals(kept.sort("shard", "uid")) and rejected_p.equals(rejected)
    counts = result.counts
    assert counts["rows_in"] == 3000 == counts["kept"] + counts["rejected"]
    assert sum(counts["rejected_by_reason"].values()) == counts["rejected"]
    assert counts["rejected_by_reason"] == dict(rejected.group_by("filter_reason").len().iter_rows())


def test_shards_whose_uids_interleave_are_ranked_by_uid(tmp_path):
    """Manifests whose uid ranges overlap (not ingest's layout) still judge "earlier" by uid."""
    config = CONFIGS[0]
    manifest = random_manifest(np.random.default_rng(3), 900, 3)
    (tmp_path / "ingest").mkdir()
    for i in range(3):  # shard i holds uids i, i + 3, i + 6, ...
        manifest.gather(list(range(i, 900, 3))).write_parquet(tmp_path / "ingest" / f"{i:05d}.parquet")
    run_filter(tmp_path / "ingest", config, tmp_path / "out", progress=False, part_rows=128)
    kept, rejected = read_filtered(tmp_path / "out")
    want = naive_filter(manifest, config)
    assert dict(zip(rejected["uid"], rejected["filter_reason"], strict=True)) == {
        u: r for u, r in want.items() if r is not None}
    assert sorted(kept["uid"]) == sorted(u for u, r in want.items() if r is None)


def test_outputs_keep_their_contract(tmp_path):
    """kept.parquet in 65,536-row groups sorted by (shard, uid); both files and funnel.json carry one pair id, the
    same on a rerun; the work folder is gone."""
    n = KEPT_ROW_GROUP + 5000
    manifest = synthetic([f"a photo of thing {i}" for i in range(n)], [f"s{i}" for i in range(n)],
                         [f"{i:016x}" for i in range(n)], uids=[f"{i:09d}" for i in range(n)])
    manifest = manifest.with_columns(shard=pl.format("{}.tar", (pl.int_range(pl.len()) // 7000).cast(pl.String)
                                                     .str.zfill(5)))
    (tmp_path / "ingest").mkdir()
    for i, frame in enumerate(manifest.partition_by("shard", maintain_order=True)):
        frame.sample(fraction=1.0, shuffle=True, seed=i).write_parquet(tmp_path / "ingest" / f"{i:05d}.parquet")
    config = FilterConfig(languages=())
    first = run_filter(tmp_path / "ingest", config, tmp_path / "out", progress=False)
    pair = json.loads((tmp_path / "out" / "funnel.json").read_text())["pair"]
    meta = pq.ParquetFile(tmp_path / "out" / "kept.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [KEPT_ROW_GROUP, 5000]
    kept, rejected = read_filtered(tmp_path / "out")
    assert kept.height == n and rejected.height == 0 and kept.equals(kept.sort("shard", "uid"))
    assert kept.columns == manifest.columns and kept.schema == manifest.schema
    second = run_filter(tmp_path / "ingest", config, tmp_path / "out", progress=False, part_rows=1000)
    assert pair == json.loads((tmp_path / "out" / "funnel.json").read_text())["pair"]  # same content, same id
    assert pair == pl.read_parquet_metadata(tmp_path / "out" / "kept.parquet")["clipcore.filter.pair"]
    assert second.counts == first.counts and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "funnel.json", "kept.parquet", "rejected.parquet"]


def test_streaming_quantile_equals_numpy():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 2000))
        scores = [rng.uniform(-1, 1, n), 0.3 + rng.normal(0, 1e-6, n), np.full(n, 0.25),
                  np.r_[rng.uniform(-1.3, 1.3, n), 1.0000001, -1]][trial % 4].astype(np.float32)
        q = float(rng.uniform()) if trial % 5 else [0.0, 1.0, 0.1, 0.5][trial % 4]
        histogram = ScoreHistogram(bins=int(rng.choice([4, 64, 65_536])))

        def batches(scores=scores):
            return (scores[i : i + 97] for i in range(0, len(scores), 97))

        for batch in batches():
            histogram.add(batch)
        got = exact_quantile(histogram, q, batches, max_held=int(rng.choice([1, 5, 1 << 20])))
        assert got == float(np.quantile(scores, q))
        if trial % 4 != 3:  # scores inside [-1, 1]: at most one bin width below the order statistic
            below = np.quantile(scores, q, method="lower") - histogram.approximate_quantile(q)
            assert 0 <= below < 2 / histogram.bins + 1e-9


def test_streaming_quantile_refuses_nan():
    with pytest.raises(ValueError, match="not finite"):
        ScoreHistogram().add(np.array([0.1, np.nan], dtype=np.float32))


def test_partitions_hold_about_part_rows(tmp_path, monkeypatch):
    """No spilled partition read back holds much more than `part_rows` rows: memory follows it, not the input."""
    import clipcore.filter.partitioned as partitioned

    sizes, read = [], partitioned.Spill.read

    def recording(self, part):
        frame = read(self, part)
        sizes.append(frame.height)
        return frame

    monkeypatch.setattr(partitioned.Spill, "read", recording)
    manifest = random_manifest(np.random.default_rng(5), 6000, 3)
    write_shards(manifest, tmp_path / "ingest", 250)
    run_filter(tmp_path / "ingest", CONFIGS[0], tmp_path / "out", progress=False, part_rows=600)
    assert len(sizes) > 40 and 300 < max(sizes) < 1.5 * 600
