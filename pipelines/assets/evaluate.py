"""The evaluate stage's asset and its check."""

import dataclasses
import json
import os
import shutil
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
from clipcore.model.clip_model import checkpoint_digest
from pipelines.assets import GROUP, StageConfig
from pipelines.provenance import tag_dagster_run
from pipelines.resources import MLflowResource, PipelineResource
from pipelines.tracking import log_evaluation, run_link
from pipelines.values import CaptionShards, Evaluation, TrainedModel


def check_checkpoint(trained: TrainedModel) -> None:
    """Raise unless the checkpoint folder holds the files `trained` was registered with."""
    found = checkpoint_digest(trained.checkpoint)
    if found != trained.checkpoint_sha256:
        raise ValueError(f"{trained.checkpoint} is checkpoint {found[:12]}, but clip_model's value (v"
                         f"{trained.model_version}) describes {trained.checkpoint_sha256[:12]}: materialize clip_model "
                         "again")


@asset(group_name=GROUP, kinds={"pytorch", "mlflow"})
def evaluation(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
               mlflow_store: MLflowResource, caption_shards: CaptionShards,
               clip_model: TrainedModel) -> Output[Evaluation]:
    """Zero-shot classification of the test set, retrieval on the held-out pairs (their images are in the shards), a
    linear probe; writes outputs/metrics.json and logs it to the model's training run. Refuses a checkpoint whose
    files are not the ones `clip_model` registered."""
    cfg = pipeline.load_config("evaluate", config.overrides)
    mlflow_store.setup(cfg.registry.experiment)
    tag_dagster_run(context, caption_shards.input)
    identity = {"model_name": clip_model.model_name, "model_version": clip_model.model_version,
                "checkpoint_sha256": clip_model.checkpoint_sha256}
    with pipeline.writing("evaluation") as stage:
        with pipeline.reading("clip_model"):  # no pretrain run swaps the checkpoint while it is checked and read
            check_checkpoint(clip_model)
            result = run_evaluation(clip_model.checkpoint, clip_model.holdout, caption_shards.dir, cfg.eval,
                                    stage.work, stage.work / "metrics.json", identity, cfg.train.exclude_classes)
        run_id = clip_model.run_id  # a registry lookup: once
        log_evaluation(run_id, clip_model.model_name, clip_model.model_version,
                       clip_model.checkpoint_sha256, result.metrics,
                       [stage.work / "metrics.json", stage.work / "details.json"])
        value = Evaluation(dir=str(stage.final), metrics_path=str(stage.final / "metrics.json"),
                           details=str(stage.final / "details.json"), metrics=result.metrics,
                           model_version=clip_model.model_version, checkpoint_sha256=clip_model.checkpoint_sha256,
                           test_set=dataclasses.asdict(cfg.eval), model_config=dataclasses.asdict(result.model_config),
                           overrides=list(config.overrides), holdout=clip_model.holdout,
                           shard_root=caption_shards.dir)
        stage.publish(value)
        # DVC's metrics file: a copy of the published one, replaced whole (the report checks the two agree)
        metrics_path = Path(pipeline.outputs_dir) / "metrics.json"
        tmp = metrics_path.with_suffix(".json.tmp")
        shutil.copyfile(Path(value.metrics_path), tmp)
        os.replace(tmp, metrics_path)
    return Output(value, metadata={
        **{k: MetadataValue.float(v) for k, v in result.metrics.items()},
        "model": f"{clip_model.model_name} v{clip_model.model_version}",
        "mlflow_run": MetadataValue.url(run_link(run_id)),
        "checkpoint_sha256": clip_model.checkpoint_sha256,
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
