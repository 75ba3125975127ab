"""The strict params loader: unknown keys, wrong types and values out of range fail at load."""

import dataclasses
import typing
from pathlib import Path

import pytest

from clipcore.config import IngestConfig, PipelineConfig, apply_overrides, flatten, load_params
from clipcore.params import check_ranges


def config_classes(cls: type = PipelineConfig) -> list[type]:
    """Every section dataclass under `cls`, nested ones (filter.clip_score) too."""
    nested = [h for h in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(h)]
    return [c for h in nested for c in (h, *config_classes(h))]


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


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("override", "message"), [
    ("train.batch_size=-4", "params.train.batch_size: -4 is not >= 1"),  # looped forever at 100% CPU
    ("train.batch_size=0", "params.train.batch_size: 0 is not >= 1"),  # ZeroDivisionError after the work was done
    ("ingest.shard_size=0", "params.ingest.shard_size: 0 is not >= 1"),
    ("ingest.max_side=0", "params.ingest.max_side: 0 is not >= 1"),
    ("train.epochs=0", "params.train.epochs: 0.0 is not > 0"),  # trained one step and registered a version
    ("train.epochs=-1", "params.train.epochs: -1.0 is not > 0"),
    ("train.lr=0", "params.train.lr: 0.0 is not > 0"),
    ("train.lr=.nan", "params.train.lr: nan is not a finite number"),
    ("train.epochs=.inf", "params.train.epochs: inf is not a finite number"),
    ("train.betas=[0.9, 1.0]", "params.train.betas: 1.0 is not < 1"),
    ("train.seed=-1", "params.train.seed: -1 is not >= 0"),
    ("data.corrupt_fraction=1.5", "params.data.corrupt_fraction: 1.5 is not <= 1"),
    ("ingest.timeout=0", "params.ingest.timeout: 0.0 is not > 0"),
    ("filter.clip_score.top_fraction=0", "params.filter.clip_score.top_fraction: 0.0 is not > 0"),
    ("filter.near_duplicate_bits=65", "params.filter.near_duplicate_bits: 65 is not <= 64"),
    ("model.channels=2", "params.model.channels: 2 is not one of [1, 3]"),
    ("eval.max_test_images=0", "params.eval.max_test_images: 0 is not >= 1"),
])
def test_out_of_range_values_fail_at_load(override, message):
    with pytest.raises(ValueError) as err:
        load_params(ROOT / "params.yaml", [override])
    assert str(err.value) == message


def test_out_of_range_values_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  batch_size: -4\n")
    with pytest.raises(ValueError, match=r"params.yaml.train.batch_size: -4 is not >= 1$"):
        load_params(path)


def test_none_passes_optional_ranges_and_edges_are_inclusive():
    cfg = apply_overrides(PipelineConfig(), ["train.max_rows=null", "filter.clip_score.threshold=-1",
                                             "data.corrupt_fraction=0", "train.checkpoint_every=0",
                                             "eval.probe_size=0"])
    assert cfg.train.max_rows is None and cfg.filter.clip_score.threshold == -1.0


def test_every_numeric_field_declares_a_range():
    def numeric(annotation) -> bool:
        return any(t in (int, float) for t in (annotation, *typing.get_args(annotation)))

    unbounded = [f"{cls.__name__}.{f.name}" for cls in config_classes() for f in dataclasses.fields(cls)
                 if numeric(typing.get_type_hints(cls)[f.name]) and "limits" not in f.metadata]
    assert not unbounded


@pytest.mark.parametrize("name", ["params.yaml", "configs/minilm_lit.yaml", "configs/vit_b_32.yaml",
                                  "configs/vit.yaml"])
def test_shipped_params_and_defaults_are_in_range(name):
    check_ranges(load_params(ROOT / name))
    check_ranges(PipelineConfig())


def test_check_ranges_catches_a_replaced_field():
    config = dataclasses.replace(IngestConfig(), shard_size=0)
    with pytest.raises(ValueError, match=r"^ingest.shard_size: 0 is not >= 1$"):
        check_ranges(config, "ingest")


def test_a_missing_params_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_params(tmp_path / "no.yaml")
    (tmp_path / "child.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match="gone.yaml does not exist"):
        load_params(tmp_path / "child.yaml")
