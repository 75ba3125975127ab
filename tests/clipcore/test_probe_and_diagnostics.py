"""Linear probe, margin diagnostics and confusion ranking against hand-made cases."""

import numpy as np
import pytest
import torch

from clipcore.evaluate.evaluation import top_confusions
from clipcore.evaluate.linear_probe import linear_probe
from clipcore.model.margins import margin_diagnostics


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


def test_labeled_sets_from_image_folder_and_csv(tmp_path):
    from PIL import Image

    from clipcore.data.labeled_sets import csv_set, image_folder_set

    rows = ["path,label"]
    for label, value in (("bag", 30), ("coat", 200)):
        (tmp_path / "tree" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 30), (value, value, value)).save(tmp_path / "tree" / label / f"{i}.png")
            rows.append(f"tree/{label}/{i}.png,{label}")
    tree = image_folder_set(tmp_path / "tree", 28, 1)
    (images, labels), classes = tree.load(), tree.class_names
    assert images.shape == (4, 1, 28, 28) and classes == ["bag", "coat"] and labels.tolist() == [0, 0, 1, 1]
    assert abs(images[0].float().mean() - 30) <= 1 and abs(images[3].float().mean() - 200) <= 1  # luma rounding
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n")
    table = csv_set(tmp_path / "set.csv", 28, 1, ["coat", "bag"])
    (images, labels), classes = table.load(), table.class_names
    assert labels.tolist() == [1, 1, 0, 0] and classes == ["coat", "bag"]


def test_imagenet_templates_are_shipped():
    from clipcore.model.prompts import load_templates

    templates = load_templates("imagenet")
    assert len(templates) == 80 and "a bad photo of a {}." in templates
