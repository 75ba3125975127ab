"""Serving-time helpers: embeddings for raw image bytes and texts, zero-shot probabilities for any labels."""

from __future__ import annotations

import io

import torch
from PIL import Image
from tokenizers import Tokenizer

from clipcore.evaluation import embed_texts
from clipcore.images import build_preprocess
from clipcore.model import ClipModel
from clipcore.zero_shot import build_zero_shot_classifier


@torch.no_grad()
def embed_image_bytes(model: ClipModel, payloads: list[bytes], batch_size: int = 256) -> torch.Tensor:
    """PNG/JPEG/... bytes -> (N, D) unit-norm embeddings; raises ValueError naming the bad row."""
    preprocess = build_preprocess(model.config.image_size, model.config.channels)
    pixels = []
    for i, payload in enumerate(payloads):
        try:
            with Image.open(io.BytesIO(payload)) as image:
                pixels.append(preprocess(image))
        except (OSError, TypeError) as err:
            raise ValueError(f"row {i}: not a decodable image ({err})") from err
    batch = torch.stack(pixels)  # (N, C, S, S)
    return torch.cat([model.encode_image(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)])


@torch.no_grad()
def zero_shot_probabilities(model: ClipModel, tokenizer: Tokenizer, image_emb: torch.Tensor, labels: list[str],
                            templates: list[str]) -> torch.Tensor:
    """(N, C) softmax over `labels` of the learned-scale cosine logits against prompt-ensembled classifiers."""
    classifier = build_zero_shot_classifier(lambda t: embed_texts(model, tokenizer, t), labels, templates)
    return (model.scale() * image_emb @ classifier.T).softmax(-1)
