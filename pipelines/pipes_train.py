"""Pretraining as an external process, launched by Dagster Pipes under torchrun:

    python -m torch.distributed.run --nproc-per-node N -m pipelines.pipes_train --kept K --shards S --output-dir O

Every process trains (data-parallel); process 0 streams its log lines and metric records back to the Dagster
run through Pipes and writes the checkpoint, history.json and train_summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
from contextlib import nullcontext
from pathlib import Path

from dagster_pipes import open_dagster_pipes

from clipcore.config import load_params
from clipcore.train.stage import run_pretraining

STEP_LINE = "step {step}: loss {loss:.4f}, T {temperature:.4f}"
"""The loss line of every logged step in the Dagster run's event log (this process's and in-process training's)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--kept", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--mlflow-run-id", default="", help="stored in the training state, for resuming the same run")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/train_state.pt")
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    with open_dagster_pipes() if rank == 0 else nullcontext() as pipes:
        config = load_params(args.params, args.overrides)

        def on_log(record: dict) -> None:
            pipes.log.info(STEP_LINE.format(**record))
            # the whole record (loss, lr, temperature, the batch diagnostics), for the Dagster run and MLflow
            pipes.report_custom_message({**record, "step": int(record["step"])})

        out = run_pretraining(args.kept, args.shards, args.output_dir, config,
                              on_log=on_log if pipes else None, progress=False, resume=args.resume,
                              extra_state={"mlflow_run_id": args.mlflow_run_id})
        if pipes:
            r = out.result
            summary = out.summary(int(os.environ.get("WORLD_SIZE", "1")))
            (Path(args.output_dir) / "train_summary.json").write_text(json.dumps(summary))
            pipes.log.info(f"trained {r.steps} steps on {summary['processes']} processes, "
                           f"{r.samples_per_second:.1f} samples/s")


if __name__ == "__main__":
    main()
