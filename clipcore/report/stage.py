"""The report stage end to end: every stage's products -> out/index.html (self-contained) and out/summary.md."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from clipcore.config import EvalConfig, ModelConfig
from clipcore.data.layout import shard_paths
from clipcore.data.tar_index import index_shard, read_at
from clipcore.evaluate.metric_names import EVAL_AVERAGE, TASK_PREFIX, task_metric
from clipcore.evaluate.stage import load_holdout, open_test_set
from clipcore.model.clip_model import checkpoint_templates
from clipcore.report.render import ReportInputs, render_report, render_summary


@dataclass(frozen=True)
class ReportSources:
    """Where the report reads each stage's products, and what it states beside them."""

    funnel: dict  # the filter stage's counts
    history: str  # the pretrain stage's history.json
    holdout: str  # held-out pairs (uid, shard) of the pretrain stage
    shard_root: str  # the ingest folder holding their images
    metrics: dict[str, float]
    details: str  # the evaluate stage's details.json
    decision: dict  # the promotion decision: reason, candidate/champion versions and metrics
    test_set: EvalConfig  # the test set evaluated (for thumbnails of confused images)
    model: ModelConfig  # the size and channels the model was built with
    identifiers: dict[str, str]  # runs, versions, lineage
    runs: list[dict]  # earlier training runs to compare with
    config: dict  # the training configuration shown
    rejected: str = ""  # the filter stage's rejected.parquet (uid, filter_reason, shard): thumbnails per reason
    checkpoint: str = ""  # the checkpoint folder: the prompt templates stored with it
    training: dict = field(default_factory=dict)  # when, how long, device and hardware of the training run

REJECTED_PER_REASON = 6  # thumbnails shown for each rejection reason
THUMBNAIL_SIDE = 64


def suite_rows(details: dict, decision: dict) -> list[dict]:
    """One row per evaluation task (and the average): its main metric, the candidate's value beside the champion's
    on the same task now, and the delta."""
    champion = decision.get("champion") or {}
    candidate_label, champion_label = f"v{decision['candidate_version']}", f"v{decision['champion_version'] or '-'}"
    rows = []
    for task in [*details.get("suite", []), {"name": "average", "kind": "", "size": "", "main_metric": "",
                                             "value": decision["candidate"].get(EVAL_AVERAGE)}]:
        key = EVAL_AVERAGE if task["name"] == "average" else task_metric(task["name"])
        other = champion.get(key)
        rows.append({"task": task["name"], "kind": task["kind"], "images": task["size"],
                     "main metric": task["main_metric"], f"candidate {candidate_label}": task["value"],
                     f"champion {champion_label}": "-" if other is None else other,
                     "delta": "-" if other is None else f"{task['value'] - other:+.4f}"})
    return rows


def comparison_rows(decision: dict) -> list[dict]:
    """Candidate beside the champion (both on the same test set) with the deltas (the tasks' rows are the suite's)."""
    champion = decision.get("champion") or {}
    rows = []
    for key, value in decision["candidate"].items():
        if key.startswith(TASK_PREFIX):
            continue
        other = champion.get(key)
        rows.append({"metric": key, f"candidate v{decision['candidate_version']}": value,
                     f"champion v{decision['champion_version'] or '-'}": "-" if other is None else other,
                     "delta": "-" if other is None else f"{value - other:+.4f}"})
    return rows


def confused_examples(details: dict, src: ReportSources) -> list[dict]:
    """The most confused class pairs with a few of the test images behind each."""
    pairs = details.get("confused_pairs", [])
    wanted = {i for pair in pairs for i in pair["examples"]}
    images = open_test_set(src.test_set, src.model).pick(wanted, src.test_set.batch_size) if wanted else {}
    return [{**pair, "images": [images[i].numpy() for i in pair["examples"]]} for pair in pairs]


def retrieval_examples(details: dict, src: ReportSources) -> list[dict]:
    """Each example caption with the thumbnails of its top images (and whether each is the caption's own)."""
    examples = details["retrieval_examples"]
    uids = sorted({u for ex in examples for u in ex["top_uids"]})
    loaded, images, _ = load_holdout(src.holdout, src.shard_root, src.model, uids)
    by_uid = {u: images[i].numpy() for i, u in enumerate(loaded)}
    return [{"caption": ex["caption"], "images": [(by_uid[u], u == ex["caption_uid"]) for u in ex["top_uids"]]}
            for ex in examples]


def rejected_examples(rejected: str | Path, shard_root: str | Path,
                      per_reason: int = REJECTED_PER_REASON) -> list[dict]:
    """A few rejected rows per reason (the first by uid) with their stored image as a thumbnail array, or None when
    the ingest stored no image for the row (it failed to fetch) or it does not decode. Reads only those rows'
    shards' tar headers and the chosen images' bytes, never the whole set."""
    rows = (pl.scan_parquet(rejected).select("uid", "filter_reason", "shard").sort("uid")
            .group_by("filter_reason", maintain_order=True).head(per_reason).collect())
    images: dict[str, np.ndarray | None] = {}
    for _, group in rows.filter(pl.col("shard").is_not_null()).group_by("shard"):
        path = Path(shard_paths(shard_root, group)[0])
        if not path.is_file():  # a shard no row of which was stored
            continue
        wanted = set(group["uid"].to_list())
        with path.open("rb") as file:
            for ref in index_shard(str(path)):
                if ref.key in wanted:
                    images[ref.key] = thumbnail_array(read_at(file, ref.image))
    return [{"reason": reason, "rows": [(uid, images.get(uid)) for uid in group["uid"].to_list()]}
            for (reason,), group in rows.group_by("filter_reason", maintain_order=True)]


def thumbnail_array(payload: bytes) -> np.ndarray | None:
    """Stored image bytes as a small uint8 array (longer side THUMBNAIL_SIDE), None when they do not decode."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image = image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB")
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            return np.asarray(image)
    except (OSError, ValueError, Image.DecompressionBombError):  # the corrupt images the filter rejected
        return None


def run_facts(details: dict, src: ReportSources, templates: list[str]) -> dict[str, str]:
    """What was measured, with what and where: the test set (name, size, source), the prompts, the training run's
    date, duration and hardware, and when the report was written."""
    test_set = src.test_set
    size = int(np.asarray(details["confusion"]).sum())
    source = test_set.labeled_set
    return {"test set": f"{test_set.name}: {size:,} images, {len(details['class_names'])} classes ({source})",
            "prompts": f"{len(templates)} templates (eval.templates = {test_set.templates}), e.g. "
                       + "; ".join(f'"{t}"' for t in templates[:3]),
            **src.training, "report written": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def build_report(src: ReportSources, out: str | Path) -> str:
    """Write out/index.html and out/summary.md; returns the Markdown summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    details = json.loads(Path(src.details).read_text())
    templates = checkpoint_templates(src.checkpoint) if src.checkpoint else []
    inputs = ReportInputs(
        funnel=src.funnel,
        history=json.loads(Path(src.history).read_text()),
        metrics=src.metrics,
        class_names=details["class_names"],
        per_class_accuracy=details["per_class_accuracy"],
        confusion=details["confusion"],
        retrieval_examples=retrieval_examples(details, src),
        identifiers=src.identifiers,
        decision=src.decision["reason"],
        comparison=comparison_rows(src.decision),
        suite=suite_rows(details, src.decision),
        runs=src.runs,
        confused_pairs=confused_examples(details, src),
        config=src.config,
        facts=run_facts(details, src, templates),
        templates=templates,
        rejected_examples=rejected_examples(src.rejected, src.shard_root) if src.rejected else [],
    )
    (out / "index.html").write_text(render_report(inputs))
    summary = render_summary(inputs)
    (out / "summary.md").write_text(summary)
    return summary
