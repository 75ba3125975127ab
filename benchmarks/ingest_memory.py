"""Coordinator and worker memory of ingest against the URL list's size (issue 14 item 1): a synthetic list of 1M, 3M
and 10M rows (a folder of parquet files, loopback URLs with distinct query strings over a few thousand tiny images,
1% repeated URLs, 0.5% captions too long), planned whole and ingested for a fixed subset of shards.

Fetching all 10M rows would take hours on this machine, so every size ingests the same `--shards` shards (shard_range);
the planning pass (row counts, the duplicate-URL decision) always covers every row. Each size runs in a fresh
process: its peak RSS after planning and after ingest (VmHWM, the coordinator), and the largest peak RSS of its
worker processes (their VmHWM, sampled every 0.2 s). The HTTP server runs in a process of its own.

    .venv/bin/python benchmarks/ingest_memory.py                      # 1M, 3M, 10M rows
    .venv/bin/python benchmarks/ingest_memory.py --sizes 100000 --shards 1
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ingest_memory.txt"
IMAGES = 4096


def serve(port_queue) -> None:
    """Tiny distinct JPEGs at /img/<k>.jpg (any query string), on a loopback port sent back through `port_queue`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(IMAGES):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=85)
        bodies.append(buf.getvalue())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (http.server's name)
            body = bodies[int(self.path.split("/")[-1].split(".")[0]) % IMAGES]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_queue.put(server.server_address[1])
    server.serve_forever()


def write_list(folder: Path, rows: int, files: int, base: str) -> None:
    """`rows` URL-list rows in `files` parquet files, built with polars expressions (no Python loop over rows)."""
    import polars as pl

    folder.mkdir(parents=True)
    per = -(-rows // files)
    for f in range(files):
        start, stop = f * per, min((f + 1) * per, rows)
        i = pl.int_range(start, stop, eager=True)
        # 1% of rows repeat the URL of the row 999 before them (never itself a repeat); 0.5% have a caption over
        # max_caption_chars
        source = pl.when((i % 100 == 7) & (i >= 999)).then(i - 999).otherwise(i)
        table = pl.DataFrame({"i": i}).with_columns(
            url=pl.format(f"{base}/img/{{}}.jpg?row={{}}", source % IMAGES, source),
            caption=pl.when(i % 200 == 3).then(pl.lit("x" * 1200)).otherwise(pl.format("a synthetic photo {}", i)),
        ).drop("i")
        table.write_parquet(folder / f"part-{f:03d}.parquet", row_group_size=100_000)


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM of a process: its peak RSS since it exec'd (ru_maxrss would also count the parent's pages at fork)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class WorkerPeaks(threading.Thread):
    """Samples the peak RSS (VmHWM) of this process's child processes every 0.2 s; `peak` is the largest seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.wait(0.2):
            for proc in psutil.Process().children(recursive=True):
                try:
                    if "resource_tracker" not in " ".join(proc.cmdline()):
                        self.peak = max(self.peak, peak_rss_mb(proc.pid))
                except (psutil.Error, OSError):
                    pass  # it ended between the listing and the read


def child(args: argparse.Namespace) -> None:
    """One size, in its own process: plan, then ingest `--shards` shards; prints one JSON line."""
    from clipcore.config import IngestConfig
    from clipcore.ingest.plan import default_plan_dir, plan_input
    from clipcore.ingest.stage import ingest

    work = Path(args.work)
    config = IngestConfig(input=str(work / "list"), shard_size=args.shard_size, processes=2, threads=16,
                          max_side=64, timeout=10.0)
    start = time.perf_counter()
    plan = plan_input(config, default_plan_dir(config, work / "out"))
    plan_s = time.perf_counter() - start
    plan_rss = peak_rss_mb()
    workers = WorkerPeaks()
    workers.start()
    start = time.perf_counter()
    stats = ingest(config, work / "out", progress=False, shard_range=(0, args.shards - 1))
    workers.stop.set()
    print(json.dumps({
        "rows": plan.rows, "duplicates": int(plan.duplicates.size), "plan_s": round(plan_s, 1),
        "plan_rss_mb": round(plan_rss), "ingest_s": round(time.perf_counter() - start, 1),
        "coordinator_rss_mb": round(peak_rss_mb()), "worker_rss_mb": round(workers.peak),
        "ingested_rows": stats["rows"], "success": stats["success"], "by_error": stats["by_error"],
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--files", type=int, default=8, help="parquet files per list")
    parser.add_argument("--shards", type=int, default=2, help="shards ingested at every size")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=serve, args=(ports,), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{ports.get(timeout=60)}"
    lines = []
    try:
        for rows in args.sizes:
            work = Path(tempfile.mkdtemp(prefix="ingest-memory-"))
            try:
                write_list(work / "list", rows, args.files, base)
                out = subprocess.run([sys.executable, __file__, "--child", "--work", str(work), "--shards",
                                      str(args.shards), "--shard-size", str(args.shard_size)],
                                     capture_output=True, text=True, cwd=ROOT)
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                result = json.loads(out.stdout.strip().splitlines()[-1])
                line = (f"{result['rows']:>11,} rows  plan {result['plan_s']:>6.1f} s  "
                        f"dups {result['duplicates']:>8,}  coordinator peak RSS: after plan "
                        f"{result['plan_rss_mb']:>4} MB, after ingest {result['coordinator_rss_mb']:>4} MB  "
                        f"worker peak RSS {result['worker_rss_mb']:>4} MB  ingest of {result['ingested_rows']:,} "
                        f"rows {result['ingest_s']:.1f} s ({result['success']:,} success, {result['by_error']})")
                print(line, flush=True)
                lines.append(line)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        server.terminate()
    header = (f"ingest memory vs URL-list size ({args.files} parquet files per list, loopback URLs, 2 processes x 16 "
              f"threads, shard_size {args.shard_size}; every size plans all rows and ingests shards "
              f"0..{args.shards - 1} only: fetching 10M rows would take hours on 2 cores)\n"
              "machine: 2 cores, 24 GiB (shared with other work); peak RSS = VmHWM of each process\n")
    RESULTS.write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
