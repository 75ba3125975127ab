"""The ingest stage as an external process, launched by Dagster Pipes when `ingest.distributor` is `ray`.

`caption_shards` hands its run's shards (one partition, a range of them, or a whole backfill run as one: see
`CLIP_INGEST_SHARDS_PER_RUN`) to this process, which drives Ray tasks on the cluster at `ingest.ray_address` (or
$RAY_ADDRESS); the Dagster run only waits, its event log receiving this process's log lines and, at the end, the
ingest's stats. The command line (what the Dagster run logs) can be run by hand the same way:

    python -m pipelines.pipes_ingest --params params.yaml --output-dir outputs/caption_shards --first 0 --last 99 \\
        --set ingest.distributor=ray --set ingest.ray_address=HEAD:6379
"""

from __future__ import annotations

import argparse
import sys

from dagster_pipes import open_dagster_pipes

from clipcore.config import load_params
from clipcore.ingest.stage import ingest

STATS_KEY = "ingest_stats"  # the custom message carrying `ingest`'s result back to the Dagster run


def command(params_path: str, overrides: list[str], output_dir: str, first: int, last: int) -> list[str]:
    """This module's command line for shards `first..last`."""
    argv = [sys.executable, "-m", "pipelines.pipes_ingest", "--params", params_path, "--output-dir", output_dir,
            "--first", str(first), "--last", str(last)]
    for item in overrides:
        argv += ["--set", item]
    return argv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    parser.add_argument("--output-dir", required=True, help="the shard folder (a local path or an fsspec URL)")
    parser.add_argument("--first", type=int, required=True, help="first shard of the range")
    parser.add_argument("--last", type=int, required=True, help="last shard of the range (inclusive)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a param (repeatable)")
    args = parser.parse_args(argv)
    with open_dagster_pipes() as pipes:
        cfg = load_params(args.params, args.set).ingest
        where = (cfg.ray_address or "$RAY_ADDRESS") if cfg.distributor == "ray" else "this machine"
        pipes.log.info(f"ingest shards {args.first}..{args.last} on {cfg.distributor} ({where})")
        stats = ingest(cfg, args.output_dir, progress=False, shard_range=(args.first, args.last))
        pipes.log.info(f"{stats['shards_written']} shards written by {stats['nodes']} node(s) in {stats['seconds']} s")
        pipes.report_custom_message({STATS_KEY: stats})


if __name__ == "__main__":
    main()
