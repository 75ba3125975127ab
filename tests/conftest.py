"""Shared fixtures: a tiny slice of the real Fashion-MNIST caption data and tiny configs."""

from pathlib import Path

import pytest

from clipcore.config import DataConfig
from clipcore.data.fashion_mnist import FILES, build_caption_dataset

SOURCES = [Path("/usr/share/datasets/fashion-mnist"), Path("~/.cache/clip-pipeline/fashion-mnist").expanduser()]


def fashion_mnist_dir() -> Path:
    for folder in SOURCES:
        if all((folder / f).exists() for f in FILES):
            return folder
    pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A 1,200-image caption dataset built from the real training images, with every kind of noise."""
    root = tmp_path_factory.mktemp("data") / "fashion_mnist"
    build_caption_dataset(DataConfig(source_dir=str(fashion_mnist_dir()), root=str(root), limit=1200,
                                     corrupt_fraction=0.005), progress=False)
    return root


TINY_PARAMS = """
model: {{vision_width: 32, vision_heads: 2, text_width: 32, text_heads: 2, embed_dim: 32, vocab_size: 400}}
ingest: {{input: {data}/captions.csv, url_col: path, local_paths: true, encode_format: png, shard_size: 500,
         processes: 1, threads: 2}}
train: {{epochs: 8, batch_size: 64, lr: 0.003, holdout_size: 100, warmup_steps: 10, log_every: 2}}
eval: {{labeled_set: {data}/test, max_test_images: 300, probe_set: {data}/train, probe_size: 500}}
registry: {{model_name: clip}}  # a fixed name for the asset tests; test_registry_per_dataset tests the default
"""


@pytest.fixture
def tiny_params(tmp_path, tiny_data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(TINY_PARAMS.format(data=tiny_data))
    return path


def tiny_checkpoint(directory: Path, image_size: int = 16, channels: int = 1) -> Path:
    """A tiny untrained ViT CLIP checkpoint with one prompt template, for registry and serving tests."""
    import torch

    from clipcore.config import ModelConfig
    from clipcore.model.clip_model import build_model, save_checkpoint, save_templates
    from clipcore.model.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["a photo of a coat", "a bag"] * 20, vocab_size=300, context_length=8)
    config = ModelConfig(image_size=image_size, patch_size=8, channels=channels, vision_width=32, vision_heads=2,
                         text_width=32, text_heads=2, embed_dim=16, vocab_size=300, context_length=8)
    torch.manual_seed(0)
    save_checkpoint(directory, build_model(config, tokenizer).eval(), tokenizer)
    save_templates(directory, ["a photo of a {}."])
    return directory


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A fresh MLflow sqlite store in tmp_path (its URI in MLFLOW_TRACKING_URI) and a tiny checkpoint to register."""
    from pipelines.tracking import configure_mlflow

    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    configure_mlflow(uri, str(tmp_path / "artifacts"), "clip-pipeline")
    return uri, tiny_checkpoint(tmp_path / "checkpoint")
