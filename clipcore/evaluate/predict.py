"""Serving-time helpers: embeddings for raw image bytes and texts, zero-shot probabilities for any labels."""

from __future__ import annotations

import io

import torch
from PIL import Image
from tokenizers import Tokenizer

from clipcore.data.images import build_resize
from clipcore.evaluate.evaluation import class_embeddings, embed_images
from clipcore.model.clip_model import ClipModel


def embed_image_bytes(model: ClipModel, payloads: list[bytes], batch_size: int = 256) -> torch.Tensor:
    """PNG/JPEG/... bytes -> (N, D) unit-norm embeddings, preprocessed as in evaluation; raises ValueError naming
    the bad row."""
    resize = build_resize(model.config.image_size, model.config.channels)
    images = []
    for i, payload in enumerate(payloads):
        try:
            with Image.open(io.BytesIO(payload)) as image:
                images.append(resize(image))  # (C, S, S) uint8
        except (OSError, TypeError) as err:
            raise ValueError(f"row {i}: not a decodable image ({err})") from err
    return embed_images(model, torch.stack(images), batch_size)


@torch.no_grad()
def zero_shot_probabilities(model: ClipModel, tokenizer: Tokenizer, image_emb: torch.Tensor, labels: list[str],
                            templates: list[str]) -> torch.Tensor:
    """(N, C) softmax over `labels` of the learned-scale cosine logits against prompt-ensembled classifiers."""
    classifier = class_embeddings(model, tokenizer, labels, templates)
    return (model.scale() * image_emb @ classifier.T).softmax(-1)
