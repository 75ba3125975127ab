"""The promotion decision by hand: only a suite average higher by more than min_improvement on the same evaluation
takes the alias."""

import pytest

from clipcore.evaluate.promotion import decide


def metrics(average: float) -> dict[str, float]:
    return {"eval_average": average, "zero_shot_top1": 0.5, "zero_shot_top5": 0.9,
            "zero_shot_mean_per_class_recall": 0.5, "retrieval_image_to_text_r1": 0.1,
            "task/mnist/main_metric": average, "task/mnist/zero_shot_top5": 0.7}


@pytest.mark.parametrize(("champion_average", "promoted"), [(None, True), (0.80, True), (0.85, False), (0.90, False)])
def test_only_a_better_candidate_is_promoted(champion_average, promoted):
    champion = None if champion_average is None else metrics(champion_average)
    d = decide("7", metrics(0.85), None if champion is None else "3", champion)
    assert d.promoted is promoted
    assert set(d.candidate) == {"eval_average", "zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall",
                                "task/mnist/main_metric"}  # what the gate compares, and each task's main metric
    if champion is None:
        assert "no champion before" in d.reason and d.champion_version is None
    else:
        assert d.champion_version == "3" and d.champion == champion
        assert (" beats champion v3" if promoted else "does not beat champion v3") in d.reason


@pytest.mark.parametrize(("candidate_average", "promoted", "verb"), [
    (0.850, False, "does not beat"),  # equal
    (0.855, False, "is not clearly better than"),  # +0.005: inside the ~0.01 spread of identical runs
    (0.860, False, "is not clearly better than"),  # +0.01 exactly: the gain must exceed min_improvement
    (0.8601, True, "beats"),
    (0.900, True, "beats"),
])
def test_the_gain_must_exceed_min_improvement(candidate_average, promoted, verb):
    d = decide("7", metrics(candidate_average), "3", metrics(0.85), min_improvement=0.01)
    assert d.promoted is promoted
    assert f" {verb} champion v3's 0.8500" in d.reason and "needed more than 0.0100" in d.reason
    assert d.reason.endswith("now @champion" if promoted else "v3 stays @champion")


def test_min_improvement_does_not_hold_back_a_first_champion():
    assert decide("1", metrics(0.1), None, None, min_improvement=0.5).promoted


@pytest.mark.parametrize(("champion_version", "champion_average"), [(None, None), ("3", 0.10)])
def test_registry_promote_false_never_promotes(champion_version, champion_average):
    """registry.promote: false (the study's runs): not even a first or a far better candidate takes the alias."""
    champion = None if champion_average is None else metrics(champion_average)
    d = decide("7", metrics(0.95), champion_version, champion, allowed=False)
    assert not d.promoted and d.champion_version == champion_version and d.champion is None
    assert "registry.promote is false" in d.reason
    assert d.reason.endswith("v3 stays @champion" if champion_version else "@champion stays unset")
