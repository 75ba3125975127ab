"""The report stage's asset and its check."""

import dataclasses
import re
from pathlib import Path

import mlflow
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from clipcore.config import EvalConfig, ModelConfig, from_dict
from clipcore.report.stage import ReportSources, build_report
from pipelines.assets import GROUP, StageConfig
from pipelines.resources import MLflowResource, PipelineResource
from pipelines.tracking import git_commit, training_runs
from pipelines.values import CaptionShards, Champion, Evaluation, FilteredCaptions, Report, TrainedModel


@asset(group_name=GROUP, kinds={"html", "mlflow"})
def report(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
           mlflow_store: MLflowResource, caption_shards: CaptionShards, filtered_captions: FilteredCaptions,
           clip_model: TrainedModel, evaluation: Evaluation, champion: Champion) -> Output[Report]:
    """outputs/report/index.html (self-contained): the funnel, training curves, zero-shot and retrieval results, the
    promotion decision and earlier runs; logged to the model's MLflow run."""
    cfg = pipeline.load_config("report", config.overrides)
    mlflow_store.setup(cfg.registry.experiment)
    out = pipeline.stage_dir("report")
    identifiers = {"MLflow run": clip_model.run_id, "model": clip_model.model_uri,
                   "registered": f"models:/{clip_model.model_name}/{clip_model.model_version}",
                   "loss": clip_model.loss, "ingest input": caption_shards.input,
                   "git commit": git_commit() or "-", "dagster_run_id": context.run_id}
    sources = ReportSources(
        funnel=filtered_captions.funnel, history=clip_model.history, holdout=clip_model.holdout,
        shard_root=caption_shards.dir, metrics=evaluation.metrics, details=evaluation.details,
        decision=dataclasses.asdict(champion), test_set=from_dict(EvalConfig, evaluation.test_set),
        model=from_dict(ModelConfig, evaluation.model_config), identifiers=identifiers,
        runs=training_runs(cfg.registry.experiment), config={**clip_model.config, **filtered_captions.config})
    summary = build_report(sources, out)
    with mlflow.start_run(run_id=clip_model.run_id):
        mlflow.log_artifact(str(out / "index.html"), "report")
        mlflow.set_tag("promotion", champion.reason)
    value = Report(dir=str(out), html=str(out / "index.html"))
    return Output(value, metadata={
        "summary": MetadataValue.md(summary), "promoted": champion.promoted, "decision": champion.reason,
        "report": MetadataValue.path(str((out / "index.html").resolve())),
    })


@asset_check(asset=report, description="The report is one self-contained file: no external src or href.")
def report_self_contained(report: Report) -> AssetCheckResult:
    html = Path(report.html).read_text()
    external = re.findall(r'(?:src|href)="(?!data:|#)([^"]+)"', html)
    return AssetCheckResult(passed=not external, severity=AssetCheckSeverity.ERROR,
                            metadata={"external_references": len(external), "bytes": len(html.encode())})


ASSETS, CHECKS = [report], [report_self_contained]
