"""The report stage's asset and its check."""

import dataclasses
import json
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

from clipcore.config import EvalConfig, ModelConfig
from clipcore.params import from_dict
from clipcore.report.stage import ReportSources, build_report
from pipelines.assets import GROUP, StageConfig
from pipelines.provenance import tag_dagster_run
from pipelines.resources import MLflowResource, PipelineResource
from pipelines.tracking import git_commit, run_link, tracked_run, training_facts, training_runs
from pipelines.values import CaptionShards, Champion, Evaluation, FilteredCaptions, Report, TrainedModel


def check_same_model(clip_model: TrainedModel, evaluation: Evaluation, champion: Champion, metrics_path: Path) -> None:
    """Raise unless the evaluation, the decision and DVC's metrics file all belong to `clip_model`'s checkpoint (a
    stage rerun alone, or killed half way, would otherwise put one model's name on another's numbers)."""
    if evaluation.checkpoint_sha256 != clip_model.checkpoint_sha256:
        raise ValueError(f"the evaluation is of checkpoint {evaluation.checkpoint_sha256[:12]} (v"
                         f"{evaluation.model_version}), clip_model is {clip_model.checkpoint_sha256[:12]} (v"
                         f"{clip_model.model_version}): materialize `evaluation` again")
    if champion.candidate_version != clip_model.model_version:
        raise ValueError(f"the promotion decision is about v{champion.candidate_version}, clip_model is v"
                         f"{clip_model.model_version}: materialize `champion` again")
    if not metrics_path.exists() or json.loads(metrics_path.read_text()) != evaluation.metrics:
        raise ValueError(f"{metrics_path} is not the evaluation of v{evaluation.model_version}: materialize "
                         "`evaluation` again")


@asset(group_name=GROUP, kinds={"html", "mlflow"})
def report(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
           mlflow_store: MLflowResource, caption_shards: CaptionShards, filtered_captions: FilteredCaptions,
           clip_model: TrainedModel, evaluation: Evaluation, champion: Champion) -> Output[Report]:
    """outputs/report/index.html (self-contained): the test set, prompts, training time, hardware and date; the
    funnel with rejected samples per reason, training curves, zero-shot (per class) and retrieval results, the
    promotion decision and earlier runs with their dataset; logged to the model's MLflow run."""
    cfg = pipeline.load_config("report", config.overrides)
    mlflow_store.setup(cfg.registry.experiment)
    tag_dagster_run(context, caption_shards.input)
    check_same_model(clip_model, evaluation, champion, Path(pipeline.outputs_dir) / "metrics.json")
    run_id = clip_model.run_id  # a registry lookup: once
    identifiers = {"MLflow run": run_id, "model": clip_model.model_uri,
                   "registered": f"models:/{clip_model.model_name}/{clip_model.model_version}",
                   "checkpoint sha256": clip_model.checkpoint_sha256, "loss": clip_model.loss,
                   "ingest input": caption_shards.input, "git commit": git_commit() or "-",
                   "dagster_run_id": context.run_id}
    with pipeline.writing("report") as stage, pipeline.reading("clip_model"), pipeline.reading("evaluation"):
        sources = ReportSources(
            funnel=filtered_captions.funnel, history=clip_model.history, holdout=clip_model.holdout,
            shard_root=caption_shards.dir, metrics=evaluation.metrics, details=evaluation.details,
            decision=dataclasses.asdict(champion), test_set=from_dict(EvalConfig, evaluation.test_set),
            model=from_dict(ModelConfig, evaluation.model_config), identifiers=identifiers,
            runs=training_runs(cfg.registry.experiment), config={**clip_model.config, **filtered_captions.config},
            rejected=filtered_captions.rejected, checkpoint=clip_model.checkpoint,
            training=training_facts(run_id))
        summary = build_report(sources, stage.work)
        with tracked_run(run_id=run_id):
            mlflow.log_artifact(str(stage.work / "index.html"), "report")
            mlflow.set_tag("promotion", champion.reason)
        value = Report(dir=str(stage.final), html=str(stage.final / "index.html"))
        stage.publish(value)
    return Output(value, metadata={
        "summary": MetadataValue.md(summary), "promoted": champion.promoted, "decision": champion.reason,
        "report": MetadataValue.path(str(Path(value.html).resolve())),
        "mlflow_run": MetadataValue.url(run_link(run_id)),
    })


@asset_check(asset=report, description="The report is one self-contained file: no external src or href.")
def report_self_contained(report: Report) -> AssetCheckResult:
    html = Path(report.html).read_text()
    external = re.findall(r'(?:src|href)="(?!data:|#)([^"]+)"', html)
    return AssetCheckResult(passed=not external, severity=AssetCheckSeverity.ERROR,
                            metadata={"external_references": len(external), "bytes": len(html.encode())})


ASSETS, CHECKS = [report], [report_self_contained]
