"""Labeled sets read in batches, and zero-shot evaluation counted batch by batch, against naive whole-set references:
same numbers, never more than a batch of images alive."""

import gzip
import io
import json
import struct
import weakref

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from clipcore.config import EvalConfig, ModelConfig, PipelineConfig, apply_overrides
from clipcore.data.labeled_sets import LabeledSet, idx_set, tensor_set
from clipcore.data.task_export import write_classification_task
from clipcore.evaluate.evaluation import evaluate_model, zero_shot
from clipcore.evaluate.metric_names import CONTRACT, GATE, LINEAR_PROBE
from clipcore.evaluate.promotion import gate_view
from clipcore.evaluate.stage import HELDOUT_TASK, gate_metrics, open_test_set, run_evaluation
from clipcore.evaluate.zero_shot import ClassificationTally
from clipcore.ingest.stage import ShardWriter
from clipcore.model.clip_model import build_model, save_checkpoint, save_templates
from clipcore.model.device import resolve_device
from clipcore.model.tokenizer import tokenize, train_tokenizer

CLASSES = ["coat", "bag", "dress", "sandal"]
TEMPLATES = ["a photo of a {}", "a {} for sale", "close-up of a {}"]


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def idx_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), 203)
    # class-dependent brightness, so a model's predictions are not all one class
    images = np.clip(rng.normal(40 + 50 * labels[:, None, None], 30, (203, 28, 28)), 0, 255).astype(np.uint8)
    write_idx(root / "toy-images-idx3-ubyte.gz", images)  # named as MNIST's: the folder is an IDX labeled set
    write_idx(root / "toy-labels-idx1-ubyte.gz", labels)
    return root / "toy-images-idx3-ubyte.gz", root / "toy-labels-idx1-ubyte.gz", images, labels


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = train_tokenizer([t.format(c) for t in TEMPLATES for c in CLASSES] * 3, 300, 12)
    torch.manual_seed(1)  # an untrained model whose predictions spread over three classes
    model = build_model(ModelConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=16,
                                    vocab_size=300, context_length=12), tok)
    return model.eval(), tok


def test_idx_set_batches_equal_the_files(idx_files):
    images_path, labels_path, images, labels = idx_files
    labeled = idx_set(images_path, labels_path, CLASSES)
    batches = list(labeled.batches(64))
    assert [len(b[1]) for b in batches] == [64, 64, 64, 11] and labeled.size == 203
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.from_numpy(images))
    assert np.concatenate([b[1] for b in batches]).tolist() == labels.tolist()
    assert all(b[0].dtype == torch.uint8 and b[1].dtype == np.int64 for b in batches)
    limited = idx_set(images_path, labels_path, CLASSES, limit=70)
    assert limited.size == 70 and torch.equal(limited.load(32)[0], torch.from_numpy(images[:70]))
    assert list(labeled.batches(500))[0][1].tolist() == labels.tolist()  # a batch larger than the set


def test_idx_set_refuses_bad_files(idx_files, tmp_path):
    images_path, labels_path, images, labels = idx_files
    write_idx(tmp_path / "short_labels.gz", labels[:10])
    with pytest.raises(ValueError, match="203 images but 10 labels"):
        idx_set(images_path, tmp_path / "short_labels.gz", CLASSES)
    (tmp_path / "plain").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        idx_set(tmp_path / "plain", labels_path, CLASSES)
    # a header promising more images than the file holds fails when the missing batch is read
    header = struct.pack(">I", 0x0803) + struct.pack(">3I", 203, 28, 28)
    (tmp_path / "truncated.gz").write_bytes(gzip.compress(header + images[:100].tobytes()))
    with pytest.raises(ValueError, match="truncated"):
        list(idx_set(tmp_path / "truncated.gz", labels_path, CLASSES).batches(64))


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def naive_zero_shot(model, tok, images, labels, batch_size):
    """Today's formula over the whole set: every embedding, one (N, C) logit matrix, argsort, np.add.at."""
    with torch.no_grad():
        weights = []
        for name in CLASSES:
            emb = model.encode_text(tokenize(tok, [t.format(name) for t in TEMPLATES]))
            emb = torch.nn.functional.normalize(emb, dim=-1)
            weights.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
        pixels = (torch.from_numpy(images).float() / 255 - 0.5) / 0.5
        image_emb = torch.cat([model.encode_image(pixels[i : i + batch_size, None])
                               for i in range(0, len(pixels), batch_size)])
    logits = (image_emb @ torch.stack(weights).T).numpy()
    order = np.argsort(-logits, axis=1)
    confusion = np.zeros((len(CLASSES),) * 2, dtype=np.int64)
    np.add.at(confusion, (labels, order[:, 0]), 1)
    examples = {(i, j): np.flatnonzero((labels == i) & (order[:, 0] == j))[:6].tolist()
                for i in range(len(CLASSES)) for j in range(len(CLASSES))}
    return (order[:, 0] == labels).mean(), (order[:, :4] == labels[:, None]).any(1).mean(), confusion, examples


@pytest.mark.parametrize("batch_size", [1, 37, 203, 1000])
def test_streamed_zero_shot_equals_whole_set_reference(idx_files, model_and_tokenizer, batch_size):
    images_path, labels_path, images, labels = idx_files
    model, tok = model_and_tokenizer
    top1, top5, confusion, examples = naive_zero_shot(model, tok, images, labels, batch_size)
    result, _ = zero_shot(model, tok, idx_set(images_path, labels_path, CLASSES), TEMPLATES, batch_size)
    assert result["top1"] == top1 and result["top5"] == top5 and result["count"] == 203
    assert result["confusion"] == confusion.tolist()
    assert result["examples"] == {cell: rows for cell, rows in examples.items() if rows}
    assert len({c[1] for c in result["examples"]}) > 1  # a non-trivial case: several predicted classes


def test_tally_over_batches_equals_one_block():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(500, 7)), rng.integers(0, 7, 500)
    whole = ClassificationTally(7)
    whole.update(logits, labels)
    parts = ClassificationTally(7)
    for i in range(0, 500, 13):
        parts.update(logits[i : i + 13], labels[i : i + 13])
    assert whole.result() == parts.result()
    pred = logits.argmax(1)
    assert parts.result()["examples"][(3, 5)] == np.flatnonzero((labels == 3) & (pred == 5))[:6].tolist()
    with pytest.raises(ValueError, match="no images"):
        ClassificationTally(3).result()


def test_zero_shot_holds_at_most_two_batches_of_images(model_and_tokenizer):
    """The batch being scored and the one the loop variable still names while the next is read: never the set."""
    model, tok = model_and_tokenizer
    alive: list[weakref.ref] = []
    peak = 0

    def read(batch_size):
        nonlocal peak
        for start in range(0, 400, batch_size):
            peak = max(peak, sum(ref() is not None for ref in alive))
            images = torch.randint(0, 256, (min(batch_size, 400 - start), 28, 28), dtype=torch.uint8)
            alive.append(weakref.ref(images))
            yield images, np.arange(start, start + len(images)) % len(CLASSES)

    result, kept = zero_shot(model, tok, LabeledSet(CLASSES, 400, read), TEMPLATES, batch_size=25)
    assert result["count"] == 400 and kept is None and len(alive) == 16 and peak <= 1


def test_zero_shot_refuses_labels_outside_the_classes(model_and_tokenizer):
    model, tok = model_and_tokenizer
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="label 4 is outside the 4 class names"):
        zero_shot(model, tok, tensor_set(images, np.array([0, 1, 4]), CLASSES), TEMPLATES)


def test_linear_probe_uses_streamed_embeddings(idx_files, model_and_tokenizer):
    images_path, labels_path, images, labels = idx_files
    model, tok = model_and_tokenizer
    test = idx_set(images_path, labels_path, CLASSES, limit=100)
    holdout = torch.from_numpy(images[:20])
    captions = [f"a photo of a {CLASSES[i]}" for i in labels[:20]]
    streamed = evaluate_model(model, tok, test, TEMPLATES, holdout, captions, 32,
                              probe=idx_set(images_path, labels_path, CLASSES))
    in_memory = evaluate_model(model, tok, tensor_set(torch.from_numpy(images[:100]), labels[:100], CLASSES),
                               TEMPLATES, holdout, captions, 32,
                               probe=tensor_set(torch.from_numpy(images), labels, CLASSES))
    assert streamed["metrics"] == in_memory["metrics"] and "linear_probe_top1" in streamed["metrics"]
    assert streamed["test_images"] == 100


def test_eval_device_setting():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="eval.device=cuda but no CUDA device"):
            resolve_device("cuda", "eval.device")
    assert apply_overrides(PipelineConfig(), ["eval.device=cpu"]).eval.device == "cpu"
    with pytest.raises(ValueError, match="params.eval.device: 'tpu' is not one of"):
        apply_overrides(PipelineConfig(), ["eval.device=tpu"])
    with pytest.raises(ValueError, match="params.filter.clip_score.device: 'gpu' is not one of"):
        apply_overrides(PipelineConfig(), ["filter.clip_score.device=gpu"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_zero_shot_on_cuda_agrees_with_the_cpu(idx_files, model_and_tokenizer):
    images_path, labels_path, _, _ = idx_files
    model, tok = model_and_tokenizer
    labeled = idx_set(images_path, labels_path, CLASSES)
    cpu, _ = zero_shot(model, tok, labeled, TEMPLATES, 64)
    try:
        gpu, _ = zero_shot(model.to("cuda"), tok, labeled, TEMPLATES, 64)  # bf16 autocast
    finally:
        model.to("cpu")
    assert gpu["count"] == cpu["count"] and abs(gpu["top1"] - cpu["top1"]) <= 0.05


def test_evaluate_stage_streams_the_test_set_and_keeps_its_outputs(idx_files, model_and_tokenizer, tmp_path):
    """run_evaluation end to end: metrics.json's contract keys, confused-pair examples equal to the whole-set
    reference, the promotion gate's numbers equal to the evaluation's, and the report's whole-set loader."""
    images_path, labels_path, images, labels = idx_files
    model, tok = model_and_tokenizer
    checkpoint = save_checkpoint(tmp_path / "checkpoint", model, tok)
    save_templates(checkpoint, TEMPLATES)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    with ShardWriter(tmp_path / "00000.tar") as writer:
        for i in range(30):
            writer.write(f"{i:09d}", {"png": png(images[i]), "txt": f"a photo of a {CLASSES[labels[i]]}".encode()})
    pl.DataFrame({"uid": [f"{i:09d}" for i in range(30)], "shard": ["00000.tar"] * 30}).write_parquet(
        tmp_path / "holdout.parquet")
    labeled = idx_set(images_path, labels_path, CLASSES)
    write_classification_task(tmp_path / "suite" / "mini", tensor_set(*labeled.load(), CLASSES), TEMPLATES)
    e = EvalConfig(labeled_set=str(images_path.parent), class_names=str(tmp_path / "classes.txt"),
                   probe_set=str(images_path.parent), probe_size=150, batch_size=40, device="cpu",
                   name="toy", tasks=str(tmp_path / "suite"))
    result = run_evaluation(checkpoint, tmp_path / "holdout.parquet", tmp_path, e, tmp_path / "out",
                            tmp_path / "metrics.json")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(CONTRACT) | {LINEAR_PROBE} <= set(metrics) and metrics == result.metrics
    details = json.loads((tmp_path / "out" / "details.json").read_text())
    _, _, confusion, examples = naive_zero_shot(model, tok, images, labels, 40)
    assert details["confusion"] == confusion.tolist() and details["test_images"] == 203
    assert details["confused_pairs"] and all(
        pair["examples"] == examples[CLASSES.index(pair["true"]), CLASSES.index(pair["predicted"])]
        for pair in details["confused_pairs"])
    # the suite: the test set, the held-out pairs' retrieval and the exported task (the same images again)
    mains = {t: metrics[f"task/{t}/main_metric"] for t in ("toy", HELDOUT_TASK, "mini")}
    assert mains["toy"] == metrics["zero_shot_top1"] and mains["mini"] == pytest.approx(metrics["zero_shot_top1"])
    assert mains[HELDOUT_TASK] == pytest.approx(
        (metrics["retrieval_image_to_text_r1"] + metrics["retrieval_text_to_image_r1"]) / 2)
    assert metrics["eval_average"] == pytest.approx(sum(mains.values()) / 3)
    assert [t["name"] for t in details["suite"]] == ["toy", HELDOUT_TASK, "mini"]
    gate = gate_metrics(checkpoint, tmp_path / "holdout.parquet", tmp_path, e)  # measured again
    assert gate == gate_view(metrics) and set(GATE) < set(gate)
    test_set = open_test_set(e, result.model_config)
    picked = test_set.pick({0, 7, 150, 202}, batch_size=40)  # across batches, as the report's thumbnails
    assert all(torch.equal(picked[i], torch.from_numpy(images[i])) for i in (0, 7, 150, 202))
    assert test_set.class_names == CLASSES
    with pytest.raises(ValueError, match="has 203 images; no image 203"):
        test_set.pick({5, 203})
