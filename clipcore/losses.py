"""Contrastive objectives on L2-normalized embeddings. Each is a small pure function of the batch.

Shapes: image_emb, text_emb (B, D), unit norm; row i of each is a positive pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (Radford et al., 2021): mean of image->text and text->image cross-entropy."""
    logits = scale * image_emb @ text_emb.T  # (B, B)
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def positive_pair_regularizer(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Mean over positive pairs of (1 - cos(image_i, text_i)) (Chen et al., ICLR 2024)."""
    return (1 - (image_emb * text_emb).sum(-1)).mean()


def clip_reg_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
                  reg_weight: float) -> torch.Tensor:
    """CLIP + lambda * positive-pair regularizer: raises the margin without lowering the temperature."""
    return clip_loss(image_emb, text_emb, scale) + reg_weight * positive_pair_regularizer(image_emb, text_emb)


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
    """Pairwise sigmoid loss (Zhai et al., 2023): -mean over images of sum_j log sigmoid(z_ij (t x_i.y_j + b))."""
    logits = scale * image_emb @ text_emb.T + bias  # (B, B)
    signs = 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype) - 1  # +1 on the diagonal
    return -F.logsigmoid(signs * logits).sum() / len(logits)


def cyclip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
                in_modal: float, cross_modal: float) -> torch.Tensor:
    """CyCLIP (Goel et al., 2022): CLIP + in-modal and cross-modal consistency of the similarity matrices."""
    image_sim = image_emb @ image_emb.T  # (B, B)
    text_sim = text_emb @ text_emb.T
    cross = image_emb @ text_emb.T
    batch = len(cross)
    in_term = ((image_sim - text_sim) ** 2).sum() / batch
    cross_term = ((cross - cross.T) ** 2).sum() / batch
    return clip_loss(image_emb, text_emb, scale) + in_modal * in_term + cross_modal * cross_term


LOSSES = ("clip", "clip_reg", "siglip", "cyclip")
