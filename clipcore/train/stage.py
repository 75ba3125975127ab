"""The pretrain stage end to end: kept rows -> holdout split, tokenizer, model, training streamed from the shards,
checkpoint."""

from __future__ import annotations

import dataclasses
import glob
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from clipcore.config import PipelineConfig
from clipcore.data.stream import Source, StreamSpec
from clipcore.model.clip_model import build_model, save_checkpoint, save_templates
from clipcore.model.device import resolve_device
from clipcore.model.prompts import load_class_names, load_templates
from clipcore.model.tokenizer import load_tokenizer, train_tokenizer
from clipcore.model.towers import load_pretrained_tokenizer, resolve_model_config
from clipcore.train.distributed import barrier, init_from_env, rank_and_world
from clipcore.train.held_out_classes import Exclusion, excluded_rows
from clipcore.train.kept_rows import KeptRows, iter_captions, kept_shards, select_holdout, training_rows
from clipcore.train.loop import TrainResult, data_streams, train_clip
from clipcore.train.losses import LOSSES


@dataclass
class PretrainOutput:
    """Where the checkpoint landed and how training went."""

    checkpoint_dir: Path
    train_rows: int
    holdout_rows: int
    result: TrainResult
    exclusion: Exclusion | None = None  # rows dropped for `train.exclude_classes`

    def summary(self, processes: int) -> dict:
        """The numbers of a finished training that the pipeline logs and shows."""
        r = self.result
        return {"train_rows": self.train_rows, "holdout_rows": self.holdout_rows, "steps": r.steps,
                "seconds": r.seconds, "samples_per_second": r.samples_per_second,
                "data_wait_seconds": r.data_wait_seconds, "device": r.device, "processes": processes,
                "flops_per_sample": r.flops_per_sample, "achieved_tflops": r.achieved_tflops, "mfu": r.mfu,
                "peak_memory_mb": r.peak_memory_bytes / 2**20, "skipped_samples": r.skipped_samples,
                **(self.exclusion.summary() if self.exclusion else {})}


def parse_sources(entries: tuple[str, ...]) -> list[tuple[tuple[str, ...], float]]:
    """`train.sources` entries (`<tar glob, brace range or folder>[::<weight>]`) as (shard files, weight)."""
    from braceexpand import braceexpand

    sources = []
    for entry in entries:
        pattern, _, weight = entry.partition("::")
        if Path(pattern).is_dir():
            pattern = str(Path(pattern) / "*.tar")
        shards = tuple(sorted({p for b in braceexpand(pattern) for p in (glob.glob(b) if glob.has_magic(b) else [b])}))
        missing = [p for p in shards if "://" not in p and not Path(p).is_file()]
        if not shards or missing:
            raise ValueError(f"train.sources: {entry!r} names no shard files" + (f" ({missing[0]} missing)" if missing
                                                                                    else ""))
        sources.append((shards, float(weight) if weight else 1.0))
    return sources


def stream_spec(rows: KeptRows, shard_root: str | Path, config: PipelineConfig, model_config, tokenizer_path: Path,
                world: int) -> StreamSpec:
    """The training stream: the kept rows' shards (and `train.sources`), with the model's input size."""
    t = config.train
    kept = Source(kept_shards(rows.path, shard_root), t.kept_weight, rows.path, rows.never_read, rows.last_key)
    extra = tuple(Source(shards, weight) for shards, weight in parse_sources(t.sources))
    return StreamSpec(sources=(kept, *extra), image_size=model_config.image_size, channels=model_config.channels,
                      tokenizer_path=str(tokenizer_path), context_length=model_config.context_length, seed=t.seed,
                      streams=data_streams(t), shuffle_shards=t.shuffle_shards, resampled=t.resampled,
                      augment_scale=t.augment_scale)


def run_pretraining(
    kept_path: str | Path,  # the filter stage's kept manifest (uid, caption, shard, ...)
    shard_root: str | Path,
    output_dir: str | Path,
    config: PipelineConfig,
    on_log: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
    resume: bool = False,
    extra_state: dict | None = None,
) -> PretrainOutput:
    """Train a CLIP model on the kept rows, streamed from their shards, and write checkpoint/, holdout.parquet and
    history.json.

    With `train.checkpoint_every`, `output_dir/train_state.pt` is kept current and `resume=True` continues from
    it (reusing the tokenizer already in `output_dir`). Under torchrun every process runs this: process 0 trains
    the tokenizer (or copies a pretrained text tower's) and the others load it (so all share one vocabulary), each
    process streams its own shards, training is data-parallel, and only process 0 writes files.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    init_from_env(resolve_device(config.train.device, "train.device"))
    rank, world = rank_and_world()
    holdout = select_holdout(kept_path, config.train.holdout_size, config.train.seed)
    exclusion = None
    if config.train.exclude_classes:  # the held-out-classes experiment: these classes never train
        exclusion = excluded_rows(kept_path, config.train.exclude_classes, load_class_names(config.eval.class_names),
                                  config.train.exclude_labeled)
    rows = training_rows(kept_path, holdout, config.train.max_rows, exclusion.uids if exclusion else frozenset())
    model_config = resolve_model_config(config.model)  # a pretrained CLIP sets the image size
    tokenizer_path = output_dir / "tokenizer.json"
    if rank == 0 and not (resume and tokenizer_path.exists()):
        holdout.write_parquet(output_dir / "holdout.parquet")
        # a pretrained text tower comes with its tokenizer; otherwise train BPE on the captions, streamed
        tokenizer = load_pretrained_tokenizer(model_config)
        if tokenizer is None:
            tokenizer = train_tokenizer(iter_captions(rows), model_config.vocab_size, model_config.context_length)
        tokenizer.save(str(tokenizer_path))
    barrier()
    tokenizer = load_tokenizer(tokenizer_path, model_config.context_length)
    spec = LOSSES[config.loss.name]  # the objective's own starting scale and bias (SigLIP: t = 10, b = -10)
    if spec.scale_init is not None:
        model_config = dataclasses.replace(model_config, logit_scale_init=spec.scale_init)
    torch.manual_seed(config.train.seed)  # the initial weights too: identical params give identical runs
    model = build_model(model_config, tokenizer, logit_bias_init=spec.bias_init)
    data = stream_spec(rows, shard_root, config, model_config, tokenizer_path, world)
    result = train_clip(model, data, rows.rows, config.train, config.loss, on_log=on_log, progress=progress,
                        state_path=output_dir / "train_state.pt", resume=resume, extra_state=extra_state)
    checkpoint, history_path = output_dir / "checkpoint", output_dir / "history.json"
    if rank == 0:
        save_checkpoint(checkpoint, model.cpu(), tokenizer)
        save_templates(checkpoint, load_templates(config.eval.templates))
        history_path.write_text(json.dumps(result.history))
    barrier()
    return PretrainOutput(checkpoint, rows.rows, holdout.height, result, exclusion)
