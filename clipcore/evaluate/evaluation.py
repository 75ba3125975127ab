"""Evaluation of a trained model: zero-shot classification, retrieval, the margin diagnostics and a linear probe.

Labeled sets are read one batch at a time (see clipcore.data.labeled_sets) and scored on the model's device, with
bf16 autocast on CUDA: memory follows the batch size, not the test set's size. Only the linear probe keeps (N, D)
float embeddings of its sets, never their images."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from tokenizers import Tokenizer

from clipcore.data.labeled_sets import Batch, LabeledSet
from clipcore.evaluate.linear_probe import linear_probe
from clipcore.evaluate.metric_names import ZERO_SHOT
from clipcore.evaluate.retrieval import retrieval_metrics
from clipcore.evaluate.zero_shot import ClassificationTally, HeldOutClassTally, build_zero_shot_classifier
from clipcore.model.clip_model import ClipModel
from clipcore.model.margins import margin_diagnostics
from clipcore.model.tokenizer import tokenize


def _autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (as training); the CPU computes in float32, exactly as the naive references."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_image_batch(model: ClipModel, images: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) or (B, S, S) uint8 images -> (B, D) float32 unit-norm embeddings on the model's device."""
    device = model_device(model)
    pixels = model.normalize(images.to(device, non_blocking=True))  # uint8 travels: 4x fewer bytes than floats
    with _autocast(device):
        return model.encode_image(pixels).float()


@torch.no_grad()
def encode_text_batch(model: ClipModel, tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """Captions -> (B, D) float32 unit-norm embeddings on the model's device."""
    device = model_device(model)
    ids = tokenize(tokenizer, texts).to(device, non_blocking=True)  # (B, L)
    with _autocast(device):
        return model.encode_text(ids).float()


def embed_images(model: ClipModel, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """(N, C, S, S) or (N, S, S) uint8 images -> (N, D) unit-norm embeddings, on the CPU."""
    return torch.cat([encode_image_batch(model, batch).cpu() for batch in images.split(batch_size)])


def embed_texts(model: ClipModel, tokenizer: Tokenizer, texts: list[str], batch_size: int = 1000) -> torch.Tensor:
    """Captions -> (N, D) unit-norm embeddings, on the CPU."""
    return torch.cat([encode_text_batch(model, tokenizer, texts[i : i + batch_size]).cpu()
                      for i in range(0, len(texts), batch_size)])


def embed_labeled_set(model: ClipModel, labeled: LabeledSet, batch_size: int = 1000) -> tuple[torch.Tensor, np.ndarray]:
    """(N, D) CPU embeddings and (N,) labels of a labeled set, read batch by batch (the linear probe's features)."""
    embeddings, labels = [], []
    for images, targets in labeled.batches(batch_size):
        embeddings.append(encode_image_batch(model, images).cpu())
        labels.append(targets)
    if not labels:
        raise ValueError("the labeled set has no images")
    return torch.cat(embeddings), np.concatenate(labels)


def class_embeddings(model: ClipModel, tokenizer: Tokenizer, class_names: list[str], templates: list[str],
                     batch_size: int = 1000) -> torch.Tensor:
    """The (C, D) prompt-ensembled zero-shot classifier of `class_names`, on the CPU."""
    return build_zero_shot_classifier(lambda texts: embed_texts(model, tokenizer, texts, batch_size), class_names,
                                      templates)


def zero_shot(model: ClipModel, tokenizer: Tokenizer, test_set: LabeledSet, templates: list[str],
              batch_size: int = 1000, keep_embeddings: bool = False,
              unseen: list[int] | None = None) -> tuple[dict, Batch | None]:
    """Prompt-ensembled zero-shot classification of `test_set`, one batch at a time.

    Returns:
        (ClassificationTally.result's dict, plus with `unseen` (labels of classes held out of training) the
        HeldOutClassTally's under "held_out_classes"; with `keep_embeddings` the (N, D) CPU image embeddings and (N,)
        labels (the linear probe's test features), else None).
    """
    classifier = class_embeddings(model, tokenizer, test_set.class_names, templates, batch_size)  # (C, D)
    classifier = classifier.to(model_device(model))
    tally = ClassificationTally(len(test_set.class_names))
    split = HeldOutClassTally(len(test_set.class_names), unseen) if unseen else None
    embeddings, labels_seen = [], []
    for images, labels in _checked(test_set.batches(batch_size), len(test_set.class_names)):
        image_emb = encode_image_batch(model, images)  # (B, D)
        logits = (image_emb @ classifier.T).cpu().numpy()  # (B, C)
        tally.update(logits, labels)
        if split:
            split.update(logits, labels)
        if keep_embeddings:
            embeddings.append(image_emb.cpu())
            labels_seen.append(labels)
    result = tally.result()  # raises on an empty set, before the concatenations below
    if split:
        result["held_out_classes"] = split.result()
    return result, (torch.cat(embeddings), np.concatenate(labels_seen)) if keep_embeddings else None


def _checked(batches: Iterable[tuple[torch.Tensor, np.ndarray]], num_classes: int) -> Iterator:
    """The batches, refusing a label outside the class list (which would index past the confusion matrix)."""
    for images, labels in batches:
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"label {int(labels.max())} is outside the {num_classes} class names")
        yield images, labels


def class_label(name: str, class_names: list[str]) -> int:
    """The label of class `name` in the test set (a class held out of training must be one of its classes)."""
    if name not in class_names:
        raise ValueError(f"train.exclude_classes: {name!r} is not a class of the test set ({class_names})")
    return class_names.index(name)


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
    test_set: LabeledSet,
    templates: list[str],
    holdout_images: torch.Tensor,  # (M, ...) uint8: the pretrain stage's held-out pairs (train.holdout_size)
    holdout_captions: list[str],
    batch_size: int = 1000,
    probe: LabeledSet | None = None,  # images and labels to fit a linear probe on
    unseen_classes: tuple[str, ...] = (),  # classes held out of training (train.exclude_classes)
) -> dict:
    """Zero-shot classification on the test set, retrieval and diagnostics on the held-out pairs, on the model's
    device.

    Returns:
        {"metrics": flat dict of floats (the keys of outputs/metrics.json), "per_class_accuracy", "confusion",
         "examples" ((truth, prediction) -> first test-set indices), "test_images", "retrieval_similarity"} -- the
        latter for reports.
    """
    unseen = [class_label(name, test_set.class_names) for name in unseen_classes]
    classes, test_features = zero_shot(model, tokenizer, test_set, templates, batch_size,
                                       keep_embeddings=probe is not None, unseen=unseen)
    pair_images = embed_images(model, holdout_images, batch_size)  # (M, D)
    pair_texts = embed_texts(model, tokenizer, holdout_captions, batch_size)  # (M, D)
    retrieval = retrieval_metrics(pair_images.numpy(), pair_texts.numpy(), np.arange(len(pair_texts)))
    metrics = {
        **zero_shot_metrics(classes),
        **{f"retrieval_{k}": v for k, v in retrieval.items()},
        **margin_diagnostics(pair_images, pair_texts),
        "temperature": float(1 / model.scale().detach().float().cpu()),
        **classes.get("held_out_classes", {}),
    }
    if probe is not None:
        probe_emb, probe_labels = embed_labeled_set(model, probe, batch_size)  # (P, D), (P,)
        test_emb, test_labels = test_features  # (N, D), (N,)
        metrics.update(linear_probe(probe_emb.numpy(), probe_labels, test_emb.numpy(), test_labels))
    return {
        "metrics": metrics,
        "per_class_accuracy": classes["per_class_accuracy"],
        "confusion": classes["confusion"],
        "examples": classes["examples"],
        "test_images": classes["count"],
        "retrieval_similarity": (pair_images @ pair_texts.T).numpy(),
    }
