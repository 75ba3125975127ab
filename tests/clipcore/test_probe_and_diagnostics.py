"""Linear probe, margin diagnostics and confusion ranking against hand-made cases."""

import numpy as np
import pytest
import torch

from clipcore.evaluation import margin_diagnostics, top_confusions
from clipcore.linear_probe import linear_probe


def test_linear_probe_separates_separable_classes_and_fails_on_noise():
    rng = np.random.default_rng(0)
    centers = np.eye(3) * 6
    labels = rng.integers(0, 3, 600)
    features = centers[labels] + rng.normal(size=(600, 3))
    result = linear_probe(features[:400], labels[:400], features[400:], labels[400:])
    assert result["linear_probe_top1"] > 0.97 and result["linear_probe_c"] in (0.01, 0.1, 1.0, 10.0, 100.0)
    noise = rng.normal(size=(600, 3))  # features unrelated to labels: chance level
    assert linear_probe(noise[:400], labels[:400], noise[400:], labels[400:])["linear_probe_top1"] < 0.5


def test_margin_diagnostics_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = 2 ** -0.5
    text = torch.tensor([[s, s], [0.0, 1.0]])
    # sim = [[s, 0], [s, 1]]: positives s and 1; hardest negatives 0 (row 0) and s (row 1)
    d = margin_diagnostics(image, text)
    assert d["positive_cosine"] == pytest.approx((s + 1) / 2)
    assert d["hardest_negative_cosine"] == pytest.approx(s / 2)
    assert d["margin"] == pytest.approx(((s - 0) + (1 - s)) / 2)
    # modality gap: |mean(image) - mean(text)| = |(0.5, 0.5) - (s/2, (s+1)/2)|
    assert d["modality_gap"] == pytest.approx(np.hypot(0.5 - s / 2, 0.5 - (s + 1) / 2))


def test_top_confusions_ignores_the_diagonal():
    confusion = [[50, 3, 9], [1, 40, 0], [7, 2, 60]]
    assert top_confusions(confusion, 2) == [(0, 2, 9), (2, 0, 7)]
