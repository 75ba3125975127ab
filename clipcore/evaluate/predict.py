"""Serving-time helpers: checked inputs, embeddings for raw image bytes and texts, zero-shot probabilities for any
labels. Every refusal is a ValueError naming the bad row, so a client learns which input to fix."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tokenizers import Tokenizer

from clipcore.data.images import build_resize, decode_image
from clipcore.evaluate.evaluation import class_embeddings, embed_images
from clipcore.model.clip_model import ClipModel

MAX_PIXELS = 50_000_000
"""Largest image served, in pixels, both as decoded and as resized for the model (ingest.max_pixels' default)."""
INPUT_COLUMNS = ("image", "text")


def input_column(columns: Iterable[str]) -> str:
    """The one input column of a request frame: `image` or `text`, never both (which would answer for only one)."""
    present = [c for c in INPUT_COLUMNS if c in set(columns)]
    if len(present) != 1:
        raise ValueError(f"expected exactly one of the columns `image` (PNG/JPEG bytes) or `text` (str); got "
                         f"{list(columns)}")
    return present[0]


def check_images(values: Iterable[Any]) -> list[bytes]:
    """Image payloads as bytes; a missing value or anything but bytes is refused, naming its row."""
    payloads = []
    for i, value in enumerate(values):
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ValueError(f"row {i}: `image` must be PNG/JPEG bytes, got {_describe(value)}")
        payloads.append(bytes(value))
    return _non_empty(payloads)


def check_texts(values: Iterable[Any]) -> list[str]:
    """Texts as str; a missing value, bytes or a number is refused (never embedded as "None" or "b'...'")."""
    texts = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"row {i}: `text` must be a string, got {_describe(value)}")
        texts.append(str(value))
    return _non_empty(texts)


def check_labels(labels: Sequence[Any] | None) -> list[str]:
    """Zero-shot class names: distinct non-empty strings (each becomes a column of the answer); None: none."""
    labels = [] if labels is None else list(labels)
    bad = [label for label in labels if not isinstance(label, str) or not label.strip()]
    if bad:
        raise ValueError(f"params `labels` must be non-empty strings; got {bad[:3]}")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"params `labels` must be distinct; repeated: {repeated[:3]}")
    return [str(label) for label in labels]


def _non_empty(values: list) -> list:
    if not values:
        raise ValueError("the request has no rows")
    return values


def _describe(value: Any) -> str:
    """A refused value for an error message: `a missing value` (None, or the NaN pandas turns it into), else its
    type and the start of its repr."""
    if value is None or (isinstance(value, float) and value != value):
        return "a missing value"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def embed_image_bytes(model: ClipModel, payloads: list[bytes], batch_size: int = 256,
                      max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """PNG/JPEG/... bytes -> (N, D) unit-norm embeddings, preprocessed as in evaluation (any PIL mode converted to
    the model's channels). Each image's size is checked from its header before it is decoded, as decoded and as
    resized for the model, so no aspect ratio makes it costly.

    Raises:
        ValueError: `"row <i>: <reason>: <detail>"` for the first image too large or undecodable.
    """
    resize = build_resize(model.config.image_size, model.config.channels)
    images = []
    for i, payload in enumerate(payloads):
        try:
            image = decode_image(payload, max_pixels, model.config.image_size)
            images.append(resize(image))  # (C, S, S) uint8
        except ValueError as err:
            raise ValueError(f"row {i}: {err}") from err
    return embed_images(model, torch.stack(images), batch_size)


@torch.no_grad()
def zero_shot_probabilities(model: ClipModel, tokenizer: Tokenizer, image_emb: torch.Tensor, labels: list[str],
                            templates: list[str]) -> torch.Tensor:
    """(N, C) softmax over `labels` of the learned-scale cosine logits against prompt-ensembled classifiers."""
    classifier = class_embeddings(model, tokenizer, labels, templates)
    return (model.scale().float().cpu() * image_emb @ classifier.T).softmax(-1)  # embeddings come back on the CPU
