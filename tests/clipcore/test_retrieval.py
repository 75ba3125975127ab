"""Recall@k on hand-made cases, including images with several captions."""

import numpy as np

from clipcore.evaluate.retrieval import retrieval_metrics


def test_recall_by_hand_with_two_captions_per_image():
    # 2 images, 4 captions (0,1 -> image 0; 2,3 -> image 1). Similarities (images x captions):
    sim = np.array([[0.1, 0.9, 0.8, 0.2],    # image 0: best caption is 1 (its own) -> rank 0
                    [0.9, 0.3, 0.2, 0.1]])   # image 1: own captions 2,3 rank 2 and 3; best own rank 2
    # Embed so that image_emb @ text_emb.T == sim: images as unit basis vectors, texts as columns.
    image_emb = np.eye(2)
    text_emb = sim.T
    m = retrieval_metrics(image_emb, text_emb, np.array([0, 0, 1, 1]), ks=(1, 2, 3))
    assert m["image_to_text_r1"] == 0.5 and m["image_to_text_r2"] == 0.5 and m["image_to_text_r3"] == 1.0
    # captions (columns): 0 -> image 1 scores higher (miss@1); 1 -> own image best (hit);
    # 2 -> image 0 higher (0.8 > 0.2, miss); 3 -> image 0 higher (0.2 > 0.1, miss). With 2 images, r2 is 1.
    assert m["text_to_image_r1"] == 0.25 and m["text_to_image_r2"] == 1.0


def test_perfect_alignment_gives_full_recall():
    emb = np.eye(4)
    m = retrieval_metrics(emb, emb, np.arange(4))
    assert all(v == 1.0 for v in m.values())
