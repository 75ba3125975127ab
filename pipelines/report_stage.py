"""The report stage's wiring: gather every stage's products, decide the champion, render and log the report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import yaml

from clipcore.config import PipelineConfig, flatten
from clipcore.report import ReportInputs, render_report, render_summary
from pipelines.evaluate_stage import load_holdout, load_test_set


def lineage() -> dict[str, str]:
    """The data version (data.dvc's md5) and the code version (git commit), where available."""
    ids = {}
    if Path("data.dvc").exists():
        outs = yaml.safe_load(Path("data.dvc").read_text()).get("outs", [{}])
        ids["data.dvc md5"] = str(outs[0].get("md5", "?"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    if commit.returncode == 0:
        ids["git commit"] = commit.stdout.strip()
    return ids


RUN_COLUMNS = {  # MLflow column -> report column
    "tags.mlflow.runName": "run", "params.loss.name": "loss", "params.filter.enabled": "filtered",
    "params.filter.clip_score.enabled": "clip-score filter", "params.filter.languages": "languages",
    "metrics.train_rows": "train rows", "metrics.zero_shot_top1": "zero-shot top-1",
}


def training_runs(experiment: str) -> list[dict]:
    """Every evaluated training run of the experiment, newest first: how filtering and the loss moved top-1."""
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["start_time DESC"])
    if runs.empty or "metrics.zero_shot_top1" not in runs:
        return []
    runs = runs[runs["metrics.zero_shot_top1"].notna()]
    rows = []
    for _, run in runs.iterrows():
        row = {"run id": run["run_id"][:8]}
        for column, label in RUN_COLUMNS.items():
            value = run.get(column)
            row[label] = "-" if value is None or value != value else value  # NaN -> "-"
        rows.append(row)
    return rows


def comparison_rows(decision: dict) -> list[dict]:
    """Candidate beside the champion (both on the same test set) with the deltas."""
    champion = decision.get("champion") or {}
    rows = []
    for key, value in decision["candidate"].items():
        other = champion.get(key)
        rows.append({"metric": key, f"candidate v{decision['candidate_version']}": value,
                     f"champion v{decision['champion_version'] or '-'}": "-" if other is None else other,
                     "delta": "-" if other is None else f"{value - other:+.4f}"})
    return rows


def confused_examples(details: dict, cfg: PipelineConfig) -> list[dict]:
    """The most confused class pairs with a few of the test images behind each."""
    images = load_test_set(cfg)[0].numpy()  # (N, C, S, S) or (N, S, S) uint8
    return [{**pair, "images": [images[i] for i in pair["examples"]]} for pair in details.get("confused_pairs", [])]


def retrieval_examples(details: dict, clip_model: dict, cfg: PipelineConfig) -> list[dict]:
    """Each example caption with the thumbnails of its top images (and whether each is the caption's own)."""
    examples = details["retrieval_examples"]
    uids = sorted({u for ex in examples for u in ex["top_uids"]})
    loaded, images, _ = load_holdout(clip_model, cfg, uids)
    by_uid = {u: images[i].numpy() for i, u in enumerate(loaded)}
    return [{"caption": ex["caption"], "images": [(by_uid[u], u == ex["caption_uid"]) for u in ex["top_uids"]]}
            for ex in examples]


def build_report(filtered_captions: dict, clip_model: dict, evaluation: dict, cfg: PipelineConfig, out: Path,
                 extra_ids: dict[str, str]) -> tuple[str, dict]:
    """Promote if better, write index.html and summary.md, log them to the run; returns (summary, decision)."""
    metrics = evaluation["metrics"]
    gate_file = Path(evaluation["dir"]) / "promotion.json"
    if not gate_file.exists():
        raise FileNotFoundError(f"{gate_file} is missing: the promotion gate (asset check candidate_beats_champion on "
                                "`evaluation`) has not run; materialize `evaluation` with its checks")
    decision = json.loads(gate_file.read_text())
    details = json.loads(Path(evaluation["details"]).read_text())
    inputs = ReportInputs(
        funnel=filtered_captions["funnel"],
        history=json.loads(Path(clip_model["history"]).read_text()),
        metrics=metrics,
        class_names=details["class_names"],
        per_class_accuracy=details["per_class_accuracy"],
        confusion=details["confusion"],
        retrieval_examples=retrieval_examples(details, clip_model, cfg),
        identifiers={"MLflow run": clip_model["run_id"], "model": clip_model["model_uri"],
                     "registered": f"models:/{clip_model['model_name']}/{clip_model['model_version']}",
                     "loss": clip_model["loss"], **lineage(), **extra_ids},
        decision=decision["reason"],
        comparison=comparison_rows(decision),
        runs=training_runs(cfg.registry.experiment),
        confused_pairs=confused_examples(details, cfg),
        config={k: v for k, v in flatten(cfg).items() if k.split(".")[0] in ("model", "loss", "train", "filter")},
    )
    (out / "index.html").write_text(render_report(inputs))
    summary = render_summary(inputs)
    (out / "summary.md").write_text(summary)
    with mlflow.start_run(run_id=clip_model["run_id"]):
        mlflow.log_artifact(str(out / "index.html"), "report")
        mlflow.set_tag("promotion", decision["reason"])
    return summary, decision
