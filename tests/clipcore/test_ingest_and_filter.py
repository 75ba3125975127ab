"""Ingestion records every row; filtering gives one reason per rejected row and reconciles."""

import io
import json
import tarfile

import numpy as np
import polars as pl
import pytest
from PIL import Image

from clipcore.config import FilterConfig, IngestConfig
from clipcore.filtering import filter_manifest, funnel
from clipcore.ingest import ingest_captions, read_captions_table
from clipcore.shards import load_samples


def png(value: int, size=(28, 28)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def table(tmp_path):
    files = {
        "good.png": png(10), "good2.png": png(20), "dup.png": png(10), "small.png": png(30, (8, 8)),
        "wide.png": png(40, (120, 20)), "empty.png": b"", "html.png": b"<html>404 not found</html>",
        "truncated.png": png(50)[:40],
    }
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
    rows = [
        ("good.png", "a photo of a coat"), ("good2.png", "ok"), ("dup.png", "another photo of it"),
        ("small.png", "a tiny little bag"), ("wide.png", "a very wide scarf"), ("empty.png", "an empty file here"),
        ("html.png", "an error page really"), ("truncated.png", "a truncated download"),
        ("missing.png", "this file does not exist"), ("good2.png", "x" * 2000), ("good2.png", "a b"),
        ("good2.png", None),
    ]
    pl.DataFrame({"path": [r[0] for r in rows], "caption": [r[1] for r in rows]}).write_csv(tmp_path / "captions.csv")
    return tmp_path / "captions.csv"


def test_ingest_records_every_row_with_a_reason(table, tmp_path):
    out = tmp_path / "out"
    manifest = ingest_captions(table, out, IngestConfig(shard_size=2, workers=1, max_caption_chars=1000),
                               progress=False)
    assert manifest.height == 12 and manifest["uid"].n_unique() == 12
    reasons = dict(zip(manifest["source"].str.split("/").list.last(), manifest["reason"], strict=True))
    assert reasons["empty.png"] == "empty_file"
    assert reasons["html.png"] == "undecodable_image"
    assert reasons["truncated.png"] == "undecodable_image"
    assert reasons["missing.png"].startswith("unreadable_file")
    assert manifest.row(9, named=True)["reason"].startswith("caption_too_long")
    success = manifest.filter(pl.col("status") == "success")
    assert success.height == 7
    stats = json.loads((out / "stats.json").read_text())
    assert stats["success"] + stats["failed"] == 12 and sum(stats["failed_by_reason"].values()) == 5
    # shards hold exactly the successful rows, in webdataset layout, 2 per shard
    members = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members += tar.getnames()
    assert len(members) == 7 * 3 and "000000000.png" in members and "000000000.json" in members
    uids, images, captions = load_samples(sorted((out / "shards").glob("*.tar")), success["uid"].to_list(), 28, 1,
                                          progress=False)
    assert images.shape == (7, 1, 28, 28) and captions[0] == "a photo of a coat"
    assert int(images[0].float().mean()) == 10  # pixels survive the round trip


def test_filter_reasons_and_reconciliation(table, tmp_path):
    manifest = ingest_captions(table, tmp_path / "out", IngestConfig(workers=1), progress=False)
    kept, rejected = filter_manifest(manifest, FilterConfig(min_side=16, max_aspect_ratio=3.0))
    reason = dict(zip(rejected["uid"], rejected["filter_reason"], strict=True))
    assert kept["uid"].to_list() == ["000000000"]  # the only clean row
    assert reason["000000001"] == "caption_too_few_words"  # "ok"
    assert reason["000000002"] == "duplicate_image"  # same bytes as good.png, which comes first
    assert reason["000000003"] == "image_too_small"
    assert reason["000000004"] == "aspect_ratio_too_large"
    assert reason["000000005"] == "ingest_failed:empty_file"
    assert reason["000000010"] == "caption_too_few_words"  # "a b"
    assert reason["000000011"] == "caption_too_few_words"  # null caption
    counts = funnel(manifest, kept, rejected)
    assert counts["kept"] + counts["rejected"] == counts["rows_in"] == 12
    assert sum(counts["rejected_by_reason"].values()) == counts["rejected"]


def test_caption_too_short_and_dedupe_off():
    manifest = pl.DataFrame({
        "uid": ["a", "b", "c"], "caption": ["a b cd", "a photo of it", "a photo of it"], "width": [28] * 3,
        "height": [28] * 3, "sha256": ["h1", "h2", "h2"], "status": ["success"] * 3, "reason": [None] * 3,
    })
    kept, rejected = filter_manifest(manifest, FilterConfig(min_chars=7, dedupe_images=False))
    assert rejected["filter_reason"].to_list() == ["caption_too_short"] and kept.height == 2


def test_bad_tables_fail_before_any_work(tmp_path):
    (tmp_path / "t.csv").write_text("file,text\na.png,hello\n")
    with pytest.raises(ValueError, match=r"t.csv: missing column\(s\) \['path', 'caption'\]"):
        read_captions_table(tmp_path / "t.csv")
    (tmp_path / "t.xlsx").write_text("")
    with pytest.raises(ValueError, match="unknown format"):
        read_captions_table(tmp_path / "t.xlsx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_captions_table(tmp_path / "nope.csv")
