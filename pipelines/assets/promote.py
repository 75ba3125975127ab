"""The promotion asset: `champion` moves to the candidate only when it beats the champion (the same dataset's, in the
candidate's own registered model) on the same evaluation suite by more than registry.min_improvement."""

import dataclasses
import json

from dagster import AssetCheckResult, AssetCheckSeverity, AssetExecutionContext, Output, asset, asset_check

from clipcore.config import EvalConfig
from clipcore.evaluate.promotion import decide
from clipcore.evaluate.stage import gate_metrics
from clipcore.params import from_dict
from pipelines.assets import GROUP, StageConfig
from pipelines.resources import MLflowResource, PipelineResource
from pipelines.tracking import (
    CHAMPION,
    ChampionUnavailable,
    champion_checkpoint,
    champion_version,
    record_decision,
)
from pipelines.values import Champion, Evaluation, TrainedModel


def champion_on_test_set(clip_model: TrainedModel, evaluation: Evaluation) -> tuple[str | None, dict | None,
                                                                                   str | None]:
    """(champion version, its metrics on the candidate's evaluation suite, why it could not be measured) before the
    decision: the champion on today's suite and held-out pairs, not its old tags."""
    try:
        before, checkpoint = champion_checkpoint(clip_model.model_name)
    except ChampionUnavailable as err:
        return champion_version(clip_model.model_name), None, str(err)
    if before is None or before == clip_model.model_version:
        return before, None, None
    try:
        return before, gate_metrics(checkpoint, evaluation.holdout, evaluation.shard_root,
                                    from_dict(EvalConfig, evaluation.test_set)), None
    except (OSError, ValueError, RuntimeError) as err:  # a checkpoint that does not load (another code version)
        return before, None, f"champion v{before} cannot be loaded ({type(err).__name__}: {err})"


@asset(group_name=GROUP, kinds={"mlflow"})
def champion(context: AssetExecutionContext, config: StageConfig, pipeline: PipelineResource,
             mlflow_store: MLflowResource, clip_model: TrainedModel, evaluation: Evaluation) -> Output[Champion]:
    """The promotion gate: re-measures the current champion on the candidate's evaluation suite, moves the
    `champion` alias of the candidate's registered model (its dataset's) to the candidate only if its suite average
    is higher by more than registry.min_improvement, and records the decision (with both sets of numbers) on the
    candidate's version and in outputs/champion/decision.json. A champion that cannot be loaded any more is
    reported, and the candidate takes the alias. With registry.promote false (the runs of a study) the alias never
    moves and the champion is not re-measured."""
    cfg = pipeline.load_config("promote", config.overrides)
    mlflow_store.setup(cfg.registry.experiment)
    if (evaluation.model_version, evaluation.checkpoint_sha256) != (clip_model.model_version,
                                                                     clip_model.checkpoint_sha256):
        raise ValueError(f"the evaluation is of v{evaluation.model_version} ({evaluation.checkpoint_sha256[:12]}), "
                         f"the candidate is v{clip_model.model_version} ({clip_model.checkpoint_sha256[:12]}): "
                         "materialize `evaluation` again")
    if cfg.registry.promote:
        before, champion_metrics, error = champion_on_test_set(clip_model, evaluation)
    else:  # a study or trial run: the champion is neither measured nor moved
        before, champion_metrics, error = champion_version(clip_model.model_name), None, None
    if error:
        context.log.warning(error)
    decision = decide(clip_model.model_version, evaluation.metrics, before, champion_metrics, CHAMPION, error,
                      cfg.registry.min_improvement, allowed=cfg.registry.promote)
    with pipeline.writing("champion") as stage:
        record_decision(clip_model.model_name, decision)
        value = Champion(dir=str(stage.final), model_name=clip_model.model_name, **dataclasses.asdict(decision))
        (stage.work / "decision.json").write_text(json.dumps(dataclasses.asdict(value), indent=2))
        stage.publish(value)
    return Output(value, metadata={
        "promoted": decision.promoted, "decision": decision.reason,
        "candidate_eval_average": decision.candidate["eval_average"],
        "champion_eval_average_same_suite": (decision.champion or {}).get("eval_average", -1.0),
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
