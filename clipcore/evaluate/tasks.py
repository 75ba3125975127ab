"""A model judged on a suite of evaluation tasks (CLIP_benchmark's webdataset layout, clipcore.data.task_shards), as
DataComp does: per task its zero-shot classification (top-1, top-5, mean per-class recall) or image<->text retrieval
(R@1/5/10), a linear probe where the task has a train split, and its main metric; the suite's score is the unweighted
mean of the tasks' main metrics.

DataComp's main metric (its tasklist.yml, `main_metric` defaulting to `acc1`): top-1 for classification, mean
per-class recall for Caltech-101, FGVC Aircraft, Oxford Flowers-102 and Oxford-IIIT Pet, and for retrieval
`mean_recall@1`, the mean of image->text and text->image R@1.

Every task is read one batch at a time on the model's device; only (N, D) embeddings are kept, for the linear probe
and for retrieval.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from clipcore.data.task_shards import (
    CLASSIFICATION,
    RETRIEVAL,
    EvalTask,
    open_task,
    retrieval_batches,
    task_labeled_set,
)
from clipcore.evaluate.evaluation import (
    embed_labeled_set,
    embed_texts,
    encode_image_batch,
    zero_shot,
    zero_shot_metrics,
)
from clipcore.evaluate.linear_probe import linear_probe
from clipcore.evaluate.metric_names import ZERO_SHOT
from clipcore.evaluate.retrieval import retrieval_metrics
from clipcore.model.clip_model import ClipModel

RETRIEVAL_MEAN_R1 = "retrieval_mean_r1"
"""DataComp's `mean_recall@1`: the mean of image->text and text->image R@1."""
MEAN_PER_CLASS_TASKS = frozenset({"caltech101", "fgvc_aircraft", "flowers", "pets"})
"""Tasks DataComp scores by mean per-class recall (vtab/caltech101, fgvc_aircraft, vtab/flowers, vtab/pets)."""
DATACOMP_NAMES = {"acc1": ZERO_SHOT[0], "acc5": ZERO_SHOT[1], "mean_per_class_recall": ZERO_SHOT[2],
                  "mean_recall@1": RETRIEVAL_MEAN_R1}
"""DataComp's metric names -> ours, so a `main_metrics` override may use either."""
PROBE_SIZE = 10_000
"""Train-split images a linear probe is fitted on by default (eval.probe_size's default)."""


def main_metric_key(task_name: str, kind: str) -> str:
    """The metric DataComp ranks a task by, under our name. A task is recognised by its folder name with any
    `wds_`/`vtab` prefix and `_test` suffix taken off (`wds_vtab-pets`, `vtab/pets` and `pets` are Oxford Pets)."""
    if kind == RETRIEVAL:
        return RETRIEVAL_MEAN_R1
    name = re.sub(r"[^a-z0-9]+", "_", task_name.lower()).strip("_")
    name = re.sub(r"^(wds_)?(vtab_)?", "", name).removesuffix("_test")
    return ZERO_SHOT[2] if name in MEAN_PER_CLASS_TASKS else ZERO_SHOT[0]


@dataclass(frozen=True)
class TaskResult:
    """One task's numbers."""

    name: str
    kind: str  # classification or retrieval
    size: int  # test images
    metrics: dict[str, float]  # zero_shot_* or retrieval_*, linear_probe_* with a train split, and main_metric
    main_metric: str  # the key in `metrics` that `metrics["main_metric"]` copies
    details: dict = field(default_factory=dict)  # classification: class_names, per_class_accuracy, confusion


@dataclass(frozen=True)
class SuiteResult:
    """A suite's tasks by name, and the unweighted mean of their main metrics."""

    tasks: dict[str, TaskResult]
    average: float

    def metrics(self) -> dict[str, float]:
        """Flat keys for metrics.json and MLflow: `task/<name>/<metric>` for every task's metrics, and
        `eval_average`."""
        flat = {f"task/{name}/{key}": value for name, task in self.tasks.items() for key, value in task.metrics.items()}
        return {**flat, "eval_average": self.average}

    def as_dict(self) -> dict:
        """`{task name: {metric: value}, "eval_average": average}`."""
        return {**{name: dict(task.metrics) for name, task in self.tasks.items()}, "eval_average": self.average}


def suite_average(results: Iterable[TaskResult]) -> float:
    """The unweighted mean of the tasks' main metrics (DataComp's average).

    Raises:
        ValueError: no tasks.
    """
    values = [r.metrics["main_metric"] for r in results]
    if not values:
        raise ValueError("the suite has no tasks")
    return float(np.mean(values))


def _classification(model: ClipModel, tokenizer: Tokenizer, task: EvalTask, split: str, train_split: str,
                    batch_size: int, limit: int | None, probe_size: int | None) -> tuple[int, dict, dict]:
    size, channels = model.config.image_size, model.config.channels
    test = task_labeled_set(task, split, size, channels, limit)
    probe = task_labeled_set(task, train_split, size, channels, probe_size) if (
        probe_size != 0 and task.has_split(train_split)) else None
    classes, test_features = zero_shot(model, tokenizer, test, task.templates, batch_size,
                                       keep_embeddings=probe is not None)
    metrics = zero_shot_metrics(classes)
    if probe is not None:
        probe_emb, probe_labels = embed_labeled_set(model, probe, batch_size)  # (P, D), (P,)
        test_emb, test_labels = test_features  # (N, D), (N,)
        metrics.update(linear_probe(probe_emb.numpy(), probe_labels, test_emb.numpy(), test_labels))
    details = {"class_names": task.class_names, "per_class_accuracy": classes["per_class_accuracy"],
               "confusion": classes["confusion"]}
    return classes["count"], metrics, details


def _retrieval(model: ClipModel, tokenizer: Tokenizer, task: EvalTask, split: str,
               batch_size: int) -> tuple[int, dict, dict]:
    image_emb, text_emb, owner = [], [], []  # owner: (T,) the image index of each caption
    count = 0
    for images, captions in retrieval_batches(task, split, batch_size, model.config.image_size,
                                              model.config.channels):
        image_emb.append(encode_image_batch(model, images).cpu())  # (B, D)
        text_emb.append(embed_texts(model, tokenizer, [c for texts in captions for c in texts], batch_size))
        owner.extend(count + i for i, texts in enumerate(captions) for _ in texts)
        count += len(captions)
    if count == 0:
        raise ValueError(f"{task.root}: split {split!r} has no images")
    recall = retrieval_metrics(torch.cat(image_emb).numpy(), torch.cat(text_emb).numpy(), np.asarray(owner))
    metrics = {f"retrieval_{k}": v for k, v in recall.items()}
    metrics[RETRIEVAL_MEAN_R1] = (metrics["retrieval_image_to_text_r1"] + metrics["retrieval_text_to_image_r1"]) / 2
    return count, metrics, {"captions": len(owner)}


def evaluate_task(model: ClipModel, tokenizer: Tokenizer, task: str | Path | EvalTask, batch_size: int = 1_000,
                  split: str = "test", train_split: str = "train", limit: int | None = None,
                  probe_size: int | None = PROBE_SIZE, main_metric: str | None = None) -> TaskResult:
    """Evaluate one task directory on the model's device (move the model there first).

    Args:
        task: a task directory (or an already opened `EvalTask`).
        split: the split scored; `train_split`: the one a linear probe is fitted on, when the task has it.
        limit: score at most this many test images (tiny runs); None: all.
        probe_size: fit the probe on at most this many train images; 0 skips the probe, None uses them all.
        main_metric: override DataComp's choice (`main_metric_key`): one of our metric names or DataComp's
            (`acc1`, `mean_per_class_recall`, `mean_recall@1`).

    Raises:
        ValueError: an empty split, labels outside the class names, broken samples, an unknown `main_metric`.
    """
    task = task if isinstance(task, EvalTask) else open_task(task)
    if task.kind == CLASSIFICATION:
        size, metrics, details = _classification(model, tokenizer, task, split, train_split, batch_size, limit,
                                                  probe_size)
    else:
        size, metrics, details = _retrieval(model, tokenizer, task, split, batch_size)
    return task_result(task.name, task.kind, size, metrics, details, main_metric)


def task_result(name: str, kind: str, size: int, metrics: dict[str, float], details: dict | None = None,
                main_metric: str | None = None) -> TaskResult:
    """A task's result with its main metric chosen (`main_metric`, else DataComp's) and copied to
    `metrics["main_metric"]`.

    Raises:
        ValueError: the main metric is not among `metrics`.
    """
    key = DATACOMP_NAMES.get(main_metric, main_metric) if main_metric else main_metric_key(name, kind)
    if key not in metrics:
        raise ValueError(f"task {name}: main metric {main_metric or key!r} is not among {sorted(metrics)}")
    return TaskResult(name, kind, size, {**metrics, "main_metric": metrics[key]}, key, details or {})


def evaluate_suite(model: ClipModel, tokenizer: Tokenizer, task_dirs: Iterable[str | Path], batch_size: int = 1_000,
                   limit: int | None = None, probe_size: int | None = PROBE_SIZE,
                   main_metrics: Mapping[str, str] | None = None) -> SuiteResult:
    """Evaluate every task (named by its folder) and average their main metrics.

    `main_metrics` maps a task name to a main metric overriding DataComp's choice (see `evaluate_task`).

    Raises:
        ValueError: two tasks with the same folder name, or no tasks.
    """
    tasks = [open_task(d) for d in task_dirs]
    names: dict[str, Path] = {}
    for task in tasks:
        if task.name in names:
            raise ValueError(f"two evaluation tasks are named {task.name!r}: {names[task.name]} and {task.root}")
        names[task.name] = task.root
    main_metrics = main_metrics or {}
    results = {task.name: evaluate_task(model, tokenizer, task, batch_size, limit=limit, probe_size=probe_size,
                                        main_metric=main_metrics.get(task.name)) for task in tasks}
    return SuiteResult(results, suite_average(results.values()))
