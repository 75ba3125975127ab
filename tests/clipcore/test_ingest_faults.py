"""Ingest and filter under faults and hostile input: no row lost or misattributed, no stale shard reused, no
output written for an empty input, no filter output mixed from two runs."""

import gzip
import hashlib
import io
import json
import random
import tarfile

import numpy as np
import polars as pl
import pytest
from PIL import Image

import clipcore.ingest.rows as ingest_rows
from clipcore.config import FilterConfig, IngestConfig
from clipcore.data.layout import read_manifest
from clipcore.filter.rules import filter_manifest
from clipcore.filter.stage import read_filtered, run_filter
from clipcore.ingest.plan import plan_input, read_item
from clipcore.ingest.sources import read_input
from clipcore.ingest.stage import ingest, prepare_rows, shard_is_complete, write_shard
from tests.clipcore.http_fixture import jpeg


def png(value: int, size=(28, 28)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root, count: int):
    """`count` distinct 28x28 PNGs `0.png`.. under `root`."""
    root.mkdir(exist_ok=True)
    for i in range(count):
        (root / f"{i}.png").write_bytes(png(10 * i + 5))
    return root


def write_table(path, paths, captions):
    pl.DataFrame({"path": paths, "caption": captions}).write_csv(path)
    return path


def local_config(table, **kw):
    return IngestConfig(**{"input": str(table), "url_col": "path", "local_paths": True, "encode_format": "png",
                           "processes": 1, "threads": 2, **kw})


def tar_captions(out) -> dict[str, str]:
    """uid -> caption as stored in the shards' `.txt` members."""
    captions = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".txt"):
                    captions[member.name[:-4]] = tar.extractfile(member).read().decode()
    return captions


# ---- 3. no exception from one row escapes its row


def test_an_unexpected_error_stays_in_its_row(tmp_path, monkeypatch):
    """An encoder that raises on one image and a fetcher that raises on one URL (errors no reason foresaw) cost
    those two rows only: each gets `failed_to_process` with the exception's class, the others are written."""
    root = image_folder(tmp_path / "data", 5)
    table = write_table(root / "captions.csv", [f"{i}.png" for i in range(5)], [f"a photo number {i}" for i in
                                                                                 range(5)])
    config = local_config(table)
    real_encode, real_fetch = ingest_rows.encode_image, ingest_rows.Fetcher.fetch

    def encode(image, cfg):
        if image.getpixel((0, 0)) == 15:  # the image of row 1
            raise RuntimeError("encoder bug")
        return real_encode(image, cfg)

    async def fetch(self, url):
        if url == "3.png":
            raise KeyError(url)
        return await real_fetch(self, url)

    monkeypatch.setattr(ingest_rows, "encode_image", encode)
    monkeypatch.setattr(ingest_rows.Fetcher, "fetch", fetch)
    rows = prepare_rows(read_input(config), config)
    (tmp_path / "out").mkdir()
    write_shard(0, rows.to_dicts(), str(tmp_path / "out"), config, str(root))  # in this process: the patches apply
    manifest = read_manifest(tmp_path / "out")
    assert manifest["uid"].to_list() == rows["uid"].to_list()  # one manifest row per input row, in order
    assert manifest["status"].to_list() == ["success", "failed_to_process", "success", "failed_to_process", "success"]
    assert manifest["error"].to_list() == [None, "RuntimeError", None, "KeyError", None]
    assert sorted(tar_captions(tmp_path / "out")) == ["000000000", "000000002", "000000004"]


# ---- 4. the duplicate-URL rule never loses a valid row


def naive_reasons(rows: list[tuple], max_chars: int, pairs: bool = False) -> list[str | None]:
    """The rule written as a loop: a row's own reason first, else `duplicate_url` iff an earlier valid row had its
    URL (with `pairs`, its URL and caption)."""
    seen, out = set(), []
    for url, caption, error in rows:
        key = (url, caption) if pairs else url
        if error is None and caption is None:
            error = "caption_missing"
        elif error is None and len(caption) > max_chars:
            error = "caption_too_long"
        elif error is None and url is not None and key in seen:
            error = "duplicate_url"
        if error is None and url is not None:
            seen.add(key)
        out.append(error)
    return out


def test_duplicate_url_only_after_an_earlier_valid_row():
    rows = [("u1", None, None), ("u1", "a fine caption", None),  # invalid first: the valid one is kept
            ("u2", "x" * 50, None), ("u2", "a fine caption", None),
            ("u3", "caf? bytes", "caption_not_utf8"), ("u3", "a fine caption", None),
            ("u4", "first valid", None), ("u4", "second valid", None), ("u4", None, None)]
    expected = ["caption_missing", None, "caption_too_long", None, "caption_not_utf8", None, None, "duplicate_url",
                "caption_missing"]
    table = pl.DataFrame(rows, schema={"url": pl.String, "caption": pl.String, "source_error": pl.String},
                         orient="row")
    got = prepare_rows(table, IngestConfig(max_caption_chars=20))["source_error"].to_list()
    assert got == expected
    assert got == naive_reasons(rows, 20)
    # and on random tables against the loop
    rng = random.Random(0)
    for _ in range(20):
        rows = [(rng.choice(["a", "b", "c", None]), rng.choice([None, "short", "x" * 30]),
                 rng.choice([None, None, None, "caption_not_utf8"])) for _ in range(30)]
        table = pl.DataFrame(rows, schema={"url": pl.String, "caption": pl.String, "source_error": pl.String},
                             orient="row")
        assert prepare_rows(table, IngestConfig(max_caption_chars=20))["source_error"].to_list() == \
            naive_reasons(rows, 20)
    # COCO: repeats of one URL are several captions of one image, never duplicates
    coco = prepare_rows(table, IngestConfig(max_caption_chars=20), key=None)["source_error"].to_list()
    assert "duplicate_url" not in coco


def write_url_lists(folder, rows: list[tuple], sizes: list[int]) -> None:
    """`rows` (url, caption, None) split over files of `sizes` rows, in name order: csv, parquet, jsonl.gz, csv..."""
    folder.mkdir()
    start = 0
    for i, size in enumerate(sizes):
        part = pl.DataFrame(rows[start:start + size], schema={"url": pl.String, "caption": pl.String,
                                                              "source_error": pl.String}, orient="row").drop(
            "source_error")
        kind = ("csv", "parquet", "jsonl.gz")[i % 3]
        path = folder / f"part-{i:02d}.{kind}"
        if kind == "csv":
            part.write_csv(path)
        elif kind == "parquet":
            part.write_parquet(path)
        else:
            with gzip.open(path, "wb") as f:
                part.write_ndjson(f)
        start += size


def planned_reasons(config, plan_dir) -> list[str | None]:
    """Every row's reason as the workers see it: each work item read from its own slices only."""
    plan = plan_input(config, plan_dir)
    last = -(-plan.rows // config.shard_size) - 1
    return [e for item in plan.items(config.shard_size, 0, last) for e in read_item(item, config)["source_error"]]


@pytest.mark.parametrize("dedupe_urls", [True, False])
def test_no_valid_row_is_a_duplicate_of_an_invalid_one_across_shards_and_files(tmp_path, dedupe_urls):
    """The streaming plan (hashes of valid rows, sorted) gives every row the loop's reason when the rows are spread
    over csv, parquet and jsonl.gz files and read back one shard (7 rows, crossing file ends) at a time; an invalid
    first row of a URL never costs the valid rows after it their place, in the same shard, the next one or the next
    file. dedupe_urls=false rejects only repeated (url, caption) pairs."""
    rng = random.Random(1)
    rows = [("http://h/a", None, None), ("http://h/a", "a fine caption", None),  # invalid first, in one shard
            *[("http://h/b", "x" * 30, None)] * 8,  # only invalid rows of b, through shard 1...
            ("http://h/b", "valid at last", None), ("http://h/b", "valid at last", None)]  # ...then valid ones
    rows += [(rng.choice(["http://h/a", "http://h/b", "http://h/c", "http://h/d", None]),
              rng.choice([None, "short", "other", "x" * 30]), None) for _ in range(120)]
    write_url_lists(tmp_path / "lists", rows, [5, 9, 1, 40, 30, 47])
    config = IngestConfig(input=str(tmp_path / "lists"), max_caption_chars=20, shard_size=7, dedupe_urls=dedupe_urls)
    got = planned_reasons(config, tmp_path / "plan")
    assert got == naive_reasons(rows, 20, pairs=not dedupe_urls)
    assert got[1] is None and got[10] is None and got[11] == "duplicate_url"
    # the plan is reused while the files are unchanged: the same reasons from the cache
    assert planned_reasons(config, tmp_path / "plan") == got
    # the eager form agrees
    table = pl.DataFrame(rows, schema={"url": pl.String, "caption": pl.String, "source_error": pl.String},
                         orient="row")
    eager = prepare_rows(table, config, key="url" if dedupe_urls else "pair")["source_error"].to_list()
    assert eager == got


def test_filter_duplicates_only_count_rows_that_pass():
    """A row rejected by an earlier rule never makes a later valid row with its image, caption or hash a
    duplicate."""
    manifest = pl.DataFrame({
        "uid": ["0", "1", "2", "3", "4", "5"],
        "caption": ["ok", "a photo of a coat", "a photo of a bag", "a photo of a bag", "a photo of a hat",
                    "a photo of a cap"],
        "width": [28, 28, 28, 28, 8, 28], "height": [28] * 6,
        "original_width": [28, 28, 28, 28, 8, 28], "original_height": [28] * 6,
        "sha256": ["h", "h", "i", "j", "k", "l"], "phash": ["0" * 15 + "1", "f" * 16, "0" * 16, "1" * 16,
                                                            "2" * 16, "2" * 15 + "3"],
        "status": ["success", "success", "failed_to_decode", "success", "success", "success"],
        "error": [None, None, "undecodable_image", None, None, None],
    })
    config = FilterConfig(languages=(), dedupe_images=True, dedupe_captions=True, near_duplicate_bits=2)
    kept, rejected = filter_manifest(manifest, config)
    # 0: too few words (not a duplicate source for 1); 2: failed ingest (not one for 3); 4: too small (not for 5)
    assert kept["uid"].to_list() == ["1", "3", "5"]
    assert dict(rejected.select("uid", "filter_reason").iter_rows()) == {
        "0": "caption_too_few_words", "2": "ingest_failed:undecodable_image", "4": "image_too_small"}


# ---- 5. duplicate tar keys reported


def test_duplicate_tar_keys_each_get_a_row(tmp_path):
    """A key used twice in a tar: the first sample is ingested with its own image and caption, the repeat has a row
    rejected `duplicate_key` (with its caption); nothing is dropped."""
    members = [("a.jpg", jpeg(seed=1)), ("a.txt", b"the first sample a"), ("b.jpg", jpeg(seed=2)),
               ("b.txt", b"the only sample b"), ("a.jpg", jpeg(seed=3)), ("a.txt", b"the second sample a"),
               ("c.txt", b"a caption with no image")]
    with tarfile.open(tmp_path / "in.tar", "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    ingest(IngestConfig(input=str(tmp_path / "in.tar"), processes=1, threads=2), tmp_path / "out", progress=False)
    manifest = read_manifest(tmp_path / "out")
    rows = manifest.select("url", "caption", "status", "error").iter_rows()
    got = [(url.split("#")[1], caption, status, error) for url, caption, status, error in rows]
    assert got == [("a.jpg", "the first sample a", "success", None), ("b.jpg", "the only sample b", "success", None),
                   ("a.jpg", "the second sample a", "invalid_row", "duplicate_key"),
                   ("c", "a caption with no image", "invalid_row", "no_image")]
    # the kept sample's image is its own (the first a.jpg), not the repeat's
    assert manifest["sha256"][0] == hashlib.sha256(jpeg(seed=1)).hexdigest()
    assert tar_captions(tmp_path / "out")[manifest["uid"][0]] == "the first sample a"


# ---- 6. empty inputs fail before any file is written


def test_empty_inputs_fail_before_anything_is_written(tmp_path):
    (tmp_path / "header.csv").write_text("path,caption\n")
    (tmp_path / "zero.csv").write_bytes(b"")
    (tmp_path / "zero.jsonl").write_bytes(b"")
    pl.DataFrame(schema={"path": pl.String, "caption": pl.String}).write_parquet(tmp_path / "empty.parquet")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.md").write_text("no images here")
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    (tmp_path / "coco.json").write_text(json.dumps({"images": [], "annotations": []}))
    for name in ("header.csv", "zero.csv", "zero.jsonl", "empty.parquet", "folder", "empty.tar", "coco.json"):
        out = tmp_path / f"out-{name}"
        with pytest.raises(ValueError, match=name):
            ingest(local_config(tmp_path / name), out, progress=False)
        assert not out.exists(), name


# ---- 7. shards carry a fingerprint of their input slice and settings


def test_a_changed_input_is_redone_never_reused(tmp_path):
    root = image_folder(tmp_path / "data", 6)
    paths = [f"{i}.png" for i in range(6)]
    out = tmp_path / "out"
    first = write_table(root / "first.csv", paths, [f"first caption {i}" for i in range(6)])
    stats = ingest(local_config(first, shard_size=2, data_root=str(root)), out, progress=False)
    assert stats["shards_written"] == 3

    # another csv, same row count, new captions: every shard is redone and holds the new captions
    second = write_table(root / "second.csv", paths, [f"second caption {i}" for i in range(6)])
    stats = ingest(local_config(second, shard_size=2, data_root=str(root)), out, progress=False)
    assert stats["shards_written"] == 3
    expected = {f"{i:09d}": f"second caption {i}" for i in range(6)}
    assert dict(read_manifest(out).select("uid", "caption").iter_rows()) == expected == tar_captions(out)

    # unchanged input: nothing rewritten, byte for byte; speed settings do not count as changes
    before = {p.name: p.read_bytes() for p in out.glob("0*")}
    stats = ingest(local_config(second, shard_size=2, data_root=str(root), threads=3, timeout=1.0), out,
                   progress=False)
    assert stats["shards_written"] == 0 and {p.name: p.read_bytes() for p in out.glob("0*")} == before
    # a setting that shapes the content does
    stats = ingest(local_config(second, shard_size=2, data_root=str(root), max_side=16), out, progress=False)
    assert stats["shards_written"] == 3 and read_manifest(out)["width"].to_list() == [16] * 6

    # a shorter input: the shards past its end are deleted, the manifest is exactly the new rows
    third = write_table(root / "third.csv", paths[:3], [f"third caption {i}" for i in range(3)])
    stats = ingest(local_config(third, shard_size=2, data_root=str(root)), out, progress=False)
    assert stats["shards"] == 2 and stats["rows"] == 3
    assert sorted(p.name for p in out.glob("0*")) == ["00000.parquet", "00000.tar", "00001.parquet", "00001.tar"]
    assert read_manifest(out)["caption"].to_list() == [f"third caption {i}" for i in range(3)]


def test_a_crash_after_the_tar_leaves_no_manifest_beside_it(tmp_path, monkeypatch):
    """A shard rewrite that dies between its new tar and its new manifest must not leave the old manifest, which
    would describe other samples than the tar now holds."""
    root = image_folder(tmp_path / "data", 2)
    out = tmp_path / "out"
    first = write_table(root / "a.csv", ["0.png", "1.png"], ["caption one here", "caption two here"])
    ingest(local_config(first, data_root=str(root)), out, progress=False)
    second = local_config(write_table(root / "b.csv", ["1.png", "0.png"], ["other one", "other two"]),
                          data_root=str(root))

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed after the tar")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", die)
    rows = prepare_rows(read_input(second), second)
    with pytest.raises(KeyboardInterrupt):
        write_shard(0, rows.to_dicts(), str(out), second, str(root), "new")
    assert (out / "00000.tar").exists() and not (out / "00000.parquet").exists()
    assert not shard_is_complete(out, 0, "new")


# ---- 8. the filter's outputs are published as one pair


@pytest.fixture
def shards(tmp_path):
    root = image_folder(tmp_path / "data", 4)
    table = write_table(root / "captions.csv", [f"{i}.png" for i in range(4)],
                        [f"a photo of thing number {i}" for i in range(4)])
    ingest(local_config(table, data_root=str(root)), tmp_path / "shards", progress=False)
    return tmp_path / "shards"


def test_filter_outputs_are_never_a_mix_of_two_runs(shards, tmp_path, monkeypatch):
    out = tmp_path / "filtered"
    all_kept = FilterConfig(languages=())
    run_filter(shards, all_kept, out, progress=False)
    kept, rejected = read_filtered(out)
    assert kept.height == 4 and rejected.height == 0

    # killed while writing (the file half written): the published pair is the previous one, whole
    strict = FilterConfig(languages=(), min_words=7)  # rejects every caption (6 words)
    real_write = pl.DataFrame.write_parquet

    def half_write(frame, path, **kwargs):
        open(path, "wb").close()
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_write)
    with pytest.raises(KeyboardInterrupt):
        run_filter(shards, strict, out, progress=False)
    monkeypatch.setattr(pl.DataFrame, "write_parquet", real_write)
    kept, rejected = read_filtered(out)
    assert kept.height == 4 and rejected.height == 0
    assert not list(out.glob(".writing-*"))

    # killed between two renames: the reader refuses the mixed folder instead of returning it
    import clipcore.filter.stage as filter_stage

    real_replace, calls = filter_stage.os.replace, []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed between renames")
        real_replace(src, dst)

    monkeypatch.setattr(filter_stage.os, "replace", replace_once)
    with pytest.raises(KeyboardInterrupt):
        run_filter(shards, strict, out, progress=False)
    monkeypatch.setattr(filter_stage.os, "replace", real_replace)
    with pytest.raises(ValueError, match="not from one filter run"):
        read_filtered(out)

    # the next complete run publishes a consistent pair again, and leftovers of killed runs are gone
    (out / ".writing-killed").mkdir()
    result = run_filter(shards, strict, out, progress=False)
    kept, rejected = read_filtered(out)
    assert kept.height == 0 and rejected["uid"].to_list() == result.rejected["uid"].to_list()
    assert sorted(p.name for p in out.iterdir()) == ["funnel.json", "kept.parquet", "rejected.parquet"]


def test_sidecar_captions_stay_inside_the_folder(tmp_path):
    """A sidecar `.txt` symlinked to a secret outside the folder, or to a device, never becomes a caption."""
    import os

    folder, secret = tmp_path / "folder", tmp_path / "secret.txt"
    folder.mkdir()
    secret.write_text("the password is hunter2")
    for i in range(4):
        (folder / f"{i}.png").write_bytes(png(i * 40))
    (folder / "0.txt").write_text("a caption inside the folder")
    (folder / "1.txt").symlink_to(secret)
    (folder / "2.txt").symlink_to("/dev/zero")
    os.mkfifo(folder / "3.txt")
    table = read_input(IngestConfig(input=str(folder)))
    assert table["caption"].to_list() == ["a caption inside the folder", None, None, None]
    assert table["source_error"].to_list() == [None, "caption_outside_data_root", "caption_outside_data_root",
                                               "caption_not_a_regular_file"]
    assert "hunter2" not in str(table.to_dicts())
