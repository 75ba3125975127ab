"""One study run through the whole graph on the tiny slice, as `make study` runs its held-out-classes variant:
registry.promote=false leaves `champion` unset, two classes never train, and metrics.json reports them apart."""

import json

from mlflow import MlflowClient

from clipcore.evaluate.metric_names import HELD_OUT_CLASSES
from pipelines.definitions import ASSETS
from tests.pipelines.test_assets import checks_passed, env, run  # noqa: F401  (env is a fixture)


def test_a_study_run_never_moves_champion_and_holds_classes_out(env, tiny_data):  # noqa: F811
    overrides = ["registry.promote=false", "loss.name=clip_reg", "train.epochs=1",
                 "train.exclude_classes=[sandal, pullover]", f"train.exclude_labeled={tiny_data}/train"]
    result = run(env, [a.key.to_user_string() for a in ASSETS], overrides)
    assert result.success and checks_passed(result)["alias_matches_decision"]
    gate = result.asset_materializations_for_node("champion")[0].metadata
    assert gate["promoted"].value is False and "registry.promote is false" in gate["decision"].value
    client = MlflowClient(env["uri"])
    assert not client.get_registered_model("clip").aliases  # the first candidate would have taken it
    assert client.get_model_version("clip", "1").tags["promotion"] == "refused"

    metrics = json.loads((env["outputs"] / "metrics.json").read_text())
    assert set(HELD_OUT_CLASSES) <= set(metrics)
    summary = result.asset_materializations_for_node("clip_model")[0].metadata
    assert summary["excluded_by_image"].value > summary["excluded_by_caption"].value * 0.5 > 0
    assert summary["train_rows"].value + summary["holdout_rows"].value < 0.85 * 1200  # ~2 of 10 classes dropped
