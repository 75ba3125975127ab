"""Ingestion throughput: our `clip-pipeline ingest` vs img2dataset, same URL list, same loopback server, one run.

Serves N distinct 256-px JPEGs (Fashion-MNIST images upscaled) from nginx on 127.0.0.1, writes one URL list,
then times both tools end to end (process start to exit) with the same processes/threads and resizing. img2dataset
is installed only here, in its own virtual environment (`benchmarks/.venv-img2dataset`).

    uv run python benchmarks/ingest_vs_img2dataset.py --rows 20000

Prints images/s for each and the ratio, and writes benchmarks/results/ingest_vs_img2dataset.json.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from clipcore.data.fashion_mnist import CLASS_NAMES, read_idx

ROOT = Path(__file__).resolve().parents[1]
I2D_VENV = ROOT / "benchmarks" / ".venv-img2dataset"
I2D_VERSION = "1.47.0"
NGINX_CONF = """daemon on; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; keepalive_requests 100000;
  server {{ listen 127.0.0.1:{port}; root {work}/www; location / {{ try_files $uri =404; }} }} }}
"""


def make_images(work: Path, rows: int, source: Path) -> None:
    """`rows` distinct 256x256 JPEGs under work/www/img/."""
    out = work / "www" / "img"
    if out.exists() and len(list(out.iterdir())) >= rows:
        return
    out.mkdir(parents=True, exist_ok=True)
    images = np.concatenate([read_idx(source / "train-images-idx3-ubyte.gz"),
                             read_idx(source / "t10k-images-idx3-ubyte.gz")])
    for i in range(rows):
        image = Image.fromarray(255 - images[i % len(images)]).resize((256, 256), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=90)
        (out / f"{i}.jpg").write_bytes(buf.getvalue())


BAD_KINDS = {  # every `len(BAD_KINDS)`-th bad row cycles through these; the reason our ingest must record
    "missing": "http_404", "html": "undecodable_image", "truncated": "undecodable_image",
    "ftp": "scheme_not_allowed", "duplicate": "duplicate_url",
}


def url_list(base: str, rows: int, bad_fraction: float, work: Path) -> tuple[pl.DataFrame, dict[str, int]]:
    """The benchmark's URL list: good images plus a `bad_fraction` of web junk, and the reason counts it implies."""
    (work / "www" / "bad").mkdir(parents=True, exist_ok=True)
    (work / "www" / "bad" / "page.jpg").write_bytes(b"<html><body>Error 404</body></html>")
    (work / "www" / "bad" / "truncated.jpg").write_bytes((work / "www" / "img" / "0.jpg").read_bytes()[:600])
    bad_every = round(1 / bad_fraction) if bad_fraction > 0 else rows + 1
    urls, expected, kinds = [], {}, list(BAD_KINDS)
    for i in range(rows):
        url = f"{base}/{i}.jpg"
        if i % bad_every == bad_every - 1:
            kind = kinds[(i // bad_every) % len(kinds)]
            url = {"missing": f"{base}/missing/{i}.jpg", "html": f"{base.rsplit('/', 1)[0]}/bad/page.jpg?{i}",
                   "truncated": f"{base.rsplit('/', 1)[0]}/bad/truncated.jpg?{i}", "ftp": f"ftp://127.0.0.1/{i}.jpg",
                   "duplicate": f"{base}/0.jpg"}[kind]
            expected[BAD_KINDS[kind]] = expected.get(BAD_KINDS[kind], 0) + 1
        urls.append(url)
    captions = [f"a photo of a {CLASS_NAMES[i % 10]}" for i in range(rows)]
    return pl.DataFrame({"url": urls, "caption": captions}), dict(sorted(expected.items(), key=lambda kv: -kv[1]))


def ensure_img2dataset() -> Path:
    exe = I2D_VENV / "bin" / "img2dataset"
    if not exe.exists():
        subprocess.run(["uv", "venv", "-q", "-p", "3.11", str(I2D_VENV)], check=True)
        subprocess.run(["uv", "pip", "install", "-q", "-p", str(I2D_VENV / "bin" / "python"),
                        f"img2dataset=={I2D_VERSION}"], check=True)
    return exe


def timed(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                       env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1",
                            "HOME": str(Path.home())})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("--bad-fraction", type=float, default=0.05, help="share of junk rows (404, HTML, ...)")
    parser.add_argument("--work", default="/tmp/clip-ingest-bench")
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    make_images(work, args.rows, Path(args.source))
    base = f"http://127.0.0.1:{args.port}/img"
    urls = work / "urls.csv"
    table, expected = url_list(base, args.rows, args.bad_fraction, work)
    table.write_csv(urls)
    (work / "nginx.conf").write_text(NGINX_CONF.format(work=work, port=args.port))
    subprocess.run(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], check=True)
    i2d = ensure_img2dataset()
    results = {}
    try:
        for name in ("ours", "img2dataset"):
            shutil.rmtree(work / name, ignore_errors=True)
        ours = timed([sys.executable, "-m", "pipelines.cli", "ingest", "--url-list", str(urls), "--output-dir",
                      str(work / "ours"), "--processes", str(args.processes), "--threads", str(args.threads),
                      "--max-side", "256", "--shard-size", "10000", "--set", "ingest.encode_format=jpg"],
                     work / "ours.log")
        stats = json.loads((work / "ours" / "_stats.json").read_text())
        results["ours"] = {"seconds": ours, "success": stats["success"], "rows": stats["rows"]}
        reconciled = stats["by_error"] == expected and stats["rows"] == args.rows == sum(stats["by_status"].values())
        results["ours"].update(by_error=stats["by_error"], expected_by_error=expected, reconciled=reconciled)
        theirs = timed([str(i2d), "--url_list", str(urls), "--input_format", "csv", "--url_col", "url",
                        "--caption_col", "caption", "--output_format", "webdataset", "--output_folder",
                        str(work / "img2dataset"), "--processes_count", str(args.processes), "--thread_count",
                        str(args.threads), "--image_size", "256", "--resize_mode", "keep_ratio",
                        "--resize_only_if_bigger", "True", "--number_sample_per_shard", "10000",
                        "--enable_wandb", "False", "--distributor", "multiprocessing"], work / "img2dataset.log")
        success = sum(json.loads(p.read_text())["successes"] for p in (work / "img2dataset").glob("*_stats.json"))
        results["img2dataset"] = {"seconds": theirs, "success": success, "rows": args.rows}
    finally:
        subprocess.run(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-s", "stop"], check=False)
    for r in results.values():
        r["images_per_second"] = r["success"] / r["seconds"]
    ratio = results["ours"]["images_per_second"] / results["img2dataset"]["images_per_second"]
    print(f"{'tool':<12} {'rows':>7} {'ok':>7} {'seconds':>8} {'images/s':>9}")
    for name, r in results.items():
        print(f"{name:<12} {r['rows']:>7} {r['success']:>7} {r['seconds']:>8.1f} {r['images_per_second']:>9.1f}")
    print(f"ratio ours / img2dataset: {ratio:.2f}")
    print(f"ours per reason: {results['ours']['by_error']}; reconciles with the list: {results['ours']['reconciled']}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest_vs_img2dataset.json").write_text(json.dumps(
        {"rows": args.rows, "processes": args.processes, "threads": args.threads, "results": results,
         "ratio": ratio, "machine": "2 cores, loopback nginx, 256-px JPEGs"}, indent=2))


if __name__ == "__main__":
    main()
