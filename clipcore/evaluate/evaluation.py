"""Evaluation of a trained model: zero-shot classification, retrieval and the margin diagnostics."""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer

from clipcore.data.images import normalize_uint8
from clipcore.evaluate.linear_probe import linear_probe
from clipcore.evaluate.metric_names import ZERO_SHOT
from clipcore.evaluate.retrieval import retrieval_metrics
from clipcore.evaluate.zero_shot import build_zero_shot_classifier, classification_metrics
from clipcore.model.clip_model import ClipModel
from clipcore.model.margins import margin_diagnostics
from clipcore.model.tokenizer import tokenize


@torch.no_grad()
def _embed(encode, prepare, items, batch_size: int, device: torch.device) -> torch.Tensor:
    """Encode `items` `batch_size` at a time: (N, D) embeddings on the CPU."""
    return torch.cat([encode(prepare(items[i : i + batch_size]).to(device)).float().cpu()
                      for i in range(0, len(items), batch_size)])


def embed_images(model: ClipModel, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """(N, C, S, S) or (N, S, S) uint8 images -> (N, D) unit-norm embeddings, on the CPU."""
    return _embed(model.encode_image, normalize_uint8, images, batch_size, next(model.parameters()).device)


def embed_texts(model: ClipModel, tokenizer: Tokenizer, texts: list[str], batch_size: int = 1000) -> torch.Tensor:
    """Captions -> (N, D) unit-norm embeddings, on the CPU."""
    return _embed(model.encode_text, lambda t: tokenize(tokenizer, t), texts, batch_size,
                  next(model.parameters()).device)


def class_embeddings(model: ClipModel, tokenizer: Tokenizer, class_names: list[str], templates: list[str],
                     batch_size: int = 1000) -> torch.Tensor:
    """The (C, D) prompt-ensembled zero-shot classifier of `class_names`."""
    return build_zero_shot_classifier(lambda texts: embed_texts(model, tokenizer, texts, batch_size), class_names,
                                      templates)


def zero_shot(model: ClipModel, tokenizer: Tokenizer, images: torch.Tensor, labels: np.ndarray,
              class_names: list[str], templates: list[str], batch_size: int = 1000) -> tuple[dict, torch.Tensor]:
    """Prompt-ensembled zero-shot classification: (classification_metrics's dict, (N, D) image embeddings)."""
    classifier = class_embeddings(model, tokenizer, class_names, templates, batch_size)  # (C, D)
    image_emb = embed_images(model, images, batch_size)  # (N, D)
    return classification_metrics((image_emb @ classifier.T).numpy(), labels, len(class_names)), image_emb


def zero_shot_metrics(classes: dict) -> dict[str, float]:
    """classification_metrics's top-1, top-5 and mean per-class recall under their metrics.json names."""
    return dict(zip(ZERO_SHOT, (classes["top1"], classes["top5"], classes["mean_per_class_recall"]), strict=True))


def top_confusions(confusion: list[list[int]], k: int = 3) -> list[tuple[int, int, int]]:
    """The k most frequent (true, predicted, count) off-diagonal cells of a confusion matrix."""
    matrix = np.asarray(confusion).copy()
    np.fill_diagonal(matrix, 0)
    flat = np.argsort(-matrix, axis=None)[:k]
    return [(int(i), int(j), int(matrix[i, j])) for i, j in zip(*np.unravel_index(flat, matrix.shape), strict=True)]


def evaluate_model(
    model: ClipModel,
    tokenizer: Tokenizer,
    test_images: torch.Tensor,  # (N, S, S) or (N, C, S, S) uint8
    test_labels: np.ndarray,  # (N,)
    class_names: list[str],
    templates: list[str],
    holdout_images: torch.Tensor,  # (M, ...) uint8
    holdout_captions: list[str],
    batch_size: int = 1000,
    probe: tuple[torch.Tensor, np.ndarray] | None = None,  # (images, labels) to fit a linear probe on
) -> dict:
    """Zero-shot classification on the test set, retrieval and diagnostics on the held-out pairs.

    Returns:
        {"metrics": flat dict of floats (the keys of outputs/metrics.json), "per_class_accuracy",
         "confusion", "predictions", "retrieval_similarity"} -- the latter for reports.
    """
    classes, image_emb = zero_shot(model, tokenizer, test_images, test_labels, class_names, templates, batch_size)
    pair_images = embed_images(model, holdout_images, batch_size)  # (M, D)
    pair_texts = embed_texts(model, tokenizer, holdout_captions, batch_size)  # (M, D)
    retrieval = retrieval_metrics(pair_images.numpy(), pair_texts.numpy(), np.arange(len(pair_texts)))
    metrics = {
        **zero_shot_metrics(classes),
        **{f"retrieval_{k}": v for k, v in retrieval.items()},
        **margin_diagnostics(pair_images, pair_texts),
        "temperature": float(1 / model.scale().detach()),
    }
    if probe is not None:
        probe_emb = embed_images(model, probe[0], batch_size)
        metrics.update(linear_probe(probe_emb.numpy(), probe[1], image_emb.numpy(), np.asarray(test_labels)))
    return {
        "metrics": metrics,
        "per_class_accuracy": classes["per_class_accuracy"],
        "confusion": classes["confusion"],
        "predictions": classes["predictions"],
        "retrieval_similarity": (pair_images @ pair_texts.T).numpy(),
    }
