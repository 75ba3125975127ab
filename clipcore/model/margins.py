"""The geometry of a batch of aligned embeddings (Chen et al., ICLR 2024): what training logs and evaluation
reports, so both import it from here."""

from __future__ import annotations

import torch


def margin_diagnostics(image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict[str, float]:
    """Chen et al.'s quantities on aligned pairs: positive cosine, hardest-negative cosine, their margin,
    and the modality gap (distance between the two modalities' mean embeddings)."""
    sim = image_emb @ text_emb.T  # (N, N)
    positive = sim.diagonal()
    eye = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    hardest = sim.masked_fill(eye, -2.0).max(1).values  # (N,)
    return {
        "positive_cosine": float(positive.mean()),
        "hardest_negative_cosine": float(hardest.mean()),
        "margin": float((positive - hardest).mean()),
        "modality_gap": float((image_emb.mean(0) - text_emb.mean(0)).norm()),
    }
