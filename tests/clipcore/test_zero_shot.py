"""Prompt ensembling and classification metrics against hand computations."""

import numpy as np
import pytest
import torch

from clipcore.evaluate.zero_shot import build_zero_shot_classifier, classification_metrics
from clipcore.model.prompts import load_class_names, load_templates


def test_prompt_ensemble_normalizes_each_template_then_the_mean():
    # class "a": templates embed to (3, 0) and (0, 1); normalized (1, 0) and (0, 1); mean (.5, .5); unit (.707, .707)
    table = {"x a": [3.0, 0.0], "y a": [0.0, 1.0], "x b": [0.0, -2.0], "y b": [0.0, -5.0]}
    weights = build_zero_shot_classifier(lambda texts: torch.tensor([table[t] for t in texts]), ["a", "b"],
                                         ["x {}", "y {}"])
    s = 2 ** -0.5
    assert weights.tolist() == [pytest.approx([s, s]), pytest.approx([0.0, -1.0])]


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 2])
    logits = np.array([[0.9, 0.1, 0.0],   # pred 0, correct
                       [0.1, 0.8, 0.3],   # pred 1 (truth 0), truth ranked 3rd
                       [0.2, 0.7, 0.1],   # pred 1, correct
                       [0.5, 0.1, 0.4]])  # pred 0 (truth 2), truth ranked 2nd
    m = classification_metrics(logits, labels, 3)
    assert m["top1"] == 0.5
    assert m["top5"] == 1.0  # k = min(5, classes) = 3 covers everything
    assert m["per_class_accuracy"] == [0.5, 1.0, 0.0]
    assert m["mean_per_class_recall"] == pytest.approx(0.5)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_shipped_prompts_load():
    templates = load_templates("fashion_mnist")
    assert templates and all(t.count("{}") == 1 for t in templates)
    assert load_class_names("fashion_mnist")[0] == "t-shirt" and len(load_class_names("fashion_mnist")) == 10
    with pytest.raises(FileNotFoundError, match="no prompt file"):
        load_templates("no_such_set")
