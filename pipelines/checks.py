"""Asset checks: data accounting (blocking), training sanity, evaluation completeness, report integrity."""


import json
import re
from pathlib import Path

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, AssetIn, asset_check

from clipcore.ingest import read_manifest
from clipcore.sources import read_input
from pipelines.assets import caption_shards, clip_model, evaluation, filtered_captions, report
from pipelines.promotion import gate
from pipelines.resources import MLflowResource, PipelineResource

METRIC_KEYS = ("zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall",
               *(f"retrieval_{d}_r{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)))


@asset_check(asset=caption_shards, blocking=True, description="One manifest row per input row, unique uids.")
def ingest_accounts_for_every_row(pipeline: PipelineResource, caption_shards: dict) -> AssetCheckResult:
    cfg = pipeline.load_config(caption_shards.get("overrides", [])).ingest  # the run's --set values too
    manifest = read_manifest(caption_shards["dir"])
    table_rows = read_input(cfg).height
    unique = manifest["uid"].n_unique()
    passed = manifest.height == table_rows == unique
    return AssetCheckResult(passed=passed, metadata={"input_rows": table_rows, "manifest_rows": manifest.height,
                                                     "unique_uids": unique})


@asset_check(asset=filtered_captions, blocking=True, additional_ins={"caption_shards": AssetIn("caption_shards")},
             description="kept + rejected == input, no row in both, every rejected row has a reason.")
def filter_counts_reconcile(caption_shards: dict, filtered_captions: dict) -> AssetCheckResult:
    rows_in = read_manifest(caption_shards["dir"])["uid"]
    kept = pl.read_parquet(filtered_captions["kept"], columns=["uid"])["uid"]
    rejected = pl.read_parquet(filtered_captions["rejected"], columns=["uid", "filter_reason"])
    overlap = kept.is_in(rejected["uid"].implode()).sum()
    covered = pl.concat([kept, rejected["uid"]]).sort().equals(rows_in.sort())
    no_reason = rejected["filter_reason"].null_count()
    passed = covered and overlap == 0 and no_reason == 0
    return AssetCheckResult(passed=passed, metadata={
        "rows_in": len(rows_in), "kept": len(kept), "rejected": rejected.height, "in_both": int(overlap),
        "rejected_without_reason": no_reason})


@asset_check(asset=clip_model, description="Training lowered the loss and kept the logit scale within (0, 100].")
def training_converged(clip_model: dict) -> AssetCheckResult:
    history = json.loads(Path(clip_model["history"]).read_text())
    first, last = history[0]["loss"], history[-1]["loss"]
    scale = history[-1]["logit_scale"]
    return AssetCheckResult(passed=last < first and 1.0 <= scale <= 100.0,
                            metadata={"first_loss": first, "final_loss": last, "final_logit_scale": scale})


@asset_check(asset=evaluation, description="metrics.json has every contract key and zero-shot beats chance.")
def metrics_complete_and_above_chance(evaluation: dict) -> AssetCheckResult:
    metrics = json.loads(Path(evaluation["metrics_path"]).read_text())
    details = json.loads(Path(evaluation["details"]).read_text())
    chance = 1 / len(details["class_names"])
    missing = [k for k in METRIC_KEYS if k not in metrics]
    passed = not missing and metrics["zero_shot_top1"] > chance
    return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.ERROR, metadata={
        "missing_keys": ", ".join(missing) or "none", "zero_shot_top1": metrics.get("zero_shot_top1", -1.0),
        "chance": chance})


@asset_check(asset=evaluation, blocking=True, additional_ins={"clip_model": AssetIn("clip_model")},
             description="The promotion gate: moves `champion` to the candidate only if it beats the champion "
                         "re-evaluated on the same test set; fails (warning) when the candidate is refused.")
def candidate_beats_champion(pipeline: PipelineResource, mlflow_store: MLflowResource, clip_model: dict,
                             evaluation: dict) -> AssetCheckResult:
    cfg = pipeline.load_config(evaluation.get("overrides", []))  # the champion sees the candidate's test set
    mlflow_store.setup(cfg.registry.experiment)
    decision = gate(clip_model, evaluation["metrics"], cfg)
    Path(evaluation["dir"], "promotion.json").write_text(json.dumps(decision, indent=2))
    champion = decision["champion"] or {}
    return AssetCheckResult(
        passed=decision["promoted"], severity=AssetCheckSeverity.WARN, description=decision["reason"],
        metadata={"decision": decision["reason"], "candidate_top1": decision["candidate"]["zero_shot_top1"],
                  "champion_top1_same_test_set": champion.get("zero_shot_top1", -1.0),
                  "champion_version_before": decision["champion_version"] or "none"})


@asset_check(asset=report, description="The report is one self-contained file: no external src or href.")
def report_self_contained(report: dict) -> AssetCheckResult:
    html = Path(report["html"]).read_text()
    external = re.findall(r'(?:src|href)="(?!data:|#)([^"]+)"', html)
    return AssetCheckResult(passed=not external, metadata={"external_references": len(external),
                                                           "bytes": len(html.encode())})


CHECKS = [ingest_accounts_for_every_row, filter_counts_reconcile, training_converged,
          metrics_complete_and_above_chance, candidate_beats_champion, report_self_contained]
