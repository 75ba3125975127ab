"""The `training_converged` asset check on hand-made histories."""

import json

import pytest

from pipelines.assets.pretrain import training_converged
from pipelines.values import TrainedModel


def model(tmp_path, losses, warmup=5, scale=14.0) -> TrainedModel:
    history = [{"step": 10 * i, "loss": loss, "logit_scale": scale} for i, loss in enumerate(losses)]
    (tmp_path / "history.json").write_text(json.dumps(history))
    return TrainedModel(dir="", checkpoint="", holdout="", history=str(tmp_path / "history.json"),
                        model_name="", model_version="", loss="clip",
                        config={"train.warmup_steps": warmup}, checkpoint_sha256="")


@pytest.mark.parametrize(("losses", "warmup", "scale", "passed", "reason"), [
    ([5.0 - 0.1 * i for i in range(20)], 5, 14.0, True, None),
    # noisy: the last logged loss is above the first, the ends' means are not
    ([5.0, 4.0, *[4.0 - 0.1 * i for i in range(17)], 5.5], 5, 14.0, True, None),
    ([5.0 - 0.1 * i for i in range(20)], 500, 14.0, False, "inside the 500-step warm-up"),
    ([5.0 + 0.1 * i for i in range(20)], 5, 14.0, False, "did not fall"),
    ([5.0 - 0.1 * i for i in range(20)], 5, 150.0, False, "outside [1, 100]"),
])
def test_training_converged(tmp_path, losses, warmup, scale, passed, reason):
    result = training_converged(model(tmp_path, losses, warmup, scale))
    assert result.passed == passed
    assert (result.description is None) if reason is None else (reason in result.description)
