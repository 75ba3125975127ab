"""Ingestion throughput: our `clip-pipeline ingest` vs img2dataset, same URL list, same loopback server.

Serves N distinct JPEGs (Fashion-MNIST images upscaled: 256x256 by default, `--sides 640-1024` for web-sized
photos of random sides in that range with a color tint and noise) from nginx on 127.0.0.1, writes one URL list,
then times both tools end to end (process start to exit) with the same processes/threads and resizing (largest side
to `--max-side`, never upscaled; JPEG quality 95 for both). A JPEG that already fits is stored as it came by both
(our default `ingest.skip_reencode`, img2dataset's `--skip_reencode True`); `--reencode` makes both encode it again.
The two tools run alternately, `--repeats` times each (the order flips every repeat), so that load from anything else
on the machine falls on both; medians are compared.
CPU time (user + sys) of each tool's process tree is recorded too. img2dataset is installed only here, in its own
virtual environment (`benchmarks/.venv-img2dataset`).

    uv run python benchmarks/ingest_vs_img2dataset.py --rows 20000
    uv run python benchmarks/ingest_vs_img2dataset.py --rows 5000 --sides 640-1024
    uv run python benchmarks/ingest_vs_img2dataset.py --rows 20000 --reencode

Prints images/s for each and the ratio of the medians, and writes the list's entry (keyed by its rows and sides, and
`-reencode` with that flag) in
benchmarks/results/ingest_vs_img2dataset.json.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import resource
import shutil
import statistics
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


def parse_sides(sides: str) -> tuple[int, int]:
    low, _, high = sides.partition("-")
    return int(low), int(high or low)


def make_images(out: Path, rows: int, source: Path, sides: tuple[int, int]) -> None:
    """`rows` distinct JPEGs `0.jpg`.. under `out`: sides x sides gray ones for a single size, else random sides in
    the range (each side drawn alone), a color tint and mild noise, so they compress about as web photos do."""
    if out.exists() and len(list(out.iterdir())) >= rows:
        return
    out.mkdir(parents=True, exist_ok=True)
    images = np.concatenate([read_idx(source / "train-images-idx3-ubyte.gz"),
                             read_idx(source / "t10k-images-idx3-ubyte.gz")])
    rng = np.random.default_rng(0)
    for i in range(rows):
        image = Image.fromarray(255 - images[i % len(images)])
        if sides[0] == sides[1]:
            image = image.resize((sides[0], sides[0]), Image.Resampling.BICUBIC).convert("RGB")
        else:
            size = tuple(int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
            gray = np.asarray(image.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)[..., None]
            tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
            noisy = gray * tint + rng.normal(0, 6, (size[1], size[0], 3)).astype(np.float32)
            image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        (out / f"{i}.jpg").write_bytes(buf.getvalue())


BAD_KINDS = {  # every `len(BAD_KINDS)`-th bad row cycles through these; the reason our ingest must record
    "missing": "http_404", "html": "undecodable_image", "truncated": "undecodable_image",
    "ftp": "scheme_not_allowed", "duplicate": "duplicate_url",
}


def url_list(base: str, rows: int, bad_fraction: float, work: Path,
             images: Path) -> tuple[pl.DataFrame, dict[str, int]]:
    """The benchmark's URL list: good images plus a `bad_fraction` of web junk, and the reason counts it implies."""
    (work / "www" / "bad").mkdir(parents=True, exist_ok=True)
    (work / "www" / "bad" / "page.jpg").write_bytes(b"<html><body>Error 404</body></html>")
    (work / "www" / "bad" / "truncated.jpg").write_bytes((images / "0.jpg").read_bytes()[:600])
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


def timed(cmd: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree: user + sys) of one run of `cmd`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                       env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1",
                            "HOME": str(Path.home())})
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_ours(args, urls: Path, out: Path, expected: dict[str, int]) -> dict:
    for folder in (out, out.with_suffix(".plan")):  # the input plan too: every run starts cold
        shutil.rmtree(folder, ignore_errors=True)
    seconds, cpu = timed([sys.executable, "-m", "pipelines.cli", "ingest", "--url-list", str(urls), "--output-dir",
                          str(out), "--processes", str(args.processes), "--threads", str(args.threads),
                          "--max-side", str(args.max_side), "--shard-size", str(args.shard_size), "--set",
                          "ingest.encode_format=jpg", "--set",
                          f"ingest.skip_reencode={str(not args.reencode).lower()}"],
                         out.with_suffix(".log"))
    stats = json.loads((out / "_stats.json").read_text())
    reconciled = stats["by_error"] == expected and stats["rows"] == args.rows == sum(stats["by_status"].values())
    return {"seconds": seconds, "cpu_seconds": cpu, "success": stats["success"], "rows": stats["rows"],
            "by_error": stats["by_error"], "reconciled": reconciled}


def run_img2dataset(args, urls: Path, out: Path, exe: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    # keep_ratio_largest: the largest side to image_size, as our max_side (keep_ratio fits the smallest side)
    seconds, cpu = timed([str(exe), "--url_list", str(urls), "--input_format", "csv", "--url_col", "url",
                          "--caption_col", "caption", "--output_format", "webdataset", "--output_folder", str(out),
                          "--processes_count", str(args.processes), "--thread_count", str(args.threads),
                          "--image_size", str(args.max_side), "--resize_mode", "keep_ratio_largest",
                          "--resize_only_if_bigger", "True", "--encode_quality", "95",
                          "--number_sample_per_shard", str(args.shard_size), "--enable_wandb", "False",
                          "--skip_reencode", str(not args.reencode),
                          "--distributor", "multiprocessing"], out.with_suffix(".log"))
    success = sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))
    return {"seconds": seconds, "cpu_seconds": cpu, "success": success, "rows": args.rows}


def cpu_by_step(base: str, rows: int, args) -> dict[str, int]:
    """CPU microseconds per row of each step of ours, one row at a time on one event loop, the library's own functions
    against the server: the fetch, the image work (`process_image`: sha256, decode, phash, resize and encode), the
    sample's tar write."""
    import asyncio
    import os

    from clipcore.config import IngestConfig
    from clipcore.ingest.fetch import Fetcher
    from clipcore.ingest.rows import process_image
    from clipcore.ingest.shard_writer import ShardWriter

    config = IngestConfig(max_side=args.max_side, encode_format="jpg", skip_reencode=not args.reencode)
    spent = dict.fromkeys(["fetch", "image", "tar"], 0.0)
    urls = [f"{base}/{i}.jpg" for i in range(rows)]

    async def run() -> None:
        async with Fetcher(config) as fetcher:
            for url in urls[:20]:
                await fetcher.fetch(url)  # connections and caches warm
            with open(os.devnull, "wb") as null, ShardWriter(null) as writer:
                for i, url in enumerate(urls):
                    marks = [time.thread_time()]
                    payload = await fetcher.fetch(url)
                    marks.append(time.thread_time())
                    fields, (stored, ext) = process_image(payload, config)
                    marks.append(time.thread_time())
                    writer.write(f"{i:09d}", {ext: stored, "txt": b"a caption", "json": json.dumps(fields).encode()})
                    marks.append(time.thread_time())
                    for step, (a, b) in zip(spent, itertools.pairwise(marks), strict=True):
                        spent[step] += b - a

    asyncio.run(run())
    result = {step: round(seconds / rows * 1e6) for step, seconds in spent.items()}
    return {**result, "sum": sum(result.values())}


def summarize(runs: list[dict]) -> dict:
    """Medians over the repeats, every run kept."""
    seconds = statistics.median(r["seconds"] for r in runs)
    cpu = statistics.median(r["cpu_seconds"] for r in runs)
    success = runs[0]["success"]
    return {"median_seconds": round(seconds, 2), "median_images_per_second": round(success / seconds, 1),
            "median_cpu_ms_per_row": round(cpu / runs[0]["rows"] * 1000, 3), "success": success,
            "runs": [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each tool, alternating")
    parser.add_argument("--sides", default="256", help="image side in px, or a range LOW-HIGH drawn per side")
    parser.add_argument("--max-side", type=int, default=256, help="largest side after resizing (both tools)")
    parser.add_argument("--reencode", action="store_true",
                        help="encode JPEGs that already fit again (both tools) instead of storing them as they came")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("--bad-fraction", type=float, default=0.05, help="share of junk rows (404, HTML, ...)")
    parser.add_argument("--work", default="/tmp/clip-ingest-bench")
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--note", default="", help="said in the results entry, e.g. how busy the machine was")
    parser.add_argument("--breakdown-rows", type=int, default=0,
                        help="also time each step of ours on this many rows, one thread (cpu_by_step)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sides = parse_sides(args.sides)
    label = f"{args.rows}x{args.sides}px" + ("-reencode" if args.reencode else "")
    images = work / "www" / f"img-{args.sides}"
    make_images(images, args.rows, Path(args.source), sides)
    base = f"http://127.0.0.1:{args.port}/img-{args.sides}"
    urls = work / f"urls-{args.sides}.csv"
    table, expected = url_list(base, args.rows, args.bad_fraction, work, images)
    table.write_csv(urls)
    (work / "nginx.conf").write_text(NGINX_CONF.format(work=work, port=args.port))
    subprocess.run(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], check=True)
    i2d = ensure_img2dataset()
    runs: dict[str, list[dict]] = {"ours": [], "img2dataset": []}
    try:
        for repeat in range(args.repeats):
            order = ("ours", "img2dataset") if repeat % 2 == 0 else ("img2dataset", "ours")
            for name in order:
                out = work / name
                result = (run_ours(args, urls, out, expected) if name == "ours"
                          else run_img2dataset(args, urls, out, i2d))
                runs[name].append(result)
                print(f"repeat {repeat + 1}/{args.repeats} {name:<12} {result['seconds']:7.2f} s  "
                      f"cpu {result['cpu_seconds']:7.2f} s  ok {result['success']}", flush=True)
        breakdown = cpu_by_step(base, args.breakdown_rows, args) if args.breakdown_rows else None
    finally:
        subprocess.run(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-s", "stop"], check=False)
    results = {name: summarize(r) for name, r in runs.items()}
    results["ours"].update(by_error=runs["ours"][0]["by_error"], expected_by_error=expected,
                           reconciled=all(r["reconciled"] for r in runs["ours"]))
    ratio = results["ours"]["median_images_per_second"] / results["img2dataset"]["median_images_per_second"]
    print(f"{'tool':<12} {'rows':>7} {'ok':>7} {'median s':>9} {'images/s':>9} {'cpu ms/row':>11}")
    for name, r in results.items():
        print(f"{name:<12} {args.rows:>7} {r['success']:>7} {r['median_seconds']:>9.2f} "
              f"{r['median_images_per_second']:>9.1f} {r['median_cpu_ms_per_row']:>11.3f}")
    print(f"ratio ours / img2dataset (median images/s): {ratio:.2f}")
    print(f"ours per reason: {results['ours']['by_error']}; reconciles with the list: {results['ours']['reconciled']}")
    path = ROOT / "benchmarks" / "results" / "ingest_vs_img2dataset.json"
    path.parent.mkdir(exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else {}
    lists = previous.get("lists", {}) if isinstance(previous.get("lists"), dict) else {}
    lists[label] = {"rows": args.rows, "processes": args.processes, "threads": args.threads,
                    "repeats": args.repeats, "max_side": args.max_side, "shard_size": args.shard_size,
                    "skip_reencode": not args.reencode,
                    "results": results, "ratio": round(ratio, 3), "date": time.strftime("%Y-%m-%d %H:%M"),
                    "note": args.note}
    if breakdown:
        print(f"ours, CPU us per row by step (one thread): {breakdown}")
        lists[label]["per_row_cpu_us_by_step"] = breakdown
    path.write_text(json.dumps({"machine": "2 cores (shared), loopback nginx (1 worker)", "lists": lists},
                               indent=2) + "\n")


if __name__ == "__main__":
    main()
