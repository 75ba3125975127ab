"""Contrastive objectives on L2-normalized embeddings. Each is a small pure function of the batch.

Shapes: image_emb, text_emb (B, D), unit norm, this process's rows; row i of each is a positive pair.
In distributed training, image_all/text_all (N, D) are every process's rows (gathered with gradients) and
`offset` is where this process's rows start in them: each process scores its own rows against all columns
("local loss"), so memory grows linearly with the global batch, and the mean of the processes' losses
equals the single-process loss on the concatenated batch. Without them, the batch is the whole batch.
The positive-pair regularizer of `clip_reg` needs only this process's rows (a mean over its own pairs, so the
processes' mean is again the whole batch's); its `sq_euclid_raw` form reads image_raw/text_raw (B, D), the same rows'
projections before normalization, which are never gathered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipcore.config import LossConfig


def _columns(image_emb, text_emb, image_all, text_all, offset):
    image_all = image_emb if image_all is None else image_all
    text_all = text_emb if text_all is None else text_all
    positives = offset + torch.arange(len(image_emb), device=image_emb.device)  # (B,) column of each row's pair
    return image_all, text_all, positives


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
              image_all: torch.Tensor | None = None, text_all: torch.Tensor | None = None,
              offset: int = 0) -> torch.Tensor:
    """Symmetric InfoNCE (Radford et al., 2021): mean of image->text and text->image cross-entropy."""
    image_all, text_all, positives = _columns(image_emb, text_emb, image_all, text_all, offset)
    image_logits = scale * image_emb @ text_all.T  # (B, N)
    text_logits = scale * text_emb @ image_all.T  # (B, N)
    return (F.cross_entropy(image_logits, positives) + F.cross_entropy(text_logits, positives)) / 2


REG_FORMS = ("one_minus_cos", "sq_euclid_normalized", "sq_euclid_raw")  # LossConfig.reg_form's Literal


def positive_pair_regularizer(image_emb: torch.Tensor, text_emb: torch.Tensor, form: str = "one_minus_cos",
                              image_raw: torch.Tensor | None = None,
                              text_raw: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over positive pairs of their distance (Chen et al., ICLR 2024), in the form `form` names:

    - `one_minus_cos`: 1 - cos(u_i, v_i) on the unit-norm embeddings;
    - `sq_euclid_normalized`: ||u_i - v_i||^2 on the unit-norm embeddings, which is 2 (1 - cos): the first form
      times 2 (the same as doubling `reg_weight`);
    - `sq_euclid_raw`: ||a_i - b_i||^2 on `image_raw`/`text_raw`, the projections before normalization (it also pulls
      the two norms together, and shrinking both lowers it, which the contrastive term never sees).
    """
    if form == "one_minus_cos":
        return (1 - (image_emb * text_emb).sum(-1)).mean()
    if form == "sq_euclid_normalized":
        return ((image_emb - text_emb) ** 2).sum(-1).mean()
    if form == "sq_euclid_raw":
        if image_raw is None or text_raw is None:
            raise ValueError("loss.reg_form=sq_euclid_raw needs the projections before normalization "
                             "(image_raw, text_raw)")
        return ((image_raw - text_raw) ** 2).sum(-1).mean()
    raise ValueError(f"loss.reg_form: {form!r} is not one of {list(REG_FORMS)}")


def clip_reg_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, reg_weight: float,
                  image_all: torch.Tensor | None = None, text_all: torch.Tensor | None = None,
                  offset: int = 0, form: str = "one_minus_cos", image_raw: torch.Tensor | None = None,
                  text_raw: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP + lambda * positive-pair regularizer: raises the margin without lowering the temperature."""
    contrastive = clip_loss(image_emb, text_emb, scale, image_all, text_all, offset)
    return contrastive + reg_weight * positive_pair_regularizer(image_emb, text_emb, form, image_raw, text_raw)


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                image_all: torch.Tensor | None = None, text_all: torch.Tensor | None = None,
                offset: int = 0) -> torch.Tensor:
    """Pairwise sigmoid loss (Zhai et al., 2023): -1/B sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b))."""
    _, text_all, positives = _columns(image_emb, text_emb, image_all, text_all, offset)
    logits = scale * image_emb @ text_all.T + bias  # (B, N)
    signs = -torch.ones_like(logits)
    signs[torch.arange(len(logits), device=logits.device), positives] = 1.0
    return -F.logsigmoid(signs * logits).sum() / len(logits)


def cyclip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, in_modal: float,
                cross_modal: float, image_all: torch.Tensor | None = None, text_all: torch.Tensor | None = None,
                offset: int = 0) -> torch.Tensor:
    """CyCLIP (Goel et al., 2022): CLIP + in-modal and cross-modal consistency of the similarity matrices."""
    image_all, text_all, _ = _columns(image_emb, text_emb, image_all, text_all, offset)
    in_term = ((image_emb @ image_all.T - text_emb @ text_all.T) ** 2).sum() / len(image_emb)  # (B, N) summed
    cross_term = ((image_emb @ text_all.T - text_emb @ image_all.T) ** 2).sum() / len(image_emb)
    contrastive = clip_loss(image_emb, text_emb, scale, image_all, text_all, offset)
    return contrastive + in_modal * in_term + cross_modal * cross_term


@dataclass(frozen=True)
class LossSpec:
    """One objective: its function of (image_emb, text_emb, scale, bias, LossConfig, image_all, text_all, offset,
    raw=(image_raw, text_raw)) and the logit scale and bias it starts from (SigLIP: t = 10, b = -10; Zhai et al.,
    2023)."""

    fn: Callable[..., torch.Tensor]
    uses_bias: bool = False
    scale_init: float | None = None  # None: the model config's logit_scale_init (CLIP: 1/0.07)
    bias_init: float = 0.0


def _clip(i, t, scale, bias, config: LossConfig, *columns, raw=(None, None)):
    return clip_loss(i, t, scale, *columns)


def _clip_reg(i, t, scale, bias, config: LossConfig, *columns, raw=(None, None)):
    return clip_reg_loss(i, t, scale, config.reg_weight, *columns, config.reg_form, *raw)


def _siglip(i, t, scale, bias, config: LossConfig, *columns, raw=(None, None)):
    return siglip_loss(i, t, scale, bias, *columns)


def _cyclip(i, t, scale, bias, config: LossConfig, *columns, raw=(None, None)):
    return cyclip_loss(i, t, scale, config.cyclip_in_modal, config.cyclip_cross_modal, *columns)


LOSSES: dict[str, LossSpec] = {  # the names are LossConfig.name's Literal (checked when params are loaded)
    "clip": LossSpec(_clip),
    "clip_reg": LossSpec(_clip_reg),
    "siglip": LossSpec(_siglip, uses_bias=True, scale_init=10.0, bias_init=-10.0),
    "cyclip": LossSpec(_cyclip),
}


def contrastive_loss(config: LossConfig, image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
                     bias: torch.Tensor, image_all: torch.Tensor | None = None, text_all: torch.Tensor | None = None,
                     offset: int = 0, image_raw: torch.Tensor | None = None,
                     text_raw: torch.Tensor | None = None) -> torch.Tensor:
    """The objective `config.name` names, with its weights from `config` (`bias` is used by SigLIP only, the raw
    projections by `clip_reg` with `reg_form: sq_euclid_raw` only)."""
    return LOSSES[config.name].fn(image_emb, text_emb, scale, bias, config, image_all, text_all, offset,
                                  raw=(image_raw, text_raw))
