"""Image<->text retrieval recall@k, correct when an image has several captions."""

from __future__ import annotations

import numpy as np


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray,
                      ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways.

    Args:
        image_emb: (I, D) unit-norm image embeddings.
        text_emb: (T, D) unit-norm caption embeddings.
        text_to_image: (T,) index of the image each caption belongs to.
        ks: the cut-offs.

    An image query hits at k if any of its captions ranks in the top k; a caption query hits if its image does.
    """
    text_to_image = np.asarray(text_to_image)
    sim = image_emb @ text_emb.T  # (I, T)
    # rank of the best correct caption per image: count captions scoring strictly higher than it
    positive = text_to_image[None, :] == np.arange(len(image_emb))[:, None]  # (I, T)
    best_pos = np.where(positive, sim, -np.inf).max(1)  # (I,)
    image_rank = (sim > best_pos[:, None]).sum(1)  # (I,)
    own = sim[text_to_image, np.arange(len(text_emb))]  # (T,) score of each caption's own image
    text_rank = (sim > own[None, :]).sum(0)  # (T,)
    out = {}
    for k in ks:
        out[f"image_to_text_r{k}"] = float((image_rank[best_pos > -np.inf] < k).mean())
        out[f"text_to_image_r{k}"] = float((text_rank < k).mean())
    return out
