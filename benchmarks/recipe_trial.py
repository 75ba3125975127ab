"""One training-recipe trial: train on a finished run's kept rows with params.yaml plus overrides, then measure the
Fashion-MNIST test set's zero-shot top-1; prints one JSON line and appends it to benchmarks/results/recipe_trials.jsonl.

How the default recipe was chosen (issue 15: top-1 >= 0.88 within the old default's training time). Run after
`make run` (it reads outputs/filtered_captions and outputs/caption_shards, never writes outputs/):

    uv run --frozen python benchmarks/recipe_trial.py base
    uv run --frozen python benchmarks/recipe_trial.py r18 model.image_tower=resnet18 train.epochs=1.2

Training is the pipeline's own `run_pretraining` (seeded: the same overrides give the same model), the measurement
`measure_checkpoint` without the linear probe and the suite's other tasks; `train_s` is the wall time of training
alone, so trials compare only when run one at a time on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from clipcore.config import load_params
from clipcore.evaluate.stage import measure_checkpoint
from clipcore.train.stage import run_pretraining

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "recipe_trials.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the trial's name (its output folder under --scratch)")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="params.yaml overrides")
    parser.add_argument("--project", default=str(ROOT), help="a project folder after `make run` (default: this one)")
    parser.add_argument("--scratch", default="/tmp/recipe-trials", help="where the trials' checkpoints go")
    args = parser.parse_args()
    project, out = Path(args.project), Path(args.scratch) / args.name
    cfg = load_params(project / "params.yaml", [f"eval.labeled_set={project}/data/fashion_mnist/test", "eval.tasks=''",
                                                 *args.overrides])
    start = time.perf_counter()
    trained = run_pretraining(project / "outputs/filtered_captions/kept.parquet", project / "outputs/caption_shards",
                              out, cfg, progress=False)
    train_s = time.perf_counter() - start
    _, result, *_ = measure_checkpoint(out / "checkpoint", out / "holdout.parquet", project / "outputs/caption_shards",
                                       dataclasses.replace(cfg.eval, probe_size=0))
    metrics, history = result["metrics"], trained.result.history
    line = {"name": args.name, "overrides": args.overrides, "top1": round(metrics["zero_shot_top1"], 4),
            "steps": trained.result.steps, "train_s": round(train_s, 1), "final_loss": round(history[-1]["loss"], 4),
            "temperature": round(metrics["temperature"], 4),
            "data_wait_s": round(trained.result.data_wait_seconds, 1),
            "samples_per_s": round(trained.result.samples_per_second, 1), "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(line), flush=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
