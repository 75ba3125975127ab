"""The CLIP+Reg study as one self-contained HTML page (plots embedded as PNG): per-variant tables, the paired
differences against CLIP with their intervals, the geometry against the regulariser's weight and the held-out-classes
runs, each with a sentence on what it measures and what Chen et al. (ICLR 2024) predict."""

from __future__ import annotations

import html
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clipcore.evaluate.metric_names import EVAL_AVERAGE, HELD_OUT_CLASSES  # noqa: E402
from clipcore.report.render import _figure_to_data_uri  # noqa: E402
from clipcore.report.study import GEOMETRY, StudyResult, Variant  # noqa: E402

GEOMETRY_TEXT = {
    "margin": "mean over the held-out pairs of cos(image, its caption) minus the cosine of its hardest negative "
              "caption. The paper's theory: CLIP at a fixed temperature learns a small margin, and the positive-pair "
              "regulariser enlarges it, so the margin should grow with λ.",
    "positive_cosine": "mean cosine of each held-out image with its own caption. The regulariser pulls exactly on "
                       "it, so it should rise with λ (a rise without a larger margin means negatives moved up too).",
    "modality_gap": "distance between the mean image and the mean caption embedding (Liang et al., 2022). Pulling "
                    "positives together should narrow it as λ grows.",
    "temperature": "the learned τ = 1 / logit scale at the end of training. CLIP's own way to separate pairs is to "
                   "lower τ; the paper's claim is that the regulariser raises the margin without needing a lower τ, "
                   "so τ should stay at or above CLIP's.",
}
HELD_OUT_TEXT = {
    "zero_shot_top1_unseen_classes": "test images of the held-out classes, classified among all classes",
    "zero_shot_top1_seen_classes": "test images of the trained classes, among all classes",
    "zero_shot_top1_unseen_among_unseen": "test images of the held-out classes, among the held-out classes only",
}


def _esc(value) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _short(metric: str) -> str:
    return metric.removeprefix("task/").removesuffix("/main_metric")


def summary_table(result: StudyResult, variants: list[Variant], metrics: list[str]) -> str:
    rows = [[v.label, *(result.summaries[v][k].text() if k in result.summaries[v] else "-" for k in metrics)]
            for v in variants]
    return _table(["variant (mean ± sd over seeds)", *map(_short, metrics)], rows)


def difference_table(result: StudyResult, variants: list[Variant], metrics: list[str]) -> str:
    rows = []
    for v in variants:
        diffs = result.differences.get(v, {})
        rows.append([f"{v.label} − clip", *(f"{diffs[k].text()}: {diffs[k].verdict}" if k in diffs else "-"
                                            for k in metrics)])
    return _table(["paired by seed: mean [95% t interval]", *map(_short, metrics)], rows)


def summary_plot(result: StudyResult, variants: list[Variant], metrics: list[str], per_row: int = 4) -> str:
    """One panel per metric (`per_row` to a row): each variant's mean (bar) ± sd (whisker) and its seeds (dots)."""
    rows = math.ceil(len(metrics) / per_row)
    fig, axes = plt.subplots(rows, min(per_row, len(metrics)), squeeze=False,
                             figsize=(3.4 * min(per_row, len(metrics)) + 1.5, rows * (0.35 * len(variants) + 1.2)))
    for k, ax in enumerate(axes.flat):
        if k >= len(metrics):
            ax.axis("off")
            continue
        key = metrics[k]
        for y, v in enumerate(variants):
            if key not in result.summaries[v]:
                continue
            s = result.summaries[v][key]
            ax.barh(y, s.mean, xerr=None if math.isnan(s.sd) else s.sd, color="C0" if v.loss == "clip" else "C1",
                    alpha=0.6, capsize=3)
            seeds = [r.metrics[key] for r in result.runs if r.variant == v and key in r.metrics]
            ax.scatter(seeds, [y] * len(seeds), s=10, color="k", zorder=3)
        ax.set_title(_short(key), fontsize=9)
        ax.set_yticks(range(len(variants)), [v.label for v in variants] if k % per_row == 0 else [], fontsize=8)
        ax.set_ylim(len(variants) - 0.5, -0.5)
    fig.tight_layout()
    return _figure_to_data_uri(fig)


def difference_plot(result: StudyResult, variants: list[Variant], metric: str) -> str:
    """Each variant's paired difference from CLIP on `metric`: the per-seed values and the mean with its interval."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(variants) + 1.2))
    for y, v in enumerate(variants):
        d = result.differences.get(v, {}).get(metric)
        if d is None:
            continue
        ax.scatter(d.differences, [y] * len(d.differences), s=14, color="0.6", zorder=2)
        if not math.isnan(d.low):
            ax.plot([d.low, d.high], [y, y], color="C0", lw=2, zorder=3)
        ax.scatter([d.mean], [y], color="C0", s=40, zorder=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(variants)), [v.label for v in variants])
    ax.set_xlabel(f"{_short(metric)}: variant − clip (dots: seeds; bar: 95% t interval)")
    ax.invert_yaxis()
    return _figure_to_data_uri(fig)


def geometry_plot(result: StudyResult, held_out: tuple[str, ...] = ()) -> str:
    """Margin, positive cosine, modality gap and temperature (mean ± sd over seeds) against λ; CLIP is λ = 0, CyCLIP
    and SigLIP are drawn at the right edge for reference."""
    fig, axes = plt.subplots(1, len(GEOMETRY), figsize=(4 * len(GEOMETRY), 3.2))
    reg = [v for v in result.variants if v.held_out == held_out and v.loss in ("clip", "clip_reg")
           and v.reg_form in (None, "one_minus_cos")]
    others = [v for v in result.variants if v.held_out == held_out and v.loss not in ("clip", "clip_reg")]
    weights = [v.reg_weight or 0.0 for v in reg]
    for ax, key in zip(axes, GEOMETRY, strict=True):
        points = [(w, result.summaries[v][key]) for w, v in zip(weights, reg, strict=True)
                  if key in result.summaries[v]]
        if points:
            ax.errorbar([w for w, _ in points], [s.mean for _, s in points],
                        yerr=[0 if math.isnan(s.sd) else s.sd for _, s in points], marker="o", capsize=3,
                        label="clip (λ=0) / clip_reg")
        right = max(weights, default=1.0) * 1.15 or 1.0
        for k, v in enumerate(others):
            if key in result.summaries[v]:
                s = result.summaries[v][key]
                ax.errorbar([right], [s.mean], yerr=[0 if math.isnan(s.sd) else s.sd], marker="s^v"[k % 3],
                            color=f"C{k + 1}", capsize=3, label=v.loss)
        ax.set_title(key)
        ax.set_xlabel("λ (reg_weight)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _figure_to_data_uri(fig)


def claim_sentence(result: StudyResult, metric: str = EVAL_AVERAGE) -> str:
    """Whether the paper's claim (CLIP+Reg above CLIP) held here on `metric`, weight by weight, from the intervals."""
    verdicts = {v: result.differences[v][metric] for v in result.variants
                if v.loss == "clip_reg" and not v.held_out and metric in result.differences.get(v, {})}
    if not verdicts:
        return f"No CLIP+Reg run has a CLIP run of the same seed to compare {metric} with."
    listed = "; ".join(f"λ={v.reg_weight:g}: {d.text()}, {d.verdict}" for v, d in verdicts.items())
    better = [f"{v.reg_weight:g}" for v, d in verdicts.items() if d.verdict == "better"]
    worse = [f"{v.reg_weight:g}" for v, d in verdicts.items() if d.verdict == "worse"]
    if all(d.verdict == "too few seeds for an interval" for d in verdicts.values()):
        held = "cannot be judged: every weight has fewer than two seeds paired with CLIP"
    elif better:
        held = f"holds here for λ = {', '.join(better)} (95% interval above 0)"
    else:
        held = "does not hold here for any weight (no 95% interval above 0)"
    return (f"CLIP+Reg minus CLIP on {metric}, paired by seed: {listed}. The paper's claim that CLIP+Reg beats CLIP "
            f"{held}" + (f"; it is worse for λ = {', '.join(worse)}." if worse else "."))


def render_study(result: StudyResult, notes: list[str]) -> str:
    """The study page: `notes` (what ran, the budget, missing or failed runs) first, then every section."""
    grid = [v for v in result.variants if not v.held_out]
    held = [v for v in result.variants if v.held_out]
    main = [k for k in result.metrics if k not in HELD_OUT_CLASSES]
    paired = [v for v in grid if v != v.baseline]
    parts = ["<h1>CLIP+Reg study</h1>", "".join(f"<p>{_esc(n)}</p>" for n in notes),
             f"<p><b>{_esc(claim_sentence(result))}</b></p>"]
    if grid:
        parts += ["<h2>Per variant</h2>", "<p>Mean ± sample standard deviation over seeds of the evaluation suite's "
                  "average (eval_average), each task's main metric, the test set's zero-shot top-1 and linear probe."
                  "</p>", summary_table(result, grid, main),
                  f'<img alt="per variant" src="{summary_plot(result, grid, main)}">']
    if paired:
        parts += ["<h2>Paired difference from CLIP</h2>",
                  "<p>Runs with the same seed share initialization, data order and held-out pairs, so each variant is "
                  "compared with CLIP seed by seed; the interval is the mean difference ± t<sub>0.975, n−1</sub> · "
                  "sd / √n. An interval that contains 0 means no difference this study can detect. The paper reports "
                  "CLIP+Reg above CLIP on 5 of 6 zero-shot tasks and all 7 linear probes (one seed each).</p>",
                  difference_table(result, paired, main)]
        for metric in [m for m in (EVAL_AVERAGE, "zero_shot_top1") if m in main]:
            parts.append(f'<img alt="{_esc(metric)} minus clip" src="{difference_plot(result, paired, metric)}">')
    if any(k in result.summaries[v] for v in grid for k in GEOMETRY):
        parts += ["<h2>Geometry at the end of training against λ</h2>", f'<img alt="geometry" src="'
                  f'{geometry_plot(result)}">', summary_table(result, grid, list(GEOMETRY)), "<ul>",
                  *(f"<li><b>{k}</b>: {_esc(t)}</li>" for k, t in GEOMETRY_TEXT.items()), "</ul>"]
        if paired:
            parts.append(difference_table(result, paired, list(GEOMETRY)))
    if held:
        keys = [k for k in (*HELD_OUT_CLASSES, "zero_shot_top1", EVAL_AVERAGE) if k in result.metrics]
        parts += ["<h2>Held-out classes</h2>", "<p>Trained without the held-out classes' captions and images "
                  "(train.exclude_classes), then classified zero-shot: the transfer case the paper's theory is about. "
                  + "; ".join(f"<b>{_short(k)}</b>: {_esc(t)}" for k, t in HELD_OUT_TEXT.items()) + ".</p>",
                  summary_table(result, held, keys)]
        held_paired = [v for v in held if v != v.baseline]
        if held_paired:
            parts.append(difference_table(result, held_paired, keys))
            if "zero_shot_top1_unseen_classes" in keys:
                parts.append(f'<img alt="held-out minus clip" src="'
                             f'{difference_plot(result, held_paired, "zero_shot_top1_unseen_classes")}">')
    rows = [[r.name, r.variant.label, str(r.seed), str(r.samples_seen or "-"),
             *(f"{r.metrics[k]:.4f}" if k in r.metrics else "-" for k in result.metrics)] for r in result.runs]
    parts += ["<h2>Every run</h2>", _table(["experiment", "variant", "seed", "samples seen",
                                           *map(_short, result.metrics)], rows)]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>CLIP+Reg study</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
