"""Parity with CLIP_benchmark's own command line on task folders we write: `clip_benchmark eval --dataset wds/<name>
--dataset_root <task>` (its argument parser, webdataset reader, metrics and JSON output) scores our trained model,
registered in-process as a model type, and clipcore.evaluate.tasks reads the same folders: zero-shot top-1, top-5,
mean per-class recall and retrieval R@1/5/10 agree within 0.1 point. CLIP_benchmark 1.6.2 is in the dev environment
only; without it the test is skipped."""

import json
import sys

import pytest

from clipcore.data.labeled_sets import idx_set
from clipcore.data.task_export import write_classification_task, write_retrieval_task
from clipcore.data.task_shards import task_image_transform
from clipcore.evaluate.tasks import evaluate_task
from clipcore.model.prompts import load_class_names, load_templates
from clipcore.model.tokenizer import tokenize

cli = pytest.importorskip("clip_benchmark.cli")
models = pytest.importorskip("clip_benchmark.models")
zeroshot = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
from tests.clipcore import test_parity_clip_benchmark as api_parity  # noqa: E402

trained_model = api_parity.trained  # the API parity test's tiny trained model, as a fixture of this module


@pytest.fixture
def clip_benchmark_cli(trained_model, monkeypatch, tmp_path):
    """Run CLIP_benchmark's CLI entry point with real arguments; our model is its model type `clipcore`."""
    model, tok, _, _ = trained_model

    def load_clipcore(model_name, pretrained, cache_dir, device):
        fit = task_image_transform(model.config.image_size, model.config.channels)  # PIL -> (C, S, S) uint8
        return (model.to(device), lambda image: model.normalize(fit(image)[None])[0],
                lambda texts: tokenize(tok, list(texts)))

    monkeypatch.setitem(models.TYPE2FUNC, "clipcore", load_clipcore)
    types = [*models.MODEL_TYPES, "clipcore"]
    monkeypatch.setattr(models, "MODEL_TYPES", types)  # load_clip checks it
    monkeypatch.setattr(cli, "MODEL_TYPES", types)  # the parser's --model_type choices
    # CLIP_benchmark 1.6.2's `accuracy` calls float() on a 1-element array, deprecated by numpy and refused by
    # numpy >= 2.5: the same function with .item() instead (see test_parity_clip_benchmark)
    monkeypatch.setattr(zeroshot, "accuracy", api_parity.accuracy_numpy2)

    def run(task_dir, *extra: str) -> dict:
        out = tmp_path / f"{task_dir.name}.json"
        monkeypatch.setattr(sys, "argv", [
            "clip_benchmark", "eval", "--dataset", f"wds/{task_dir.name}", "--dataset_root", str(task_dir),
            "--model_type", "clipcore", "--model", "tiny", "--pretrained", "tests", "--batch_size", "128",
            "--num_workers", "0", "--no_amp", "--quiet", "--output", str(out), *extra])
        cli.main()
        return json.loads(out.read_text())["metrics"]

    return run


def test_zero_shot_matches_clip_benchmark_cli(trained_model, tiny_data, tmp_path, clip_benchmark_cli):
    model, tok, _, _ = trained_model
    test = tiny_data / "test"
    labeled = idx_set(test / "t10k-images-idx3-ubyte.gz", test / "t10k-labels-idx1-ubyte.gz",
                      load_class_names("fashion_mnist"), limit=1000)
    task_dir = tmp_path / "fashion_mnist"
    write_classification_task(task_dir, labeled, load_templates("fashion_mnist"), shard_size=300)

    theirs = clip_benchmark_cli(task_dir, "--task", "zeroshot_classification")
    ours = evaluate_task(model, tok, task_dir, batch_size=250, probe_size=0).metrics
    print(f"zero-shot top-1 ours {ours['zero_shot_top1']:.4f} / CLIP_benchmark CLI {theirs['acc1']:.4f}")
    assert ours["zero_shot_top1"] == pytest.approx(theirs["acc1"], abs=1e-3)
    assert ours["zero_shot_top5"] == pytest.approx(theirs["acc5"], abs=1e-3)
    assert ours["zero_shot_mean_per_class_recall"] == pytest.approx(theirs["mean_per_class_recall"], abs=1e-3)
    assert 0.12 < ours["zero_shot_top1"] < 1.0  # a trained model (chance is 0.1): parity is not a trivial 0 == 0


def test_retrieval_matches_clip_benchmark_cli(trained_model, tmp_path, clip_benchmark_cli):
    model, tok, images, captions = trained_model
    first = {}  # distinct captions only: ties between identical captions are broken arbitrarily by topk
    for i, caption in enumerate(captions):
        first.setdefault(caption, i)
    rows = sorted(first.values())
    pairs, spare = rows[:200], iter(rows[200:])
    # every 4th image also gets a second caption (another image's): an image with several captions
    texts = [[captions[i]] + ([captions[next(spare)]] if n % 4 == 0 else []) for n, i in enumerate(pairs)]
    task_dir = tmp_path / "held_out_pairs"
    write_retrieval_task(task_dir, zip(images[pairs], texts, strict=True), shard_size=64)

    theirs = clip_benchmark_cli(task_dir, "--task", "zeroshot_retrieval", "--recall_k", "1", "5", "10")
    ours = evaluate_task(model, tok, task_dir, batch_size=50).metrics
    print({k: (ours[f"retrieval_text_to_image_r{k}"], theirs[f"image_retrieval_recall@{k}"]) for k in (1, 5, 10)})
    for k in (1, 5, 10):
        # CLIP_benchmark: "image_retrieval" = text queries retrieve images; "text_retrieval" = image queries
        assert ours[f"retrieval_text_to_image_r{k}"] == pytest.approx(theirs[f"image_retrieval_recall@{k}"], abs=1e-3)
        assert ours[f"retrieval_image_to_text_r{k}"] == pytest.approx(theirs[f"text_retrieval_recall@{k}"], abs=1e-3)
    assert ours["main_metric"] == pytest.approx(
        (theirs["image_retrieval_recall@1"] + theirs["text_retrieval_recall@1"]) / 2, abs=1e-3)  # DataComp's
    assert ours["retrieval_text_to_image_r5"] > 0.02  # chance is 5/200
