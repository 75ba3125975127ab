"""The strict params loader."""

import pytest

from clipcore.config import PipelineConfig, apply_overrides, flatten, load_params


def test_load_params_with_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("loss:\n  name: clip_reg\ntrain:\n  lr: 1e-3\n  epochs: 2\n")
    cfg = load_params(path, ["train.batch_size=64", "train.betas=[0.9, 0.95]"])
    assert cfg.loss.name == "clip_reg" and cfg.train.lr == 1e-3 and cfg.train.epochs == 2.0
    assert cfg.train.batch_size == 64 and cfg.train.betas == (0.9, 0.95)
    assert cfg.model == PipelineConfig().model


@pytest.mark.parametrize(("text", "message"), [
    ("loss:\n  nmae: clip\n", "unknown key"),
    ("trian:\n  lr: 1\n", "unknown key"),
    ("train:\n  batch_size: big\n", "expected int"),
])
def test_load_params_rejects_bad_files(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_params(path)


def test_overrides_reject_unknown_keys():
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(PipelineConfig(), ["train.epochz=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides(PipelineConfig(), ["train.epochs"])


def test_flatten_covers_every_field():
    flat = flatten(PipelineConfig())
    assert flat["loss.name"] == "clip" and "train.lr" in flat and "model.embed_dim" in flat
