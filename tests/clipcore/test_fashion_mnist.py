"""The default caption dataset: deterministic, noisy as specified, and disjoint from the test set."""

import hashlib

import polars as pl

from clipcore.config import DataConfig
from clipcore.data.fashion_mnist import CLASS_NAMES, build_caption_dataset, plan_captions, read_idx


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_build_is_deterministic(tiny_data, tmp_path):
    from tests.conftest import fashion_mnist_dir

    again = tmp_path / "again"
    build_caption_dataset(DataConfig(source_dir=str(fashion_mnist_dir()), root=str(again), limit=1200,
                                     corrupt_fraction=0.005), progress=False)
    assert digest(again) == digest(tiny_data)


def test_dataset_layout_and_noise(tiny_data):
    table = pl.read_csv(tiny_data / "captions.csv")
    assert table.columns == ["path", "caption"]
    assert table.height == 1200 + 24  # 2% duplicate rows appended
    assert all((tiny_data / p).exists() for p in table["path"])
    test_images = read_idx(tiny_data / "test" / "t10k-images-idx3-ubyte.gz")
    assert test_images.shape == (10000, 28, 28)


def test_plan_noise_rates():
    labels = read_idx_labels()
    plan = plan_captions(labels, DataConfig())
    n = len(labels)
    counts = {k: plan.noise.count(k) for k in set(plan.noise)}
    assert abs(counts["wrong_class"] / n - 0.10) < 0.01
    assert counts["duplicate"] == round(0.02 * n) and counts["corrupt"] == round(0.002 * n)
    assert 0.02 < counts["short"] / n < 0.04 and 0.005 < counts["non_english"] / n < 0.015
    # a clean caption names its image's class (by one of its synonyms)
    clean = [i for i, tag in enumerate(plan.noise) if tag == ""][:200]
    from clipcore.data.fashion_mnist import SYNONYMS

    for i in clean:
        words = SYNONYMS[CLASS_NAMES[labels[plan.image_index[i]]]]
        assert any(w in plan.caption[i] for w in words)


def read_idx_labels():
    from tests.conftest import fashion_mnist_dir

    return read_idx(fashion_mnist_dir() / "train-labels-idx1-ubyte.gz")
