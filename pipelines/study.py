"""The CLIP+Reg study's report from its DVC experiments: `dvc exp show --json` (which `make study` saves to
outputs/study/experiments.json) -> the runs of the study (experiments named `<study>-...`) -> outputs/study/index.html
and study.json (clipcore/report/study.py computes, study_render.py draws)."""

from __future__ import annotations

import json
from pathlib import Path

from clipcore.report.study import StudyRun, Variant, analyse
from clipcore.report.study_render import render_study

METRICS_FILE = "outputs/metrics.json"


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _experiments(rows: list[dict]):
    """(name, data, state, error) of every experiment under the baseline rows of `dvc exp show --json` (DVC 3's
    layout: baseline rows, each with `experiments`, each with `revs` of which the first is the experiment's result, and
    an `executor` while it is queued, running or failed; None once it is done)."""
    for baseline in rows:
        for exp in baseline.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state") or "done"
            for rev in (exp.get("revs") or [])[:1]:
                name = rev.get("name") or exp.get("name") or rev.get("rev")
                yield name, rev.get("data") or {}, state, rev.get("error")


def study_runs(rows: list[dict], study: str) -> tuple[list[StudyRun], list[str]]:
    """The finished runs of the experiments named `<study>-...`, and a note for each such experiment that has no
    metrics (queued, running or failed)."""
    runs, problems = [], []
    for name, data, state, error in _experiments(rows):
        if not str(name).startswith(f"{study}-"):
            continue
        metrics = ((data.get("metrics") or {}).get(METRICS_FILE) or {}).get("data")
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
        # a queued or running experiment shows its workspace's files: the baseline's or a half-done run's metrics
        if state not in ("done", "success") or error or not metrics or not params:
            problems.append(f"{name}: {state if state != 'done' else 'no metrics'}"
                            + (f" ({error.get('msg', error) if isinstance(error, dict) else error})" if error else ""))
            continue
        flat = _flatten(params)
        runs.append(StudyRun(str(name), Variant.of(flat), int(flat["train.seed"]),
                             {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                             flat.get("train.samples_seen")))
    return runs, problems


def write_study_report(experiments: str | Path, study: str, out: str | Path) -> Path:
    """Read `experiments` (`dvc exp show --json`), write out/index.html and out/study.json; returns the HTML path.

    Raises:
        ValueError: no finished run of the study (names the problems of those that did not finish).
    """
    rows = json.loads(Path(experiments).read_text())
    runs, problems = study_runs(rows, study)
    if not runs:
        raise ValueError(f"no finished experiment named {study}-* in {experiments}"
                         + (f" ({'; '.join(problems)})" if problems else "") + ": run `make study` first")
    result = analyse(runs)
    budgets = sorted({str(r.samples_seen) for r in runs})
    notes = [f"{len(runs)} finished runs of study '{study}' ({len(result.variants)} variants, seeds "
             f"{', '.join(map(str, sorted({r.seed for r in runs})))}), every one with train.samples_seen = "
             f"{' / '.join(budgets)}.", *([f"Not in the tables: {'; '.join(sorted(problems))}."] if problems else [])]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps({"study": study, "notes": notes, "problems": problems,
                                                **result.as_dict()}, indent=2, allow_nan=False))
    page = out / "index.html"
    page.write_text(render_study(result, notes))
    return page
