"""Classes held out of training (train.exclude_classes): which caption rows are dropped, on the real caption data, and
zero-shot top-1 split into unseen and seen classes, against hand counts."""

import hashlib
import re

import numpy as np
import polars as pl
import pytest

from clipcore.config import DataConfig
from clipcore.data.fashion_mnist import CLASS_NAMES, FILES, plan_captions, read_idx
from clipcore.evaluate.zero_shot import HeldOutClassTally
from clipcore.train.held_out_classes import caption_pattern, class_indices, excluded_rows
from clipcore.train.kept_rows import training_rows

EXCLUDED = ("sandal", "pullover")


@pytest.mark.parametrize(("caption", "named"), [
    ("cheap sandals free shipping", True), ("Summer Sandals for sale", True), ("flip flops (used)", True),
    ("vintage sweater in great condition", True), ("a photo of a jumper", True), ("my new pullover arrived", True),
    ("a photo of a sneaker", False), ("sandalwood scented bag", False), ("a t-shirt", False),
])
def test_caption_pattern_matches_names_synonyms_and_plurals_as_whole_words(caption, named):
    assert bool(re.search(caption_pattern(EXCLUDED), caption)) is named


def test_shirt_does_not_match_t_shirt_and_unknown_classes_fail():
    assert re.search(caption_pattern(("shirt",)), "women's button-up shirt size M")
    assert not re.search(caption_pattern(("shirt",)), "a t-shirt, barely worn")
    with pytest.raises(ValueError, match="'sandals' is not a class"):
        class_indices(("sandals",), CLASS_NAMES)


def kept_manifest(root, path):
    """A kept manifest of the caption data as ingest writes it (uid, caption, sha256 of the image file)."""
    captions = pl.read_csv(root / "captions.csv")
    rows = [(f"{i:06d}", c, hashlib.sha256((root / p).read_bytes()).hexdigest())
            for i, (p, c) in enumerate(captions.iter_rows())]
    pl.DataFrame(rows, schema=["uid", "caption", "sha256"], orient="row").write_parquet(path)
    return captions.height


def test_exclusion_drops_every_row_naming_or_showing_an_excluded_class(tiny_data, tmp_path):
    kept = tmp_path / "kept.parquet"
    n_rows = kept_manifest(tiny_data, kept)
    exclusion = excluded_rows(kept, EXCLUDED, CLASS_NAMES, tiny_data / "train")
    # the truth, from the data generator's own plan: each row's image label and caption
    labels = read_idx(tiny_data / "train" / FILES[1])[:1200]
    plan = plan_captions(labels, DataConfig(limit=1200, corrupt_fraction=0.005))
    shown = labels[plan.image_index]  # (rows,) the label of each row's image
    excluded_labels = {CLASS_NAMES.index(c) for c in EXCLUDED}
    # a truncated ("corrupt") file is not the image's bytes: ingest rejects it anyway
    by_image = {f"{i:06d}" for i in range(n_rows) if shown[i] in excluded_labels and plan.noise[i] != "corrupt"}
    by_caption = {f"{i:06d}" for i, c in enumerate(plan.caption) if re.search(caption_pattern(EXCLUDED), c)}
    assert exclusion.uids == by_image | by_caption
    assert (exclusion.by_image, exclusion.by_caption) == (len(by_image), len(by_caption))
    assert by_image - by_caption  # images of the classes under another class's caption (the 10% wrong-class noise)
    assert 0.15 < len(exclusion.uids) / n_rows < 0.30  # about 2 of 10 classes
    of_classes = int(np.isin(read_idx(tiny_data / "train" / FILES[1]), list(excluded_labels)).sum())  # 12,000
    assert 0.99 * of_classes < exclusion.labeled_images <= of_classes  # distinct images (a few are identical)

    holdout = pl.read_parquet(kept).head(10)
    rows = training_rows(kept, holdout, None, exclusion.uids)
    assert rows.rows == n_rows - len(exclusion.uids | set(holdout["uid"]))
    assert rows.never_read == exclusion.uids | set(holdout["uid"])
    assert not rows.excluded & rows.holdout


def test_captions_only_without_a_labeled_set_and_a_wrong_labeled_set_fails(tiny_data, tmp_path):
    kept = tmp_path / "kept.parquet"
    kept_manifest(tiny_data, kept)
    captions_only = excluded_rows(kept, EXCLUDED, CLASS_NAMES)
    assert captions_only.by_image == 0 and captions_only.uids and captions_only.labeled_images == 0
    with pytest.raises(ValueError, match="none of the .* is a kept training image"):
        excluded_rows(kept, EXCLUDED, CLASS_NAMES, tiny_data / "test")  # the test images are not training images


def test_held_out_class_tally_by_hand():
    """4 classes, class 3 unseen. Rows: (label, logits) -> top-1 among all, and among the unseen classes only."""
    logits = np.array([[0.9, 0.1, 0.0, 0.5],   # label 3: predicts 0 (wrong); among {1, 3}: 3 (right)
                       [0.0, 0.2, 0.1, 0.8],   # label 3: predicts 3 (right)
                       [0.1, 0.7, 0.0, 0.3],   # label 1: predicts 1 (right)
                       [0.6, 0.1, 0.2, 0.3],   # label 1: predicts 0 (wrong); among {1, 3}: 3 (wrong)
                       [0.1, 0.0, 0.9, 0.2],   # label 2 (seen): right
                       [0.5, 0.0, 0.4, 0.2]])  # label 2 (seen): wrong
    labels = np.array([3, 3, 1, 1, 2, 2])
    tally = HeldOutClassTally(4, [3, 1])
    tally.update(logits[:3], labels[:3])  # two batches count as one
    tally.update(logits[3:], labels[3:])
    assert tally.result() == {"zero_shot_top1_unseen_classes": 2 / 4, "zero_shot_top1_seen_classes": 1 / 2,
                              "zero_shot_top1_unseen_among_unseen": 3 / 4}
    with pytest.raises(ValueError, match="no image of a seen class"):
        only_unseen = HeldOutClassTally(4, [3])
        only_unseen.update(logits[:2], labels[:2])
        only_unseen.result()


def test_evaluate_model_reports_unseen_and_seen_top1_consistent_with_the_whole():
    """On an untrained model: the unseen and seen classes' top-1, weighted by their images, is the overall top-1;
    the among-unseen top-1 equals a naive argmax over the unseen classes' logits only."""
    import torch

    from clipcore.config import ModelConfig
    from clipcore.data.labeled_sets import tensor_set
    from clipcore.evaluate.evaluation import class_embeddings, embed_images, evaluate_model
    from clipcore.evaluate.metric_names import HELD_OUT_CLASSES
    from clipcore.model.clip_model import build_model
    from clipcore.model.tokenizer import train_tokenizer

    classes, templates = ["coat", "bag", "dress", "sandal"], ["a photo of a {}", "a {} for sale"]
    tok = train_tokenizer([t.format(c) for t in templates for c in classes] * 3, 300, 12)
    torch.manual_seed(1)
    model = build_model(ModelConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=16,
                                    vocab_size=300, context_length=12), tok).eval()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 120)
    images = torch.from_numpy(np.clip(rng.normal(40 + 50 * labels[:, None, None], 30, (120, 28, 28)), 0, 255)
                              .astype(np.uint8))
    result = evaluate_model(model, tok, tensor_set(images, labels, classes), templates, images[:8],
                            ["a photo of a coat"] * 8, batch_size=50, unseen_classes=("sandal", "bag"))
    m = result["metrics"]
    assert set(HELD_OUT_CLASSES) <= set(m)
    unseen = np.isin(labels, [1, 3])
    whole = (m["zero_shot_top1_unseen_classes"] * unseen.sum() + m["zero_shot_top1_seen_classes"] * (~unseen).sum())
    assert whole / len(labels) == pytest.approx(m["zero_shot_top1"])
    logits = (embed_images(model, images) @ class_embeddings(model, tok, classes, templates).T).numpy()
    among = np.array([1, 3])[logits[unseen][:, [1, 3]].argmax(1)]
    assert m["zero_shot_top1_unseen_among_unseen"] == pytest.approx((among == labels[unseen]).mean())
    with pytest.raises(ValueError, match="'boot' is not a class of the test set"):
        evaluate_model(model, tok, tensor_set(images, labels, classes), templates, images[:8], ["a coat"] * 8,
                       unseen_classes=("boot",))
