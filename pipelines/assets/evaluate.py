"""The evaluate stage's asset and its check."""

import dataclasses
import json
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from clipcore.evaluate.metric_names import CONTRACT
from clipcore.evaluate.stage import run_evaluation
from pipelines.assets import GROUP, StageConfig
from pipelines.resources import MLflowResource, PipelineResource
from pipelines.tracking import log_evaluation
from pipelines.values import CaptionShards, Evaluation, TrainedModel


@asset(group_name=GROUP, kinds={"pytorch", "mlflow"})
def evaluation(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
               mlflow_store: MLflowResource, caption_shards: CaptionShards,
               clip_model: TrainedModel) -> Output[Evaluation]:
    """Zero-shot classification of the test set, retrieval on the held-out pairs (their images are in the shards), a
    linear probe; writes outputs/metrics.json and logs it to the model's training run."""
    cfg = pipeline.load_config("evaluate", config.overrides)
    mlflow_store.setup(cfg.registry.experiment)
    out = pipeline.stage_dir("evaluation")
    metrics_path = Path(pipeline.outputs_dir) / "metrics.json"
    result = run_evaluation(clip_model.checkpoint, clip_model.holdout, caption_shards.dir, cfg.eval, out, metrics_path)
    log_evaluation(clip_model.run_id, clip_model.model_name, clip_model.model_version, result.metrics,
                   [metrics_path, out / "details.json"])
    value = Evaluation(dir=str(out), metrics_path=str(metrics_path), details=str(out / "details.json"),
                       metrics=result.metrics, model_version=clip_model.model_version,
                       test_set=dataclasses.asdict(cfg.eval), model_config=dataclasses.asdict(result.model_config),
                       overrides=list(config.overrides))
    return Output(value, metadata={
        **{k: MetadataValue.float(v) for k, v in result.metrics.items()},
        "model": f"{clip_model.model_name} v{clip_model.model_version}",
        "config": MetadataValue.json(value.test_set),
    })


@asset_check(asset=evaluation, description="metrics.json has every contract key and zero-shot beats chance.")
def metrics_complete_and_above_chance(evaluation: Evaluation) -> AssetCheckResult:
    metrics = json.loads(Path(evaluation.metrics_path).read_text())
    details = json.loads(Path(evaluation.details).read_text())
    chance = 1 / len(details["class_names"])
    missing = [k for k in CONTRACT if k not in metrics]
    passed = not missing and metrics["zero_shot_top1"] > chance
    return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.ERROR, metadata={
        "missing_keys": ", ".join(missing) or "none", "zero_shot_top1": metrics.get("zero_shot_top1", -1.0),
        "chance": chance})


ASSETS, CHECKS = [evaluation], [metrics_complete_and_above_chance]
