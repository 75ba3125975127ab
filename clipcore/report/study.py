"""The statistics of the CLIP+Reg study (issue 15): runs of several objectives x seeds -> per-variant mean and standard
deviation, paired differences against CLIP with a t interval, and the embedding geometry against the regulariser's
weight. Plain data in, plain data out (pipelines/study.py reads the DVC experiments; study_render.py draws them).

A run is one training + evaluation; runs with the same objective, weight, regulariser form and held-out classes form a
variant; the seed (`train.seed`) is what varies inside a variant, and runs of two variants with the same seed share
their initialization, data order and held-out pairs, hence the pairing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from clipcore.evaluate.metric_names import EVAL_AVERAGE, HELD_OUT_CLASSES, LINEAR_PROBE, is_task_main_metric

LOSS_ORDER = ("clip", "clip_reg", "cyclip", "siglip")
GEOMETRY = ("margin", "positive_cosine", "modality_gap", "temperature")
"""Measured by evaluation on the held-out pairs at the end of training (clipcore/model/margins.py)."""
LEVEL = 0.95


@dataclass(frozen=True, order=True)
class Variant:
    """What a run trained with, besides its seed."""

    held_out: tuple[str, ...]  # train.exclude_classes: () for the main grid
    loss_rank: int  # LOSS_ORDER's position, for sorting
    loss: str
    reg_weight: float | None  # clip_reg only
    reg_form: str | None  # clip_reg only

    @classmethod
    def of(cls, params: dict) -> Variant:
        """The variant of a run from its flat params (`loss.name`, `loss.reg_weight`, ...)."""
        loss = params["loss.name"]
        reg = loss == "clip_reg"
        rank = LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER)
        return cls(tuple(params.get("train.exclude_classes") or ()), rank, loss,
                   float(params["loss.reg_weight"]) if reg else None,
                   params.get("loss.reg_form", "one_minus_cos") if reg else None)

    @property
    def label(self) -> str:
        name = self.loss
        if self.reg_weight is not None:
            name += f" λ={self.reg_weight:g}" + ("" if self.reg_form == "one_minus_cos" else f" ({self.reg_form})")
        return (f"held-out {','.join(self.held_out)}: " if self.held_out else "") + name

    @property
    def baseline(self) -> Variant:
        """The CLIP variant this one is paired with (same held-out classes)."""
        return Variant(self.held_out, 0, "clip", None, None)


@dataclass(frozen=True)
class StudyRun:
    """One finished run: its name, variant, seed and metrics (outputs/metrics.json's flat keys)."""

    name: str
    variant: Variant
    seed: int
    metrics: dict[str, float]
    samples_seen: int | None = None  # train.samples_seen (the budget; None: epochs x rows)


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (n - 1) of n values; sd is NaN for n = 1."""

    n: int
    mean: float
    sd: float

    def text(self, digits: int = 4) -> str:
        sd = "" if math.isnan(self.sd) else f" ± {self.sd:.{digits}f}"
        return f"{self.mean:.{digits}f}{sd} (n={self.n})"


@dataclass(frozen=True)
class PairedDifference:
    """Variant minus its baseline, seed by seed: the differences, their mean and a two-sided t interval."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    sd: float
    low: float  # NaN with fewer than two pairs
    high: float

    def text(self, digits: int = 4) -> str:
        if math.isnan(self.low):
            return f"{self.mean:+.{digits}f} (n={len(self.seeds)}, no interval)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] (n={len(self.seeds)})"

    @property
    def verdict(self) -> str:
        """What the interval says: above zero, below zero, or inside the noise."""
        if math.isnan(self.low):
            return "too few seeds for an interval"
        if self.low > 0:
            return "better"
        return "worse" if self.high < 0 else "no detectable difference"


def summarize(values: list[float]) -> Summary:
    """Mean and sample standard deviation.

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("no values to summarize")
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Summary(n, mean, sd)


def t_interval(differences: list[float], level: float = LEVEL) -> tuple[float, float]:
    """Two-sided `level` t interval of the mean of paired differences: mean ± t_{(1+level)/2, n-1} sd / sqrt(n)."""
    from scipy import stats

    s = summarize(differences)
    if s.n < 2:
        return math.nan, math.nan
    half = stats.t.ppf((1 + level) / 2, s.n - 1) * s.sd / math.sqrt(s.n)
    return s.mean - half, s.mean + half


def paired_difference(runs: list[StudyRun], variant: Variant, metric: str,
                      level: float = LEVEL) -> PairedDifference | None:
    """`variant` minus its baseline (CLIP) on `metric`, over the seeds both have; None without a common seed."""
    mine = {r.seed: r.metrics[metric] for r in runs if r.variant == variant and metric in r.metrics}
    base = {r.seed: r.metrics[metric] for r in runs if r.variant == variant.baseline and metric in r.metrics}
    seeds = tuple(sorted(set(mine) & set(base)))
    if not seeds:
        return None
    differences = [mine[s] - base[s] for s in seeds]
    s = summarize(differences)
    low, high = t_interval(differences, level)
    return PairedDifference(seeds, tuple(differences), s.mean, s.sd, low, high)


def main_metrics(runs: list[StudyRun]) -> list[str]:
    """The metrics the study compares, in report order: the suite average, each task's main metric, the test set's
    zero-shot top-1 and linear probe, and (held-out runs) the unseen/seen top-1."""
    present = {k for r in runs for k in r.metrics}
    tasks = sorted(k for k in present if is_task_main_metric(k))
    wanted = [EVAL_AVERAGE, *tasks, "zero_shot_top1", LINEAR_PROBE, *HELD_OUT_CLASSES]
    return [k for k in wanted if k in present]


@dataclass
class StudyResult:
    """Everything the study report shows, JSON-ready through `as_dict`."""

    variants: list[Variant]
    runs: list[StudyRun]
    metrics: list[str]
    summaries: dict[Variant, dict[str, Summary]] = field(default_factory=dict)
    differences: dict[Variant, dict[str, PairedDifference]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "level": LEVEL, "metrics": self.metrics,
            "runs": [{"name": r.name, "variant": r.variant.label, "seed": r.seed, "samples_seen": r.samples_seen,
                      "metrics": {k: r.metrics[k] for k in (*self.metrics, *GEOMETRY) if k in r.metrics}}
                     for r in self.runs],
            "variants": [{"variant": v.label, "loss": v.loss, "reg_weight": v.reg_weight, "reg_form": v.reg_form,
                          "held_out": list(v.held_out),
                          "summary": {k: _json(s) for k, s in self.summaries[v].items()},
                          "minus_clip": {k: _json(d) for k, d in self.differences.get(v, {}).items()}}
                         for v in self.variants],
        }


def _json(record: Summary | PairedDifference) -> dict:
    """`record`'s fields, NaN (a single seed's sd and interval) as None: strict JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in vars(record).items()}


def analyse(runs: list[StudyRun], level: float = LEVEL) -> StudyResult:
    """Per variant, the summary of every compared metric and of the geometry, and (for every variant but CLIP) the
    paired difference against CLIP with the same held-out classes."""
    variants = sorted({r.variant for r in runs})
    result = StudyResult(variants, sorted(runs, key=lambda r: (r.variant, r.seed)), main_metrics(runs))
    for v in variants:
        mine = [r for r in runs if r.variant == v]
        result.summaries[v] = {k: summarize([r.metrics[k] for r in mine if k in r.metrics])
                               for k in (*result.metrics, *GEOMETRY) if any(k in r.metrics for r in mine)}
        if v != v.baseline:
            pairs = {k: paired_difference(runs, v, k, level) for k in (*result.metrics, *GEOMETRY)}
            result.differences[v] = {k: d for k, d in pairs.items() if d is not None}
    return result
