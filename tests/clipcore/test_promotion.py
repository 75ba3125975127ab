"""The promotion decision by hand: only a strictly higher suite average on the same evaluation takes the alias."""

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
