"""The evaluate stage end to end: a checkpoint, its test set and held-out pairs -> metrics.json and details.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tokenizers import Tokenizer

from clipcore.config import EvalConfig, ModelConfig
from clipcore.data.labeled_sets import LabeledSet, names_its_classes, open_labeled_set
from clipcore.data.layout import shard_paths
from clipcore.data.shards import load_samples
from clipcore.data.task_shards import CLASSIFICATION, RETRIEVAL, find_tasks, open_task
from clipcore.evaluate.evaluation import evaluate_model, top_confusions
from clipcore.evaluate.metric_names import MAIN_METRIC, ZERO_SHOT
from clipcore.evaluate.metric_names import RETRIEVAL as RETRIEVAL_METRICS
from clipcore.evaluate.promotion import gate_view
from clipcore.evaluate.tasks import RETRIEVAL_MEAN_R1, SuiteResult, evaluate_task, suite_average, task_result
from clipcore.model.clip_model import ClipModel, checkpoint_templates, load_checkpoint
from clipcore.model.device import resolve_device
from clipcore.model.prompts import load_class_names

TOP_K_EXAMPLES = 5
HELDOUT_TASK = "heldout_pairs"
"""The suite's retrieval task on the pretrain stage's held-out caption pairs."""


def open_test_set(e: EvalConfig, m: ModelConfig) -> LabeledSet:
    """The configured test set `eval.labeled_set` (an IDX folder, an ImageFolder tree or a csv; see
    `open_labeled_set`), read in batches at the model's size and channels."""
    names = None if names_its_classes(e.labeled_set) else load_class_names(e.class_names)
    return open_labeled_set(e.labeled_set, names, m.image_size, m.channels, e.max_test_images)


def load_holdout(holdout_path: str | Path, shard_root: str | Path, m: ModelConfig,
                 uids: list[str] | None = None) -> tuple[list[str], torch.Tensor, list[str]]:
    """The pretrain stage's held-out (uid, image, caption) rows (only `uids` when given), read from the shards."""
    holdout = pl.read_parquet(holdout_path)
    if uids is not None:
        holdout = holdout.filter(pl.col("uid").is_in(uids))
    return load_samples(shard_paths(shard_root, holdout), holdout["uid"].to_list(), m.image_size, m.channels,
                        progress=False)


def open_probe_set(e: EvalConfig, m: ModelConfig, class_names: list[str]) -> LabeledSet:
    """The first `eval.probe_size` images of `eval.probe_set`, the test set's linear probe is fitted on (an IDX folder,
    an ImageFolder tree or a csv of (path, label)), labels in the test set's order."""
    names = None if names_its_classes(e.probe_set) else class_names
    return open_labeled_set(e.probe_set, names, m.image_size, m.channels, e.probe_size)


def suite_of(model: ClipModel, tokenizer: Tokenizer, e: EvalConfig, result: dict, pairs: int) -> SuiteResult:
    """The evaluation suite: the labeled test set (task `eval.name`, from `result`, `evaluate_model`'s), the held-out
    pairs' retrieval (task `heldout_pairs`) and every task of `eval.tasks`, read and scored here."""
    m = result["metrics"]
    primary = task_result(e.name, CLASSIFICATION, result["test_images"],
                          {k: v for k, v in m.items() if k in ZERO_SHOT or k.startswith("linear_probe")})
    heldout = {k: m[k] for k in RETRIEVAL_METRICS}
    heldout[RETRIEVAL_MEAN_R1] = (heldout["retrieval_image_to_text_r1"] + heldout["retrieval_text_to_image_r1"]) / 2
    tasks = {e.name: primary, HELDOUT_TASK: task_result(HELDOUT_TASK, RETRIEVAL, pairs, heldout)}
    if e.tasks:
        for directory in find_tasks([e.tasks]):
            task = open_task(directory)
            if task.name in tasks:
                raise ValueError(f"eval.tasks: the task {directory} is named {task.name!r}, as the "
                                 f"{'test set (eval.name)' if task.name == e.name else 'held-out pairs'}; rename one")
            tasks[task.name] = evaluate_task(model, tokenizer, task, e.batch_size, limit=e.max_test_images,
                                             probe_size=e.probe_size)
    return SuiteResult(tasks, suite_average(tasks.values()))


def measure_checkpoint(checkpoint: str | Path, holdout_path: str | Path, shard_root: str | Path,
                       e: EvalConfig, unseen_classes: tuple[str, ...] = ()
                       ) -> tuple[ClipModel, dict, list[str], list[str], SuiteResult]:
    """Everything `run_evaluation` reports of a checkpoint: (model, `evaluate_model`'s result with the suite's flat
    keys added to its metrics, held-out uids, their captions, the suite). `unseen_classes`: the test set's classes
    held out of training (train.exclude_classes), whose zero-shot top-1 is reported apart."""
    model, tokenizer = load_checkpoint(checkpoint)
    model.to(resolve_device(e.device, "eval.device"))
    labeled = open_test_set(e, model.config)
    uids, holdout_images, holdout_captions = load_holdout(holdout_path, shard_root, model.config)
    probe = open_probe_set(e, model.config, labeled.class_names) if e.probe_size > 0 else None
    result = evaluate_model(model, tokenizer, labeled, checkpoint_templates(checkpoint), holdout_images,
                            holdout_captions, e.batch_size, probe, unseen_classes)
    result["class_names"] = labeled.class_names
    suite = suite_of(model, tokenizer, e, result, len(uids))
    result["metrics"].update(suite.metrics())
    return model, result, uids, holdout_captions, suite


def gate_metrics(checkpoint: str | Path, holdout_path: str | Path, shard_root: str | Path,
                 e: EvalConfig) -> dict[str, float]:
    """A checkpoint's metrics the promotion gate compares (`gate_view`: the suite average, zero-shot on the test set,
    each task's main metric), measured now on the same suite and held-out pairs as the candidate's (no linear probes:
    the gate compares none)."""
    no_probes = dataclasses.replace(e, probe_size=0)
    return gate_view(measure_checkpoint(checkpoint, holdout_path, shard_root, no_probes)[1]["metrics"])


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, float]  # the flat keys of outputs/metrics.json
    model_config: ModelConfig  # what the checkpoint was built with (image size, channels)


def run_evaluation(checkpoint: str | Path, holdout_path: str | Path, shard_root: str | Path, e: EvalConfig,
                   out: str | Path, metrics_path: str | Path, identity: dict | None = None,
                   unseen_classes: tuple[str, ...] = ()) -> EvaluationResult:
    """Evaluate the checkpoint on the test set, the held-out pairs and (with `probe_size`) a linear probe; writes
    `metrics_path` and out/details.json (per-class accuracy, confusions, retrieval examples, and `identity`: which
    model these numbers belong to)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, result, uids, holdout_captions, suite = measure_checkpoint(checkpoint, holdout_path, shard_root, e,
                                                                      unseen_classes)
    class_names = result["class_names"]
    similarity = result["retrieval_similarity"]  # (images, captions)
    examples = [
        {"caption": holdout_captions[j], "caption_uid": uids[j],
         "top_uids": [uids[i] for i in np.argsort(-similarity[:, j])[:TOP_K_EXAMPLES]]}
        for j in range(min(e.num_examples, len(uids)))
    ]
    confused = [{"true": class_names[i], "predicted": class_names[j], "count": n,
                 "examples": result["examples"].get((i, j), [])}
                for i, j, n in top_confusions(result["confusion"])]
    details = {"class_names": class_names, "per_class_accuracy": result["per_class_accuracy"],
               "confused_pairs": confused, "confusion": result["confusion"], "retrieval_examples": examples,
               "test_images": result["test_images"], "holdout_pairs": len(uids),
               "suite": [{"name": t.name, "kind": t.kind, "size": t.size, "main_metric": t.main_metric,
                          "value": t.metrics[MAIN_METRIC]} for t in suite.tasks.values()],
               **(identity or {})}
    Path(metrics_path).write_text(json.dumps(result["metrics"], indent=2))
    (out / "details.json").write_text(json.dumps(details, indent=2))
    return EvaluationResult(result["metrics"], model.config)
