"""The promotion asset: `champion` moves to the candidate only when it beats the champion on the same test set."""

import dataclasses
import json

from dagster import AssetCheckResult, AssetCheckSeverity, AssetExecutionContext, Output, asset, asset_check

from clipcore.config import EvalConfig, from_dict
from clipcore.evaluate.promotion import decide
from clipcore.evaluate.stage import zero_shot_on_test_set
from pipelines.assets import GROUP, StageConfig
from pipelines.resources import MLflowResource, PipelineResource
from pipelines.tracking import CHAMPION, champion_checkpoint, champion_version, record_decision
from pipelines.values import Champion, Evaluation, TrainedModel


@asset(group_name=GROUP, kinds={"mlflow"})
def champion(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
             mlflow_store: MLflowResource, clip_model: TrainedModel, evaluation: Evaluation) -> Output[Champion]:
    """The promotion gate: re-measures the current champion on the candidate's test set, moves the registry's
    `champion` alias to the candidate only if its zero-shot top-1 is higher, and records the decision (with both sets
    of numbers) on the candidate's version and in outputs/champion/decision.json."""
    cfg = pipeline.load_config("promote", config.overrides)
    mlflow_store.setup(cfg.registry.experiment)
    if evaluation.model_version != clip_model.model_version:
        raise ValueError(f"the evaluation is of v{evaluation.model_version}, the candidate is "
                         f"v{clip_model.model_version}: materialize `evaluation` again")
    before, checkpoint = champion_checkpoint(clip_model.model_name)
    champion_metrics = None
    if before is not None and before != clip_model.model_version:
        # the champion on today's test set (the one the candidate was measured on), not its old tags
        champion_metrics = zero_shot_on_test_set(checkpoint, from_dict(EvalConfig, evaluation.test_set))
    decision = decide(clip_model.model_version, evaluation.metrics, before, champion_metrics, CHAMPION)
    record_decision(clip_model.model_name, decision)
    out = pipeline.stage_dir("champion")
    value = Champion(dir=str(out), model_name=clip_model.model_name, **dataclasses.asdict(decision))
    (out / "decision.json").write_text(json.dumps(dataclasses.asdict(value), indent=2))
    return Output(value, metadata={
        "promoted": decision.promoted, "decision": decision.reason,
        "candidate_top1": decision.candidate["zero_shot_top1"],
        "champion_top1_same_test_set": (decision.champion or {}).get("zero_shot_top1", -1.0),
        "champion_version_before": decision.champion_version or "none",
    })


@asset_check(asset=champion, description="The registry's `champion` alias is where the decision says it is.")
def alias_matches_decision(mlflow_store: MLflowResource, pipeline: PipelineResource,
                           champion: Champion) -> AssetCheckResult:
    mlflow_store.setup(pipeline.load_config("promote").registry.experiment)
    expected = champion.candidate_version if champion.promoted else champion.champion_version
    actual = champion_version(champion.model_name)
    return AssetCheckResult(passed=actual == expected, severity=AssetCheckSeverity.ERROR,
                            metadata={"expected_version": expected or "none", "alias_version": actual or "none"})


ASSETS, CHECKS = [champion], [alias_matches_decision]
