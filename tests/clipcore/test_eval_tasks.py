"""Evaluation tasks in CLIP_benchmark's layout: written from labeled sets and read back equal, streamed (a batch at a
time, one tar member at a time), evaluated per task against direct references, averaged as DataComp does; ImageFolder
class names from classnames.txt; the default suite's package data."""

import tarfile
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from clipcore.config import ModelConfig
from clipcore.data import task_shards
from clipcore.data.default_suite import digits_task, faces_task, fashion_mnist_task, mnist_task
from clipcore.data.labeled_sets import image_folder_set, tensor_set
from clipcore.data.task_export import write_classification_task, write_retrieval_task
from clipcore.data.task_shards import find_tasks, open_task, retrieval_batches, task_labeled_set
from clipcore.evaluate.evaluation import embed_labeled_set, embed_texts, zero_shot, zero_shot_metrics
from clipcore.evaluate.linear_probe import linear_probe
from clipcore.evaluate.retrieval import retrieval_metrics
from clipcore.evaluate.tasks import evaluate_suite, main_metric_key, suite_average, task_result
from clipcore.model.clip_model import build_model
from clipcore.model.tokenizer import train_tokenizer

CLASSES = ["coat", "bag", "dress", "sandal"]
TEMPLATES = ["a photo of a {}", "a {} for sale", "close-up of a {}"]


def gray_set(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    images = np.clip(rng.normal(40 + 50 * labels[:, None, None], 30, (n, 28, 28)), 0, 255).astype(np.uint8)
    return torch.from_numpy(images), labels


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A 4-class task: 203 test images in shards of 64, 120 train images in one shard."""
    root = tmp_path_factory.mktemp("tasks") / "wds_toy"
    images, labels = gray_set(203)
    write_classification_task(root, tensor_set(images, labels, CLASSES), TEMPLATES, "test", shard_size=64)
    train_images, train_labels = gray_set(120, seed=1)
    write_classification_task(root, tensor_set(train_images, train_labels, CLASSES), TEMPLATES, "train")
    return root, images, labels


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = train_tokenizer([t.format(c) for t in TEMPLATES for c in CLASSES] * 3 + ["a red coat", "two bags"], 300, 12)
    torch.manual_seed(1)
    model = build_model(ModelConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=16,
                                    vocab_size=300, context_length=12), tok)
    return model.eval(), tok


def test_classification_round_trip(task_dir):
    root, images, labels = task_dir
    task = open_task(root)
    assert (root / "test" / "nshards.txt").read_text() == "4\n" and sorted(p.name for p in root.iterdir()) == [
        "classnames.txt", "test", "train", "zeroshot_classification_templates.txt"]
    assert task.kind == "classification" and task.class_names == CLASSES and task.templates == TEMPLATES
    assert (root / "zeroshot_classification_templates.txt").read_text().splitlines()[0] == "a photo of a {c}"
    labeled = task_labeled_set(task, "test", 28, 1)
    batches = list(labeled.batches(50))
    assert labeled.size == 203 and [len(b[1]) for b in batches] == [50, 50, 50, 50, 3]
    assert torch.equal(torch.cat([b[0] for b in batches])[:, 0], images)  # PNG is lossless: the same pixels
    assert np.concatenate([b[1] for b in batches]).tolist() == labels.tolist()
    assert batches[0][0].dtype == torch.uint8 and batches[0][1].dtype == np.int64
    assert task_labeled_set(task, "test", 28, 1, limit=70).load(32)[0].shape == (70, 1, 28, 28)
    assert task_labeled_set(task, "train", 28, 1).size == 120


def test_rgb_webp_round_trip_and_rewrite(tmp_path):
    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.integers(0, 256, (9, 3, 20, 20), dtype=np.uint8))
    labels = np.arange(9) % 2
    root = tmp_path / "rgb"
    write_classification_task(root, tensor_set(images, labels, ["a", "b"]), TEMPLATES, shard_size=2,
                              image_format="webp")
    assert sorted(p.name for p in (root / "test").iterdir()) == ["0.tar", "1.tar", "2.tar", "3.tar", "4.tar",
                                                                  "nshards.txt"]
    back, back_labels = task_labeled_set(open_task(root), "test", 20, 3).load()
    assert torch.equal(back, images) and back_labels.tolist() == labels.tolist()  # lossless WebP
    write_classification_task(root, tensor_set(images[:3], labels[:3], ["a", "b"]), TEMPLATES, shard_size=2)
    assert sorted(p.name for p in (root / "test").iterdir()) == ["0.tar", "1.tar", "nshards.txt"]  # no stale shard


def test_retrieval_round_trip(tmp_path):
    images, _ = gray_set(7)
    captions = [[f"caption {i}"] + ([f"another one {i}", "line\nbreak"] if i % 3 == 0 else []) for i in range(7)]
    root = tmp_path / "pairs"
    assert write_retrieval_task(root, zip(images, captions, strict=True), shard_size=3) == 7
    task = open_task(root)
    assert task.kind == "retrieval" and task.class_names is None and (root / "dataset_type.txt").read_text() == \
        "retrieval\n"
    batches = list(retrieval_batches(task, "test", 4, 28, 1))
    assert [len(b[1]) for b in batches] == [4, 3]
    assert torch.equal(torch.cat([b[0] for b in batches])[:, 0], images)
    expected = [[c.replace("\n", "\\n") for c in texts] for texts in captions]  # CLIP_benchmark's escape
    assert [c for b in batches for c in b[1]] == expected
    with pytest.raises(ValueError, match="retrieval pair 1 has no caption"):
        write_retrieval_task(tmp_path / "bad", [(images[0], ["x"]), (images[1], [])])


def test_reading_is_bounded_by_the_batch(task_dir, monkeypatch):
    """By construction: a batch is decoded only when asked for, from the shard being read (opened as a stream, its
    member headers dropped as they are read), and a consumed batch is freed."""
    root = task_dir[0]
    labeled = task_labeled_set(open_task(root), "test", 28, 1)
    opened, open_tar = [], tarfile.open

    def recording_open(path, mode="r", **kwargs):
        tar = open_tar(path, mode, **kwargs)
        opened.append((path.name, mode, tar))
        return tar

    monkeypatch.setattr(task_shards.tarfile, "open", recording_open)
    batches = labeled.batches(16)
    first = next(batches)
    assert [(name, mode) for name, mode, _ in opened] == [("0.tar", "r|")]  # one shard, streamed; nothing else read
    alive = [weakref.ref(first[0])]
    del first
    for images, _ in batches:
        assert max(len(tar.members) for _, _, tar in opened) <= 1  # no shard-sized list of tar headers
        assert sum(ref() is not None for ref in alive) <= 1  # the previous batch is gone once the next one comes
        alive.append(weakref.ref(images))
        del images
    assert [name for name, _, _ in opened] == ["0.tar", "1.tar", "2.tar", "3.tar"]


def test_task_errors(tmp_path, task_dir):
    (tmp_path / "multi" / "test").mkdir(parents=True)
    (tmp_path / "multi" / "dataset_type.txt").write_text("multilabel\n")
    with pytest.raises(ValueError, match="'multilabel' is not supported"):
        open_task(tmp_path / "multi")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="classnames.txt or zeroshot_classification_templates.txt"):
        open_task(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="no split 'val'"):
        open_task(task_dir[0]).shards("val")
    images, labels = gray_set(5)
    with pytest.raises(ValueError, match="label 4 is outside the 4 class names"):
        write_classification_task(tmp_path / "bad", tensor_set(images, labels * 0 + 4, CLASSES), TEMPLATES)


def test_find_tasks(tmp_path, task_dir):
    root = task_dir[0]
    assert find_tasks([root]) == [root]
    assert find_tasks([root.parent]) == [root]  # a folder of tasks
    (tmp_path / "suite.txt").write_text(f"# my suite\n{root}\n\n")
    assert find_tasks([tmp_path / "suite.txt"]) == [root]
    with pytest.raises(FileNotFoundError, match="neither an evaluation task"):
        find_tasks([tmp_path / "nothing"])


def test_main_metric_is_datacomp_s():
    assert main_metric_key("wds_vtab-pets", "classification") == "zero_shot_mean_per_class_recall"
    assert main_metric_key("wds_fgvc_aircraft_test", "classification") == "zero_shot_mean_per_class_recall"
    assert main_metric_key("vtab/caltech101", "classification") == "zero_shot_mean_per_class_recall"
    assert main_metric_key("wds_imagenet1k", "classification") == "zero_shot_top1"
    assert main_metric_key("wds_flickr30k", "retrieval") == "retrieval_mean_r1"


def test_suite_average_by_hand():
    pets = task_result("wds_vtab-pets", "classification", 10,
                       {"zero_shot_top1": 0.5, "zero_shot_top5": 0.9, "zero_shot_mean_per_class_recall": 0.4})
    cifar = task_result("cifar10", "classification", 10,
                        {"zero_shot_top1": 0.9, "zero_shot_top5": 1.0, "zero_shot_mean_per_class_recall": 0.85})
    flickr = task_result("flickr", "retrieval", 10, {"retrieval_image_to_text_r1": 0.3,
                                                      "retrieval_text_to_image_r1": 0.5, "retrieval_mean_r1": 0.4})
    forced = task_result("cifar10", "classification", 10, dict(cifar.metrics), main_metric="mean_per_class_recall")
    assert [pets.metrics["main_metric"], cifar.metrics["main_metric"], flickr.metrics["main_metric"]] == [0.4, 0.9, 0.4]
    assert forced.main_metric == "zero_shot_mean_per_class_recall" and forced.metrics["main_metric"] == 0.85
    assert suite_average([pets, cifar, flickr]) == pytest.approx((0.4 + 0.9 + 0.4) / 3)
    with pytest.raises(ValueError, match="no tasks"):
        suite_average([])


def test_evaluate_suite_matches_direct_references(task_dir, tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    root, images, labels = task_dir
    pair_images, _ = gray_set(30, seed=3)
    captions = [[f"a {CLASSES[i % 4]} number {i}"] + ([f"two {CLASSES[i % 3]}"] if i % 2 else []) for i in range(30)]
    write_retrieval_task(tmp_path / "pairs", zip(pair_images, captions, strict=True), shard_size=8)
    suite = evaluate_suite(model, tok, [root, tmp_path / "pairs"], batch_size=40)

    classes, features = zero_shot(model, tok, tensor_set(images, labels, CLASSES), TEMPLATES, 1000, True)
    train_images, train_labels = gray_set(120, seed=1)
    probe_emb, probe_labels = embed_labeled_set(model, tensor_set(train_images, train_labels, CLASSES))
    expected = {**zero_shot_metrics(classes),
                **linear_probe(probe_emb.numpy(), probe_labels, features[0].numpy(), features[1])}
    toy = suite.tasks["wds_toy"]
    assert toy.size == 203 and toy.main_metric == "zero_shot_top1"
    assert toy.metrics == pytest.approx({**expected, "main_metric": expected["zero_shot_top1"]}, abs=1e-9)

    image_emb, _ = embed_labeled_set(model, tensor_set(pair_images, np.zeros(30), ["x"]))
    flat = [c for texts in captions for c in texts]
    owner = [i for i, texts in enumerate(captions) for _ in texts]
    recall = retrieval_metrics(image_emb.numpy(), embed_texts(model, tok, flat).numpy(), np.asarray(owner))
    pairs = suite.tasks["pairs"]
    assert pairs.size == 30 and pairs.details == {"captions": 45}
    for key, value in recall.items():
        assert pairs.metrics[f"retrieval_{key}"] == pytest.approx(value, abs=1e-9)
    assert pairs.metrics["main_metric"] == pytest.approx((recall["image_to_text_r1"] + recall["text_to_image_r1"]) / 2)

    assert suite.average == pytest.approx((toy.metrics["main_metric"] + pairs.metrics["main_metric"]) / 2)
    flat_metrics = suite.metrics()
    assert flat_metrics["eval_average"] == suite.average
    assert flat_metrics["task/wds_toy/zero_shot_top1"] == toy.metrics["zero_shot_top1"]
    assert flat_metrics["task/pairs/retrieval_text_to_image_r5"] == pairs.metrics["retrieval_text_to_image_r5"]
    assert suite.as_dict()["pairs"] == pairs.metrics
    no_probe = evaluate_suite(model, tok, [root], batch_size=40, probe_size=0)
    assert "linear_probe_top1" not in no_probe.tasks["wds_toy"].metrics
    with pytest.raises(ValueError, match="two evaluation tasks are named 'wds_toy'"):
        evaluate_suite(model, tok, [root, root])


def test_image_folder_class_names(tmp_path):
    for folder in ("n02", "n01"):
        (tmp_path / folder).mkdir()
        Image.new("L", (8, 8), 100).save(tmp_path / folder / "a.png")
    assert image_folder_set(tmp_path, 8, 1).class_names == ["n01", "n02"]  # no file: the folder names
    (tmp_path / "classnames.txt").write_text("tench\ngoldfish\n")
    assert image_folder_set(tmp_path, 8, 1).class_names == ["tench", "goldfish"]  # a list, in sorted folder order
    (tmp_path / "classnames.txt").write_text("n02 goldfish, Carassius auratus\nn00 shark\nn01 tench\n")
    assert image_folder_set(tmp_path, 8, 1).class_names == ["tench", "goldfish, Carassius auratus"]  # a mapping
    (tmp_path / "classnames.txt").write_text("tench\n")
    with pytest.raises(ValueError, match="1 class names for 2 class folders"):
        image_folder_set(tmp_path, 8, 1)


@pytest.mark.parametrize(("build", "sizes", "shape", "classes"), [
    (mnist_task, (4000, 1000), (28, 28), 10), (digits_task, (1437, 360), (28, 28), 10),
    (faces_task, (160, 40), (25, 25), 2)])
def test_default_suite_package_tasks(build, sizes, shape, classes):
    task = build()
    test_images, test_labels = task.test.load()
    train_images, train_labels = task.train.load()
    assert (task.test.size, task.train.size) == sizes and tuple(test_images.shape[1:]) == shape
    assert test_images.dtype == torch.uint8 and int(test_images.max()) > 200  # scaled to 0-255
    assert len(task.test.class_names) == classes and sorted(set(test_labels.tolist())) == list(range(classes))
    assert np.bincount(train_labels).min() > 0 and all("{}" in t for t in task.templates)


def test_fashion_mnist_task(tiny_data):
    task = fashion_mnist_task(tiny_data, probe_size=500)
    assert task.test.size == 10_000 and task.train.size == 500 and task.test.class_names[0] == "t-shirt"
