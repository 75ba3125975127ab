"""A self-contained HTML report (plots embedded as base64 PNG) and its Markdown summary."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from clipcore.evaluate.metric_names import SUMMARY  # noqa: E402


@dataclass
class ReportInputs:
    """Everything the report shows; plain values only."""

    funnel: dict  # rows_in, kept, rejected, rejected_by_reason
    history: list[dict]  # step, loss, lr, temperature
    metrics: dict[str, float]
    class_names: list[str]
    per_class_accuracy: list[float]
    confusion: list[list[int]]
    retrieval_examples: list[dict]  # caption, images: [(uint8 array, is_match)]
    identifiers: dict[str, str]
    decision: str
    config: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)  # every training run: filter settings, loss, top-1
    confused_pairs: list[dict] = field(default_factory=list)  # true, predicted, count, images: [uint8 arrays]
    comparison: list[dict] = field(default_factory=list)  # candidate vs champion on the same test set
    suite: list[dict] = field(default_factory=list)  # one row per evaluation task: its main metric, both models
    facts: dict = field(default_factory=dict)  # test set (name, size), prompts, training date/time/hardware
    templates: list[str] = field(default_factory=list)  # the prompt templates the zero-shot classifier used
    rejected_examples: list[dict] = field(default_factory=list)  # reason, rows: [(uid, uint8 array or None)]


def _figure_to_data_uri(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumbnail(image: np.ndarray, size: int = 64) -> str:
    """A PNG data URI of `image` (HW, HWC, or CHW as the labeled sets give a 3-channel model's images) scaled (nearest
    neighbour) so that its longer side is `size`."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    array = array.squeeze()
    height, width = array.shape[:2]
    scale = size / max(height, width)
    buf = io.BytesIO()
    Image.fromarray(array).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                  Image.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_funnel(funnel: dict) -> str:
    labels = ["rows in", "kept"] + list(funnel["rejected_by_reason"])
    values = [funnel["rows_in"], funnel["kept"]] + list(funnel["rejected_by_reason"].values())
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1))
    colors = ["#4c72b0", "#55a868"] + ["#c44e52"] * (len(labels) - 2)
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    for i, v in enumerate(values[::-1]):
        ax.text(v, i, f" {v:,}", va="center")
    ax.set_xscale("log")
    ax.set_title("Data funnel (log scale)")
    return _figure_to_data_uri(fig)


def plot_training(history: list[dict]) -> str:
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    for ax, key in zip(axes, ["loss", "lr", "temperature"], strict=True):
        ax.plot(steps, [h[key] for h in history])
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    return _figure_to_data_uri(fig)


def plot_diagnostics(history: list[dict]) -> str:
    """Chen et al.'s quantities over training (on each logged batch): positive vs hardest-negative cosine, margin."""
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    axes[0].plot(steps, [h["positive_cosine"] for h in history], label="positive pairs")
    axes[0].plot(steps, [h["hardest_negative_cosine"] for h in history], label="hardest negative")
    axes[0].legend()
    axes[0].set_title("cosine")
    axes[1].plot(steps, [h["margin"] for h in history])
    axes[1].set_title("margin (positive - hardest negative)")
    axes[2].plot(steps, [h["modality_gap"] for h in history])
    axes[2].set_title("modality gap")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    return _figure_to_data_uri(fig)


def plot_per_class(class_names: list[str], accuracy: list[float]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(class_names, accuracy, color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("zero-shot accuracy")
    ax.tick_params(axis="x", rotation=45)
    return _figure_to_data_uri(fig)


def plot_confusion(class_names: list[str], confusion: list[list[int]]) -> str:
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > matrix.max() / 2 else "black")
    ax.set_title("Zero-shot confusion matrix")
    return _figure_to_data_uri(fig)


def _table(rows: dict) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _rows_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>No other runs yet.</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def per_class_table(class_names: list[str], accuracy: list[float], confusion: list[list[int]]) -> str:
    """The per-class values behind the plot: test images of the class, zero-shot accuracy (recall), precision."""
    matrix = np.asarray(confusion)
    predicted = matrix.sum(axis=0)
    rows = [{"class": name, "images": int(matrix[i].sum()), "accuracy": float(accuracy[i]),
             "precision": float(matrix[i, i] / predicted[i]) if predicted[i] else "-"}
            for i, name in enumerate(class_names)]
    return _rows_table(rows)


def rejected_gallery(examples: list[dict]) -> str:
    """A few rejected samples per reason (uid as the tooltip); rows the ingest stored no image for say so."""
    parts = []
    for group in examples:
        thumbs = "".join(
            f'<img src="{_thumbnail(image)}" title="{html.escape(uid)}" alt="rejected: {html.escape(group["reason"])}">'
            if image is not None else f'<span class="noimage" title="{html.escape(uid)}">no image</span>'
            for uid, image in group["rows"])
        parts.append(f'<div class="example"><p>{html.escape(group["reason"])}</p>{thumbs}</div>')
    return "".join(parts)


def render_report(inputs: ReportInputs) -> str:
    """The whole report as one HTML string."""
    f = inputs.funnel
    funnel_rows = {"rows in": f["rows_in"], "kept": f["kept"], "rejected": f["rejected"],
                   **{f"rejected: {k}": v for k, v in f["rejected_by_reason"].items()}}
    examples = []
    for ex in inputs.retrieval_examples:
        thumbs = "".join(
            f'<img src="{_thumbnail(img)}" class="{"hit" if hit else "miss"}" alt="retrieved image">'
            for img, hit in ex["images"]
        )
        examples.append(f'<div class="example"><p>"{html.escape(ex["caption"])}"</p>{thumbs}</div>')
    prompts = ("<details><summary>All prompt templates</summary><ol>"
               + "".join(f"<li>{html.escape(t)}</li>" for t in inputs.templates) + "</ol></details>"
               if inputs.templates else "")
    sections = [
        ("Summary", f"<p>{html.escape(inputs.decision)}</p>" + _table(inputs.facts) + prompts + _table(
            {k: inputs.metrics[k] for k in SUMMARY if k in inputs.metrics})
         + "<h3>Candidate vs champion (same test set)</h3>" + _rows_table(inputs.comparison)),
        ("Evaluation suite", "<p>Each task's main metric (DataComp's: top-1, mean per-class recall for the tasks it "
         "scores so, mean of both R@1 for retrieval), the candidate beside the champion measured now on the same "
         "task; the average is their unweighted mean, which the promotion gate compares.</p>"
         + _rows_table(inputs.suite)),
        ("Data funnel", f'<img src="{plot_funnel(f)}" alt="data funnel">' + _table(funnel_rows)
         + ("<h3>Rejected samples, by reason</h3>" + rejected_gallery(inputs.rejected_examples)
            if inputs.rejected_examples else "")),
        ("Training", f'<img src="{plot_training(inputs.history)}" alt="training curves">'
         + (f'<img src="{plot_diagnostics(inputs.history)}" alt="margin diagnostics">'
            if inputs.history and "margin" in inputs.history[0] else "")),
        ("Zero-shot classification",
         f'<div class="side"><img src="{plot_per_class(inputs.class_names, inputs.per_class_accuracy)}" '
         f'alt="per-class accuracy">{per_class_table(inputs.class_names, inputs.per_class_accuracy, inputs.confusion)}'
         f'</div><img src="{plot_confusion(inputs.class_names, inputs.confusion)}" alt="confusion matrix">'
         + "<h3>Most confused pairs</h3>" + "".join(
             f'<div class="example"><p>{html.escape(p["true"])} predicted as {html.escape(p["predicted"])}: '
             f'{p["count"]} images</p>' + "".join(f'<img src="{_thumbnail(im)}" alt="confused example">'
                                                  for im in p["images"]) + "</div>"
             for p in inputs.confused_pairs)),
        ("Retrieval", "<p>Held-out captions and the top images they retrieve (green: the caption's own image). "
         "Templated captions describe a class, not one image, so many images match each caption equally well "
         "and R@k is low by construction; the examples show whether the retrieved images fit the caption.</p>"
         + "".join(examples)),
        ("Runs compared", "<p>Every evaluated training run in the experiment, newest first, with the dataset it "
         "trained on (compare top-1 only within one dataset): the effect of filtering (including CLIP-score "
         "filtering by the champion) and of the loss on zero-shot top-1.</p>"
         + _rows_table(inputs.runs)),
        ("All metrics", _table(inputs.metrics)),
        ("Run and model", _table(inputs.identifiers)),
        ("Configuration", _table(inputs.config)),
    ]
    body = "".join(f'<section id="{t.lower().replace(" ", "-")}"><h2>{t}</h2>{c}</section>' for t, c in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CLIP pipeline report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }} th, td {{ border: 1px solid #ddd; padding: 3px 8px; }}
th {{ text-align: left; background: #f5f5f5; font-weight: normal; }} img {{ max-width: 100%; }}
.example img {{ margin: 2px; border: 3px solid #ccc; }} .example img.hit {{ border-color: #2a2; }}
.side {{ display: flex; gap: 1em; align-items: flex-start; }} .side img {{ max-width: 60%; }}
.noimage {{ display: inline-block; margin: 2px; padding: 20px 4px; border: 3px dashed #ccc; font-size: 0.8em; }}
</style></head>
<body><h1>CLIP pipeline report</h1>{body}</body></html>
"""


def render_summary(inputs: ReportInputs) -> str:
    """A short Markdown summary (shown as the report asset's Dagster metadata)."""
    m = inputs.metrics
    lines = [
        "# CLIP pipeline report", "", inputs.decision, "",
        "| metric | value |", "|---|---|",
        *[f"| {k} | {m[k]:.4f} |" for k in m if k.startswith(("eval_average", "zero_shot", "retrieval"))],
        "", "| task | main metric | candidate |", "|---|---|---|",
        *[f"| {row['task']} | {row['main metric']} | {_fmt(list(row.values())[4])} |" for row in inputs.suite],
        "", f"Data: {inputs.funnel['rows_in']:,} rows in, {inputs.funnel['kept']:,} kept, "
        f"{inputs.funnel['rejected']:,} rejected.", "",
        f"![zero-shot accuracy per class]({plot_per_class(inputs.class_names, inputs.per_class_accuracy)})",
    ]
    return "\n".join(lines)
