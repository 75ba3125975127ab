"""One registered model per dataset: the default registry name is clip-<dataset>, a second dataset's run registers
under its own name and never moves the first dataset's `champion`; the CLIP-score filter's default scorer is the
same dataset's champion. Real MLflow on a sqlite store in tmp_path."""

import pytest
from mlflow import MlflowClient

from clipcore.config import FilterConfig, load_params
from clipcore.evaluate.promotion import decide
from clipcore.model.clip_model import checkpoint_digest
from pipelines.model_commands import champion_of, model_name_of
from pipelines.provenance import champion_uri, registered_model_name, with_default_scorer
from pipelines.tracking import (
    champion_version,
    log_and_register,
    record_decision,
    tracked_run,
)

FASHION, DIGITS = "data/fashion_mnist/captions.csv", "/home/me/digits.csv"


@pytest.mark.parametrize(("model_name", "ingest_input", "name"), [
    ("", FASHION, "clip-fashion_mnist"),  # the default dataset
    ("", DIGITS, "clip-digits"),
    ("", "/srv/my photos@home/", "clip-my-photos-home"),  # characters a models:/ URI cannot carry
    ("mine", DIGITS, "mine"),  # registry.model_name, when set, is the name
])
def test_registered_name_is_clip_dash_dataset_unless_set(model_name, ingest_input, name):
    assert registered_model_name(model_name, ingest_input) == name
    assert champion_uri(model_name, ingest_input) == f"models:/{name}@champion"


def test_the_default_params_name_the_fashion_mnist_model_and_its_champion_scores_the_filter():
    config = load_params("params.yaml")
    assert config.registry.model_name == "" and config.filter.clip_score.model == ""
    assert model_name_of(config) == "clip-fashion_mnist"
    assert champion_of(config) == "models:/clip-fashion_mnist@champion"
    scored = with_default_scorer(FilterConfig(), "", DIGITS)
    assert scored.clip_score.model == "models:/clip-digits@champion"  # the same dataset's champion
    given = FilterConfig()
    given.clip_score.model = "/models/hf-clip"
    assert with_default_scorer(given, "", DIGITS).clip_score.model == "/models/hf-clip"


@pytest.fixture
def store(mlflow_store):
    uri, checkpoint = mlflow_store
    return MlflowClient(uri), checkpoint


def register(checkpoint, ingest_input: str) -> tuple[str, str]:
    """What the clip_model asset does: register under the dataset's name (registry.model_name empty)."""
    name = registered_model_name("", ingest_input)
    with tracked_run(run_name="pretrain-clip"):
        _, version = log_and_register(checkpoint, name, checkpoint_digest(checkpoint))
    return name, version


def gate(name: str, version: str, average: float, champion_average: float | None, min_improvement: float = 0.01):
    """What the champion asset does, with the champion's average given (it re-measures it on the same suite)."""
    before = champion_version(name)
    decision = decide(version, {"eval_average": average, "zero_shot_top1": average, "zero_shot_top5": 0.9,
                                "zero_shot_mean_per_class_recall": average}, before,
                      None if champion_average is None else {"eval_average": champion_average,
                                                             "zero_shot_top1": champion_average,
                                                             "zero_shot_top5": 0.9,
                                                             "zero_shot_mean_per_class_recall": champion_average},
                      min_improvement=min_improvement)
    record_decision(name, decision)
    return decision


def test_a_second_dataset_registers_under_its_own_name_and_leaves_the_first_champion(store):
    client, checkpoint = store
    fashion, v1 = register(checkpoint, FASHION)
    assert (fashion, v1) == ("clip-fashion_mnist", "1")
    assert gate(fashion, v1, 0.86, None).promoted
    fashion_v2 = register(checkpoint, FASHION)[1]
    assert not gate(fashion, fashion_v2, 0.865, 0.86).promoted  # +0.005: inside the run-to-run spread
    assert champion_version(fashion) == "1"

    digits, d1 = register(checkpoint, DIGITS)  # an experiment on other data
    assert (digits, d1) == ("clip-digits", "1")  # its own registered model, its own version numbers
    decision = gate(digits, d1, 0.09, None)  # no digits champion yet: never compared with Fashion's
    assert decision.promoted and decision.champion_version is None
    assert str(client.get_model_version_by_alias("clip-fashion_mnist", "champion").version) == "1"  # where it was
    assert str(client.get_model_version_by_alias("clip-digits", "champion").version) == "1"
    assert sorted(int(v.version) for v in client.search_model_versions("name='clip-fashion_mnist'")) == [1, 2]
    assert {m.name for m in client.search_registered_models()} == {"clip-fashion_mnist", "clip-digits"}
