"""Web ingestion against a real loopback HTTP server: every bad case gets its recorded status and reason."""

import asyncio
import csv
import gzip
import io
import json
import tarfile
import time

import polars as pl
import pytest

from clipcore.config import IngestConfig
from clipcore.data.layout import read_manifest
from clipcore.ingest.fetch import Fetcher, FetchError, redirect_target
from clipcore.ingest.sources import read_source
from clipcore.ingest.stage import ingest
from tests.clipcore.http_fixture import Handler, ImageServer, closed_port, jpeg

CONFIG = dict(timeout=1.0, retries=1, max_redirects=3, max_bytes=2_000_000, max_pixels=4_000_000, max_side=128,
              processes=1, threads=8, shard_size=8)

# (url path or full url, caption, expected status, expected error)
CASES = [
    ("/good/1.jpg", "a photo of a red coat", "success", None),
    ("/404", "a missing image here", "failed_to_download", "http_404"),
    ("/500", "a broken server here", "failed_to_download", "http_500"),
    ("/flaky", "served on the second try", "success", None),
    ("/slow", "a slow server here", "failed_to_download", "timeout"),
    ("/loop", "a redirect loop here", "failed_to_download", "too_many_redirects"),
    ("/redirect", "a redirected image here", "success", None),
    ("/empty", "a zero byte body", "failed_to_decode", "empty_file"),
    ("/html", "html served as jpeg", "failed_to_decode", "undecodable_image"),
    ("/truncated", "a truncated jpeg file", "failed_to_decode", "undecodable_image"),
    ("/bomb", "a decompression bomb here", "failed_to_decode", "too_many_pixels"),
    ("/big", "a body that is too big", "failed_to_download", "too_large"),
    ("/big-chunked", "too big and of no stated length", "failed_to_download", "too_large"),
    ("/reset", "a reset connection here", "failed_to_download", "connection_reset"),
    ("/not-http", "a server that does not speak http", "failed_to_download", "bad_response"),
    ("/redirect-file", "a redirect to a local file", "failed_to_download", "redirect_scheme_not_allowed"),
    ("/redirect-ftp", "a redirect to an ftp url", "failed_to_download", "redirect_scheme_not_allowed"),
    ("/redirect-no-host", "a redirect to no host", "failed_to_download", "redirect_malformed_url"),
    ("/redirect-garbage", "a redirect to garbage", "failed_to_download", "redirect_malformed_url"),
    ("/redirect-none", "a redirect with no target", "failed_to_download", "redirect_without_location"),
    ("/drip", "one byte every 1.5 seconds", "failed_to_download", "timeout"),
    ("/bad-gzip", "a body that is not gzip", "failed_to_download", "bad_content_encoding"),
    ("REFUSED", "nothing listens there", "failed_to_download", "connection_refused"),
    ("file:///etc/passwd", "a local file url", "failed_to_download", "scheme_not_allowed"),
    ("ftp://example.com/a.jpg", "an ftp url here", "failed_to_download", "scheme_not_allowed"),
    ("not a url at all", "a malformed url here", "failed_to_download", "malformed_url"),
    ("http://", "an url without host", "failed_to_download", "malformed_url"),
    ("/good/1.jpg", "the same url again", "invalid_row", "duplicate_url"),
    ("/good/2.jpg", "x" * 5000, "invalid_row", "caption_too_long"),
    ("/good/4.jpg", None, "invalid_row", "caption_missing"),
    ("/good/5.jpg", b"caf\xe9 latin-1 bytes", "invalid_row", "caption_not_utf8"),
]


def write_csv(path, base, cases):
    port = closed_port()
    lines = [b"url,caption,license"]
    for i, (url, caption, _, _) in enumerate(cases):
        full = f"http://127.0.0.1:{port}/x.jpg" if url == "REFUSED" else (base + url if url.startswith("/") else url)
        if caption is None:
            text = b""
        elif isinstance(caption, bytes):
            text = caption
        else:
            text = caption.encode()
        lines.append(full.encode() + b"," + text + b"," + f"cc-by-{i}".encode())
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_every_bad_case_has_its_reason(tmp_path):
    with ImageServer() as base:
        write_csv(tmp_path / "urls.csv", base, CASES)
        stats = ingest(IngestConfig(input=str(tmp_path / "urls.csv"), **CONFIG), tmp_path / "out", progress=False)
    manifest = read_manifest(tmp_path / "out")
    assert manifest.height == len(CASES) == stats["rows"]
    for row, (url, _, status, error) in zip(manifest.iter_rows(named=True), CASES, strict=True):
        assert (row["status"], row["error"]) == (status, error), url
    good = manifest.row(0, named=True)
    assert (good["original_width"], good["original_height"]) == (300, 200)
    assert (good["width"], good["height"]) == (128, 85)  # aspect ratio kept
    assert good["license"] == "cc-by-0"  # extra columns are carried through
    assert len(good["phash"]) == 16 and len(good["sha256"]) == 64
    # the stats reconcile with the input, per status and per reason
    assert sum(stats["by_status"].values()) == len(CASES)
    assert stats["by_error"]["malformed_url"] == 2 and stats["by_error"]["undecodable_image"] == 2
    assert sum(stats["by_error"].values()) == stats["failed"]
    assert json.loads((tmp_path / "out" / "_stats.json").read_text())["rows"] == len(CASES)
    assert any(ua.startswith("clip-pipeline/") for ua in Handler.user_agents)
    # shards hold exactly the successful rows
    names = []
    for shard in sorted((tmp_path / "out").glob("*.tar")):
        with tarfile.open(shard) as tar:
            names += [n for n in tar.getnames() if n.endswith(".jpg")]
    assert len(names) == stats["success"] == 3


def fetch_reason(fetcher: Fetcher, url: str) -> tuple[str, float]:
    """(the FetchError reason, or `ok`; seconds the fetch took)."""
    async def fetch() -> str:
        async with fetcher:
            try:
                await fetcher.fetch(url)
            except FetchError as err:
                return err.reason
            return "ok"

    start = time.monotonic()
    reason = asyncio.run(fetch())
    return reason, time.monotonic() - start


def test_drip_fed_body_stops_at_the_total_deadline():
    """A server sending one byte every 1.5 s passes every per-read timeout; the whole fetch still ends on time:
    by default after `timeout` x (`retries` + 1), or after `total_timeout` when that is set."""
    with ImageServer() as base:
        reason, seconds = fetch_reason(Fetcher(IngestConfig(timeout=2.0, retries=0)), base + "/drip")
        assert reason == "timeout" and 1.9 < seconds < 3.0
        reason, seconds = fetch_reason(Fetcher(IngestConfig(timeout=2.0, retries=2, total_timeout=0.5)),
                                       base + "/drip")
        assert reason == "timeout" and seconds < 1.2
        # a good image is not cut short by the deadline's timer
        assert fetch_reason(Fetcher(IngestConfig(timeout=2.0, total_timeout=0.5)), base + "/good/2.jpg")[0] == "ok"


def test_every_redirect_target_passes_the_scheme_allow_list():
    assert redirect_target("http://a.example/x/y.jpg", "/z.jpg") == "http://a.example/z.jpg"
    assert redirect_target("http://a.example/x/y.jpg", "z.jpg") == "http://a.example/x/z.jpg"
    assert redirect_target("https://a.example/y.jpg", "//b.example/z.jpg") == "https://b.example/z.jpg"
    assert redirect_target("http://a.example/y.jpg", "HTTPS://b.example/z.jpg") == "HTTPS://b.example/z.jpg"
    refused = {"file:///etc/passwd": "redirect_scheme_not_allowed", "ftp://b.example/z.jpg":
               "redirect_scheme_not_allowed", "gopher://b.example/": "redirect_scheme_not_allowed",
               "http://": "redirect_malformed_url", "http://[::1": "redirect_malformed_url",
               "a b c": "redirect_malformed_url", "": "redirect_without_location", None: "redirect_without_location"}
    for location, reason in refused.items():
        with pytest.raises(FetchError) as err:
            redirect_target("http://a.example/y.jpg", location)
        assert err.value.reason == reason, location
    # a redirect to a local file, fetched for real, is that row's reason and never read the file
    with ImageServer() as base:
        assert fetch_reason(Fetcher(IngestConfig()), base + "/redirect-file")[0] == "redirect_scheme_not_allowed"
        assert fetch_reason(Fetcher(IngestConfig()), base + "/redirect")[0] == "ok"  # relative, same host
        assert fetch_reason(Fetcher(IngestConfig(max_redirects=0)), base + "/redirect")[0] == "too_many_redirects"


@pytest.mark.parametrize("threads", [1, 4])
def test_each_worker_keeps_threads_downloads_in_flight(tmp_path, threads):
    """One worker, 12 rows from a server that holds each request 0.3 s: at most `threads` requests are ever open at
    once, and that many are (the event loop overlaps them as a thread pool would)."""
    cases = [(f"/held/{i}.jpg", f"a held image number {i}", "success", None) for i in range(12)]
    Handler.most_in_flight = 0
    with ImageServer() as base:
        write_csv(tmp_path / "urls.csv", base, cases)
        config = IngestConfig(input=str(tmp_path / "urls.csv"), **{**CONFIG, "threads": threads, "shard_size": 12})
        stats = ingest(config, tmp_path / "out", progress=False)
    assert stats["success"] == 12 and Handler.most_in_flight == threads


def test_resume_skips_complete_shards_and_redoes_partial_ones(tmp_path):
    cases = [(f"/good/{i}.jpg", f"a good image number {i}", "success", None) for i in range(20)]
    with ImageServer() as base:
        write_csv(tmp_path / "urls.csv", base, cases)
        config = IngestConfig(input=str(tmp_path / "urls.csv"), **CONFIG)
        first = ingest(config, tmp_path / "out", progress=False)
        before = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("0*")}
        (tmp_path / "out" / "00001.parquet").unlink()  # a crash between the tar and the manifest
        (tmp_path / "out" / "00002.tar").write_bytes(b"partial")
        (tmp_path / "out" / "00002.parquet").unlink()
        second = ingest(config, tmp_path / "out", progress=False)
    assert first["shards"] == 3 and first["shards_written"] == 3 and second["shards_written"] == 2
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("0*")}
    assert after == before  # byte-identical: same shards, same manifests
    assert second["success"] == 20


def test_other_input_formats(tmp_path):
    with ImageServer() as base:
        rows = [{"link": f"{base}/good/{i}.jpg", "text": f"a jsonl row number {i}", "score": i} for i in range(3)]
        with gzip.open(tmp_path / "urls.jsonl.gz", "wt") as f:
            f.write("\n".join(json.dumps(r) for r in rows))
        pl.DataFrame(rows).write_parquet(tmp_path / "urls.parquet")
        with open(tmp_path / "urls.tsv", "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(["link", "text"])
            writer.writerows([[r["link"], r["text"]] for r in rows])
        for name in ("urls.jsonl.gz", "urls.parquet", "urls.tsv"):
            config = IngestConfig(input=str(tmp_path / name), url_col="link", caption_col="text", **CONFIG)
            stats = ingest(config, tmp_path / f"out-{name}", progress=False)
            assert stats["success"] == 3, name
        assert read_manifest(tmp_path / "out-urls.parquet")["score"].to_list() == [0, 1, 2]


def test_folder_coco_and_webdataset_inputs(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg(seed=i))
    (folder / "0.txt").write_text("a caption from a sidecar")
    (folder / "1.txt").write_bytes(b"\xff\xfe not utf-8")
    manifest = read_manifest_after(tmp_path, IngestConfig(input=str(folder), **CONFIG), "out-folder")
    assert manifest["error"].to_list() == [None, "caption_not_utf8", "caption_missing"]

    coco = {"images": [{"id": 1, "file_name": "0.jpg"}, {"id": 2, "file_name": "2.jpg"}],
            "annotations": [{"image_id": 1, "caption": "first caption of one"},
                            {"image_id": 1, "caption": "second caption of one"},
                            {"image_id": 2, "caption": "caption of image two"},
                            {"image_id": 9, "caption": "caption of nothing at all"}]}
    (folder / "captions.json").write_text(json.dumps(coco))
    manifest = read_manifest_after(tmp_path, IngestConfig(input=str(folder / "captions.json"), **CONFIG), "out-coco")
    assert manifest["status"].to_list() == ["success", "success", "success", "invalid_row"]
    assert manifest["error"][3] == "unknown_image_id"

    shard = tmp_path / "in.tar"
    with tarfile.open(shard, "w") as tar:
        for name, payload in [("a.jpg", jpeg(seed=1)), ("a.txt", b"a caption in a tar"),
                              ("/abs/evil.jpg", jpeg(seed=2)), ("../escape.jpg", jpeg(seed=3)),
                              ("b.webp", b"not really webp"), ("b.txt", b"a bad image in a tar")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    manifest = read_manifest_after(tmp_path, IngestConfig(input=str(shard), **CONFIG), "out-tar")
    by_url = {u.split("#")[1]: (s, e) for u, s, e in manifest.select("url", "status", "error").iter_rows()}
    assert by_url["/abs/evil.jpg"] == ("invalid_row", "unsafe_tar_member")
    assert by_url["../escape.jpg"] == ("invalid_row", "unsafe_tar_member")
    assert by_url["a.jpg"] == ("success", None)
    assert by_url["b.webp"] == ("failed_to_decode", "undecodable_image")
    assert not (tmp_path / "escape.jpg").exists()


def read_manifest_after(tmp_path, config, name):
    ingest(config, tmp_path / name, progress=False)
    return read_manifest(tmp_path / name)


def test_structural_errors_name_the_file_and_column(tmp_path):
    (tmp_path / "urls.csv").write_text("link,caption\nhttp://x/a.jpg,hello there you\n")
    with pytest.raises(ValueError, match=r"urls.csv: no url column 'url' \(--url-col, ingest.url_col\)"):
        read_source(tmp_path / "urls.csv")
    with pytest.raises(ValueError, match=r"urls.csv: no caption column 'text'"):
        read_source(tmp_path / "urls.csv", url_col="link", caption_col="text")
    (tmp_path / "urls.xlsx").write_text("")
    with pytest.raises(ValueError, match="cannot tell the input format"):
        read_source(tmp_path / "urls.xlsx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_source(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="unknown input format"):
        read_source(tmp_path / "urls.csv", fmt="xml")
