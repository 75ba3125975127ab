"""`clip-pipeline predict` against a registered model in a sqlite store in tmp_path: embeddings written as .npy and
.parquet equal the ones clipcore computes itself, labels the tokenizer cannot represent are warned about, unknown
aliases and models are one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from clipcore.config import ModelConfig
from clipcore.model.clip_model import build_model, checkpoint_digest, load_checkpoint, save_checkpoint, save_templates
from clipcore.model.tokenizer import train_tokenizer

CAPTIONS = [f"a photo of a {c}" for c in ("coat", "bag", "ankle boot", "sneaker", "dress")] * 40


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """`clip` v1 registered from a tiny 16-px grayscale checkpoint, and three 16-px images."""
    root = tmp_path_factory.mktemp("predict")
    tokenizer = train_tokenizer(CAPTIONS, vocab_size=400, context_length=12)
    config = ModelConfig(image_size=16, patch_size=8, channels=1, vision_width=32, vision_heads=2, text_width=32,
                         text_heads=2, embed_dim=16, vocab_size=400, context_length=12)
    torch.manual_seed(0)
    save_checkpoint(root / "checkpoint", build_model(config, tokenizer).eval(), tokenizer)
    save_templates(root / "checkpoint", ["a photo of a {}."])
    uri = f"sqlite:///{root}/mlflow.db"
    script = ("import sys; from pipelines.tracking import configure_mlflow, tracked_run, log_and_register\n"
              "configure_mlflow(sys.argv[1], sys.argv[2], 'clip-pipeline')\n"
              "with tracked_run(run_name='pretrain-clip'):\n"
              "    log_and_register(sys.argv[3], 'clip', sys.argv[4])\n")
    subprocess.run([sys.executable, "-c", script, uri, str(root / "artifacts"), str(root / "checkpoint"),
                    checkpoint_digest(root / "checkpoint")], check=True, capture_output=True,
                   cwd=Path(__file__).parents[2])
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(path)
        images.append(str(path))
    (root / "params.yaml").write_text("registry: {model_name: clip}\n")
    return root, uri, images


def predict(registry, *args: str) -> subprocess.CompletedProcess:
    root, uri, _ = registry
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "predict", *args], capture_output=True, text=True,
                          env=env, cwd=root)


def reference_embeddings(checkpoint: Path, images: list[str]) -> np.ndarray:
    """clipcore's own encoder on the images' pixels (16-px grayscale already: no resize, no crop)."""
    model, _ = load_checkpoint(checkpoint)
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p))) for p in images])  # (N, 16, 16) uint8
    with torch.no_grad():
        return model.encode_image(model.normalize(pixels)).numpy()  # (N, D)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " INFO mlflow." not in line and "Warning" not in line
            and line.strip() and not line.startswith("  ")]


def test_embeddings_out_npy_round_trips_against_clipcore(registry):
    root, _, images = registry
    out = root / "emb.npy"
    result = predict(registry, "--model", "models:/clip/1", "--embeddings-out", str(out), *images)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"embeddings: shape (3, 16), written to {out}"
    written = np.load(out)
    assert written.dtype == np.float32 and written.shape == (3, 16)
    np.testing.assert_allclose(written, reference_embeddings(root / "checkpoint", images), atol=1e-6)


def test_embeddings_out_parquet_with_labels_round_trips_classifies_and_warns_on_unknown_labels(registry):
    root, _, images = registry
    out = root / "emb.parquet"
    result = predict(registry, "--model", "models:/clip/1", "--embeddings-out", str(out),
                     "--labels", "coat,zebra,ankle boot,ꙮ coat", *images)
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(out)
    assert frame["path"].to_list() == images  # one row per image, in the order given
    written = frame["embedding"].to_numpy()
    assert written.dtype == np.float32 and written.shape == (3, 16)
    np.testing.assert_allclose(written, reference_embeddings(root / "checkpoint", images), atol=1e-6)
    assert sum(line.startswith(f"{p}: ") for p in images for line in result.stdout.splitlines()) == 3
    # `zebra` never made a token of the caption vocabulary; `ꙮ coat` is half unknown (not over half): no warning
    assert errors(result.stderr) == ["clip-pipeline: warning: label 'zebra' is mostly unknown to the model's "
                                     "tokenizer (1 of 1 pieces have no learned token: zebra); its probability says "
                                     "little"]


def test_bad_embeddings_suffix_fails_before_loading_anything(registry):
    root, _, images = registry
    result = predict(registry, "--embeddings-out", str(root / "emb.csv"), *images)
    assert result.returncode != 0
    assert errors(result.stderr) == ["clip-pipeline: predict: --embeddings-out must end in .parquet or .npy, not "
                                     "'emb.csv'"]


def test_unknown_alias_and_model_are_one_line(registry):
    _, _, images = registry
    result = predict(registry, "--model", "models:/clip@nope", *images)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    [line] = errors(result.stderr)
    assert line.startswith("clip-pipeline: predict: cannot load models:/clip@nope: ") and "alias" in line
    root, uri, _ = registry
    models = subprocess.run([sys.executable, "-m", "pipelines.cli", "models", "--name", "nope"], capture_output=True,
                            text=True, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, cwd=root)
    assert models.returncode != 0
    assert errors(models.stderr) == ["clip-pipeline: models: no registered model 'nope' (registered: clip)"]
