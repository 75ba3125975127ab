"""Parity with CLIP_benchmark (its Python API, installed only in the dev environment): on the same model and data,
our zero-shot top-1/top-5/mean per-class recall and retrieval R@k equal its implementation within 0.1 point."""

import polars as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from clipcore.config import LossConfig, ModelConfig, TrainConfig
from clipcore.data.fashion_mnist import read_idx
from clipcore.data.images import build_resize
from clipcore.data.labeled_sets import tensor_set
from clipcore.evaluate.evaluation import evaluate_model
from clipcore.model.clip_model import build_model
from clipcore.model.prompts import load_class_names, load_templates
from clipcore.model.tokenizer import tokenize, train_tokenizer
from clipcore.train.loop import train_clip
from tests.clipcore.pairs import toy_stream

zeroshot = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")


def accuracy_numpy2(output, target, topk=(1,)):
    """CLIP_benchmark 1.6.2's `accuracy`, line for line, but for `float(array)`, which numpy >= 2.5 refuses for
    1-element arrays: `.item()` takes its place. Only that compatibility fix; the metric is theirs."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().item() / n for k in topk]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A small model trained for a few epochs on the real tiny caption slice."""
    from PIL import Image

    table = pl.read_csv(tiny_data / "captions.csv").drop_nulls().filter(pl.col("caption").str.len_chars() > 10)
    resize = build_resize(28, 1)
    rows = []
    for path, caption in table.iter_rows():
        try:
            with Image.open(tiny_data / path) as image:
                rows.append((resize(image), caption))
        except OSError:
            continue  # the slice's corrupt files
    images = torch.stack([r[0] for r in rows])
    captions = [r[1] for r in rows]
    tok = train_tokenizer(captions, 400, 16)
    model = build_model(ModelConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=32,
                                    vocab_size=400), tok)
    stream = toy_stream(tmp_path_factory.mktemp("pairs"), images[:, 0], captions, tok)
    train_clip(model, stream, len(captions), TrainConfig(epochs=8, batch_size=64, lr=3e-3, warmup_steps=10),
               LossConfig(), progress=False)
    return model.eval(), tok, images, captions


def test_zero_shot_and_retrieval_match_clip_benchmark(trained, tiny_data, monkeypatch):
    monkeypatch.setattr(zeroshot, "accuracy", accuracy_numpy2)
    model, tok, images, captions = trained
    test_images = torch.from_numpy(read_idx(tiny_data / "test" / "t10k-images-idx3-ubyte.gz")[:1000].copy())
    test_labels = read_idx(tiny_data / "test" / "t10k-labels-idx1-ubyte.gz")[:1000].astype("int64")
    classes, templates = load_class_names("fashion_mnist"), load_templates("fashion_mnist")
    # retrieval pairs with distinct captions: ties between identical captions are broken arbitrarily by topk
    first = {}
    for i, c in enumerate(captions):
        first.setdefault(c, i)
    pairs = sorted(first.values())[:200]
    ours = evaluate_model(model, tok, tensor_set(test_images, test_labels, classes), templates, images[pairs],
                          [captions[i] for i in pairs])["metrics"]

    def tokenizer(texts):
        return tokenize(tok, list(texts))

    test_pixels = model.normalize(test_images)
    dataset = TensorDataset(test_pixels, torch.from_numpy(test_labels))
    dataset.classes = classes  # CLIP_benchmark reads the class list off the dataset
    loader = DataLoader(dataset, batch_size=250)
    their_templates = [t.replace("{}", "{c}") for t in templates]  # CLIP_benchmark formats with {c}
    theirs = zeroshot.evaluate(model, loader, tokenizer, classes, their_templates, "cpu", amp=False)
    print(f"zero-shot ours {ours['zero_shot_top1']:.4f} / CLIP_benchmark {theirs['acc1']:.4f}")
    assert ours["zero_shot_top1"] == pytest.approx(theirs["acc1"], abs=1e-3)
    assert ours["zero_shot_top5"] == pytest.approx(theirs["acc5"], abs=1e-3)
    assert ours["zero_shot_mean_per_class_recall"] == pytest.approx(theirs["mean_per_class_recall"], abs=1e-3)
    assert 0.12 < ours["zero_shot_top1"] < 1.0  # a trained model (chance is 0.1): parity is not a trivial 0 == 0

    pixels = model.normalize(images[pairs])
    items = [(pixels[n], [captions[j]]) for n, j in enumerate(pairs)]  # each image with its list of captions
    loader = DataLoader(items, batch_size=50, collate_fn=lambda b: (torch.stack([x[0] for x in b]), [x[1] for x in b]))
    theirs = retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    print({k: (ours[f"retrieval_text_to_image_r{k}"], theirs[f"image_retrieval_recall@{k}"]) for k in (1, 5, 10)})
    for k in (1, 5, 10):
        # CLIP_benchmark: "image_retrieval" = text queries retrieve images; "text_retrieval" = image queries
        assert ours[f"retrieval_text_to_image_r{k}"] == pytest.approx(theirs[f"image_retrieval_recall@{k}"], abs=1e-3)
        assert ours[f"retrieval_image_to_text_r{k}"] == pytest.approx(theirs[f"text_retrieval_recall@{k}"], abs=1e-3)
