"""Identical params give bitwise-identical weights: the pretrain stage seeds everything itself (the model's initial
weights included), whatever random state the calling process is in."""

import random

import numpy as np
import polars as pl
import torch

from clipcore.config import load_params
from clipcore.filter.stage import run_filter
from clipcore.ingest.stage import ingest
from clipcore.train.stage import run_pretraining


def test_two_pretraining_runs_with_identical_params_give_identical_checkpoints(tmp_path, tiny_params):
    config = load_params(tiny_params, ["train.epochs=1", "train.max_rows=256", "train.holdout_size=50"])
    ingest(config.ingest, tmp_path / "shards", progress=False)
    run_filter(tmp_path / "shards", config.filter, tmp_path / "filtered", progress=False)
    kept = tmp_path / "filtered" / "kept.parquet"
    weights = []
    for run, noise in enumerate([0, 12345]):
        # a caller that used its random generators differently before: must not change the result
        torch.manual_seed(noise), random.seed(noise), np.random.seed(noise)
        torch.rand(noise % 7 + 1)
        out = run_pretraining(kept, tmp_path / "shards", tmp_path / f"run{run}", config, progress=False)
        weights.append((out.checkpoint_dir / "model.safetensors").read_bytes())
        assert out.result.steps > 0
    assert weights[0] == weights[1]
    holdouts = [pl.read_parquet(tmp_path / f"run{r}" / "holdout.parquet") for r in range(2)]
    assert holdouts[0].equals(holdouts[1])
