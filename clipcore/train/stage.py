"""The pretrain stage end to end: kept rows -> holdout split, tokenizer, model, training, checkpoint."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from clipcore.config import PipelineConfig
from clipcore.data.layout import shard_paths
from clipcore.data.shards import load_samples
from clipcore.model.clip_model import build_model, save_checkpoint, save_templates
from clipcore.model.prompts import load_templates
from clipcore.model.tokenizer import load_tokenizer, tokenize, train_tokenizer
from clipcore.model.towers import load_pretrained_tokenizer, resolve_model_config
from clipcore.train.distributed import barrier, init_from_env, rank_and_world
from clipcore.train.loop import TrainResult, resolve_device, train_clip
from clipcore.train.losses import LOSSES


@dataclass
class PretrainOutput:
    """Where the checkpoint landed and how training went."""

    checkpoint_dir: Path
    train_rows: int
    holdout_rows: int
    result: TrainResult

    def summary(self, processes: int) -> dict:
        """The numbers of a finished training that the pipeline logs and shows."""
        r = self.result
        return {"train_rows": self.train_rows, "holdout_rows": self.holdout_rows, "steps": r.steps,
                "seconds": r.seconds, "samples_per_second": r.samples_per_second,
                "data_wait_seconds": r.data_wait_seconds, "device": r.device, "processes": processes,
                "flops_per_sample": r.flops_per_sample, "achieved_tflops": r.achieved_tflops, "mfu": r.mfu,
                "peak_memory_mb": r.peak_memory_bytes / 2**20}


def split_holdout(kept: pl.DataFrame, holdout_size: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Deterministically set `holdout_size` kept rows aside (never trained on); returns (train, holdout)."""
    if holdout_size >= kept.height:
        raise ValueError(f"holdout_size={holdout_size} leaves no training rows out of {kept.height}")
    shuffled = kept.sample(fraction=1.0, shuffle=True, seed=seed)
    return shuffled.slice(holdout_size).sort("uid"), shuffled.head(holdout_size).sort("uid")


def run_pretraining(
    kept: pl.DataFrame,  # the filter stage's kept manifest (uid, caption, shard, ...)
    shard_root: str | Path,
    output_dir: str | Path,
    config: PipelineConfig,
    on_log: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
    resume: bool = False,
    extra_state: dict | None = None,
) -> PretrainOutput:
    """Train a CLIP model on the kept rows and write checkpoint/, holdout.parquet and history.json.

    With `train.checkpoint_every`, `output_dir/train_state.pt` is kept current and `resume=True` continues from
    it (reusing the tokenizer already in `output_dir`). Under torchrun every process runs this: each loads the
    rows, process 0 trains the tokenizer (or copies a pretrained text tower's) and the others load it (so all share
    one vocabulary), training is data-parallel, and only process 0 writes files.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    init_from_env(resolve_device(config.train.device))
    rank, _ = rank_and_world()
    train_rows, holdout = split_holdout(kept, config.train.holdout_size, config.train.seed)
    if config.train.max_rows is not None:
        train_rows = train_rows.head(config.train.max_rows)
    model_config = resolve_model_config(config.model)  # a pretrained CLIP sets the image size
    uids, images, captions = load_samples(shard_paths(shard_root, train_rows), train_rows["uid"].to_list(),
                                          model_config.image_size, model_config.channels,
                                          progress=progress and rank == 0)
    tokenizer_path = output_dir / "tokenizer.json"
    if rank == 0 and not (resume and tokenizer_path.exists()):
        holdout.write_parquet(output_dir / "holdout.parquet")
        # a pretrained text tower comes with its tokenizer; otherwise train BPE on the captions
        tokenizer = load_pretrained_tokenizer(model_config)
        if tokenizer is None:
            tokenizer = train_tokenizer(captions, model_config.vocab_size, model_config.context_length)
        tokenizer.save(str(tokenizer_path))
    barrier()
    tokenizer = load_tokenizer(tokenizer_path, model_config.context_length)
    tokens = tokenize(tokenizer, captions)  # (N, L)
    spec = LOSSES[config.loss.name]  # the objective's own starting scale and bias (SigLIP: t = 10, b = -10)
    if spec.scale_init is not None:
        model_config = dataclasses.replace(model_config, logit_scale_init=spec.scale_init)
    torch.manual_seed(config.train.seed)  # the initial weights too: identical params give identical runs
    model = build_model(model_config, tokenizer, logit_bias_init=spec.bias_init)
    result = train_clip(model, images, tokens, config.train, config.loss, on_log=on_log, progress=progress,
                        state_path=output_dir / "train_state.pt", resume=resume, extra_state=extra_state)
    checkpoint, history_path = output_dir / "checkpoint", output_dir / "history.json"
    if rank == 0:
        save_checkpoint(checkpoint, model.cpu(), tokenizer)
        save_templates(checkpoint, load_templates(config.eval.templates))
        history_path.write_text(json.dumps(result.history))
    barrier()
    return PretrainOutput(checkpoint, len(uids), holdout.height, result)
