"""Zero-shot classification: prompt-ensembled class embeddings and the metrics computed from them, counted batch by
batch so that a test set of any size needs memory for one batch and a C x C confusion matrix only."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from clipcore.evaluate.metric_names import HELD_OUT_CLASSES

EXAMPLES_PER_CELL = 6
"""Test-set indices remembered per (truth, prediction) cell: the report's thumbnails of confused pairs."""


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


class ClassificationTally:
    """Classification results accumulated one batch of logits at a time: top-1 and top-5 hits, the confusion matrix
    (rows = truth) and the first EXAMPLES_PER_CELL test-set indices of every (truth, prediction) cell."""

    def __init__(self, num_classes: int, examples_per_cell: int = EXAMPLES_PER_CELL):
        self.num_classes, self.examples_per_cell = num_classes, examples_per_cell
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.count = self.top1_hits = self.top5_hits = 0
        self.examples: dict[tuple[int, int], list[int]] = {}

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """Count one batch: (B, C) logits of the test images numbered from `self.count` on, (B,) true labels."""
        labels = np.asarray(labels)
        order = np.argsort(-logits, axis=1)  # (B, C), best first; each row is sorted on its own, whatever the batch
        pred = order[:, 0]
        k = min(5, self.num_classes)
        np.add.at(self.confusion, (labels, pred), 1)
        self.top1_hits += int((pred == labels).sum())
        self.top5_hits += int((order[:, :k] == labels[:, None]).any(1).sum())
        self._remember_examples(labels * self.num_classes + pred)
        self.count += len(labels)

    def _remember_examples(self, cells: np.ndarray) -> None:
        """Add the batch's first indices of each (truth, prediction) cell that still has room."""
        by_cell = np.argsort(cells, kind="stable")  # (B,) batch rows grouped by cell, in set order within a cell
        found, starts = np.unique(cells[by_cell], return_index=True)
        for cell, start in zip(found.tolist(), starts.tolist(), strict=True):
            have = self.examples.setdefault(divmod(cell, self.num_classes), [])
            rows = by_cell[start : start + max(0, self.examples_per_cell - len(have))]
            have.extend(self.count + int(r) for r in rows if cells[r] == cell)  # the slice may run into the next cell

    def result(self) -> dict:
        """Top-1, top-5, mean per-class recall, per-class accuracy, the confusion matrix and the examples per cell.

        Raises:
            ValueError: nothing was counted (an empty test set).
        """
        if self.count == 0:
            raise ValueError("the test set has no images")
        support = self.confusion.sum(1)
        per_class = np.divide(np.diag(self.confusion), support, out=np.zeros(self.num_classes), where=support > 0)
        return {
            "top1": self.top1_hits / self.count,
            "top5": self.top5_hits / self.count,
            "mean_per_class_recall": float(per_class[support > 0].mean()),
            "per_class_accuracy": per_class.tolist(),
            "confusion": self.confusion.tolist(),
            "examples": {cell: rows for cell, rows in self.examples.items() if rows},
            "count": self.count,
        }


class HeldOutClassTally:
    """Zero-shot top-1 split by classes held out of training (`unseen`) and the others, counted batch by batch: the
    unseen classes' images classified among all classes and among the unseen classes only, and the seen classes'
    images among all classes (HELD_OUT_CLASSES in clipcore.evaluate.metric_names)."""

    def __init__(self, num_classes: int, unseen: list[int]):
        self.unseen = np.array(sorted(set(unseen)), dtype=np.int64)  # (U,)
        self.is_unseen = np.zeros(num_classes, dtype=bool)
        self.is_unseen[self.unseen] = True
        self.hits = {"unseen": 0, "seen": 0, "among_unseen": 0}
        self.counts = {"unseen": 0, "seen": 0}

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """Count one batch: (B, C) logits and (B,) true labels."""
        labels = np.asarray(labels)
        pred = np.argsort(-logits, axis=1)[:, 0]  # as ClassificationTally: the same top-1
        unseen = self.is_unseen[labels]  # (B,)
        for part, rows in (("unseen", unseen), ("seen", ~unseen)):
            self.hits[part] += int((pred[rows] == labels[rows]).sum())
            self.counts[part] += int(rows.sum())
        among = self.unseen[np.argsort(-logits[unseen][:, self.unseen], axis=1)[:, 0]]  # (B_unseen,) best unseen
        self.hits["among_unseen"] += int((among == labels[unseen]).sum())

    def result(self) -> dict[str, float]:
        """The three top-1 values under their metrics.json names.

        Raises:
            ValueError: the test set has no image of an unseen (or of a seen) class.
        """
        for part, count in self.counts.items():
            if count == 0:
                raise ValueError(f"the test set has no image of a {part} class (train.exclude_classes)")
        values = (self.hits["unseen"] / self.counts["unseen"], self.hits["seen"] / self.counts["seen"],
                  self.hits["among_unseen"] / self.counts["unseen"])
        return dict(zip(HELD_OUT_CLASSES, values, strict=True))


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """`ClassificationTally.result` of one (N, C) block of logits and its (N,) labels."""
    tally = ClassificationTally(num_classes)
    tally.update(logits, labels)
    return tally.result()
