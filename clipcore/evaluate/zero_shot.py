"""Zero-shot classification: prompt-ensembled class embeddings and the metrics computed from them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def build_zero_shot_classifier(
    encode_text: Callable[[list[str]], torch.Tensor], class_names: list[str], templates: list[str]
) -> torch.Tensor:
    """(C, D) class weights: per class, normalize each template's embedding, average, renormalize.

    `encode_text` maps a list of strings to (N, D) embeddings (normalized or not; each is normalized here).
    """
    weights = []
    for name in class_names:
        emb = F.normalize(encode_text([t.format(name) for t in templates]).float(), dim=-1)  # (T, D)
        weights.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(weights)  # (C, D)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Top-1, top-5, mean per-class recall, per-class accuracy and the confusion matrix (rows = truth)."""
    labels = np.asarray(labels)
    order = np.argsort(-logits, axis=1)  # (N, C), best first
    pred = order[:, 0]
    k = min(5, num_classes)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    support = confusion.sum(1)
    per_class = np.divide(np.diag(confusion), support, out=np.zeros(num_classes), where=support > 0)
    return {
        "top1": float((pred == labels).mean()),
        "top5": float((order[:, :k] == labels[:, None]).any(1).mean()),
        "mean_per_class_recall": float(per_class[support > 0].mean()),
        "per_class_accuracy": per_class.tolist(),
        "confusion": confusion.tolist(),
        "predictions": pred,
    }
