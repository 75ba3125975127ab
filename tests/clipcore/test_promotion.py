"""The promotion decision by hand: only a strictly higher zero-shot top-1 on the same test set takes the alias."""

import pytest

from clipcore.evaluate.promotion import decide


def metrics(top1: float) -> dict[str, float]:
    return {"zero_shot_top1": top1, "zero_shot_top5": 0.9, "zero_shot_mean_per_class_recall": top1,
            "retrieval_image_to_text_r1": 0.1}


@pytest.mark.parametrize(("champion_top1", "promoted"), [(None, True), (0.80, True), (0.85, False), (0.90, False)])
def test_only_a_better_candidate_is_promoted(champion_top1, promoted):
    champion = None if champion_top1 is None else metrics(champion_top1)
    d = decide("7", metrics(0.85), None if champion is None else "3", champion)
    assert d.promoted is promoted
    assert set(d.candidate) == {"zero_shot_top1", "zero_shot_top5", "zero_shot_mean_per_class_recall"}
    if champion is None:
        assert "no champion before" in d.reason and d.champion_version is None
    else:
        assert d.champion_version == "3" and d.champion == champion
        assert (" beats champion v3" if promoted else "does not beat champion v3") in d.reason
