"""`clip-pipeline export-eval-task`: one labeled set or the default suite written as CLIP_benchmark tasks that read
back; misuse fails with one line."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from clipcore.data.task_shards import find_tasks, open_task, task_labeled_set
from pipelines.cli import build_parser, main


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def fashion_files(tmp_path):
    """The four Fashion-MNIST files in one folder (the Debian package's layout), 30 test and 40 train images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "fashion"
    folder.mkdir()
    for prefix, n in (("t10k", 30), ("train", 40)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["export-eval-task", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "zeroshot_classification_templates.txt" in out and "--default-suite" in out


def test_idx_and_image_folder(fashion_files, tmp_path, capsys):
    main(["export-eval-task", str(tmp_path / "fm"), "--images", str(fashion_files / "t10k-images-idx3-ubyte.gz"),
          "--labels", str(fashion_files / "t10k-labels-idx1-ubyte.gz"), "--class-names", "fashion_mnist",
          "--templates", "fashion_mnist", "--shard-size", "8"])
    assert "30 images, 10 classes" in capsys.readouterr().out
    task = open_task(tmp_path / "fm")
    assert task.class_names[0] == "t-shirt" and task_labeled_set(task, "test", 28, 1).size == 30
    assert (tmp_path / "fm" / "test" / "nshards.txt").read_text() == "4\n"

    for i, folder in enumerate(("n02", "n01")):
        (tmp_path / "folder" / folder).mkdir(parents=True)
        Image.new("RGB", (40, 30), (50 * i, 0, 0)).save(tmp_path / "folder" / folder / "a.jpg")
    (tmp_path / "folder" / "classnames.txt").write_text("n01 tench\nn02 goldfish\n")
    main(["export-eval-task", str(tmp_path / "fish"), "--images", str(tmp_path / "folder"), "--image-size", "16",
          "--split", "train"])
    task = open_task(tmp_path / "fish")
    assert task.class_names == ["tench", "goldfish"] and task.templates[0] == "a bad photo of a {}."
    images, labels = task_labeled_set(task, "train", 16, 3).load()
    assert images.shape == (2, 3, 16, 16) and labels.tolist() == [0, 1]


def test_default_suite(fashion_files, tmp_path, capsys):
    main(["export-eval-task", str(tmp_path / "suite"), "--default-suite", "--fashion-mnist", str(fashion_files),
          "--probe-size", "20"])
    out = capsys.readouterr().out
    assert "fashion_mnist: test 30, train 20" in out and "mnist: test 4000, train 1000" in out
    tasks = find_tasks([tmp_path / "suite"])
    assert [t.name for t in tasks] == ["digits", "faces", "fashion_mnist", "mnist"]
    assert all(open_task(t).has_split("train") for t in tasks)
    assert open_task(tmp_path / "suite" / "faces").class_names == ["face", "background"]


@pytest.mark.parametrize(("argv", "message"), [
    ([], "give either --default-suite or --images"),
    (["--images", "x.gz"], "IDX images need an IDX labels file and class names"),
])
def test_misuse_is_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export-eval-task", str(tmp_path / "out"), *argv])
    assert message in str(exit_info.value.code)
