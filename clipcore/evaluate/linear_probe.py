"""Linear probe on frozen image features, CLIP's protocol: L-BFGS logistic regression, L2 strength searched on a
validation split, then refit on train + validation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def _fit(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression  # here: sklearn loads only when a probe is fitted

    return LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter).fit(features, labels)


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, c_grid: tuple[float, ...] = C_GRID, val_fraction: float = 0.2,
                 seed: int = 0, max_iter: int = 1000) -> dict[str, float]:
    """Top-1 of the best-C logistic regression on the test features; also returns the chosen C and its val top-1."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_features))
    n_val = max(1, int(round(val_fraction * len(order))))
    val, fit = order[:n_val], order[n_val:]
    scores = {c: _fit(train_features[fit], train_labels[fit], c, max_iter).score(train_features[val], train_labels[val])
              for c in c_grid}
    best = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularization
    model = _fit(train_features, train_labels, best, max_iter)
    return {"linear_probe_top1": float(model.score(test_features, test_labels)), "linear_probe_c": best,
            "linear_probe_val_top1": float(scores[best])}
