"""The promotion decision: the candidate against the champion, both measured on the same evaluation suite now."""

from __future__ import annotations

from dataclasses import dataclass

from clipcore.evaluate.metric_names import GATE, is_task_main_metric


@dataclass(frozen=True)
class Decision:
    """Whether the candidate takes the alias, why, and both sets of numbers (champion None when there was none)."""

    promoted: bool
    reason: str
    candidate_version: str
    candidate: dict[str, float]
    champion_version: str | None
    champion: dict[str, float] | None


def gate_view(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a decision records: the GATE keys and every task's main metric (the report's per-task rows)."""
    return {k: v for k, v in metrics.items() if k in GATE or is_task_main_metric(k)}


def decide(candidate_version: str, candidate: dict[str, float], champion_version: str | None,
           champion: dict[str, float] | None, alias: str = "champion", champion_error: str | None = None,
           min_improvement: float = 0.0, allowed: bool = True) -> Decision:
    """Promote when there is no champion (or it is the candidate itself) or when the candidate's first GATE metric
    (the evaluation suite's average) beats the champion's, measured now on the same suite, by more than
    `min_improvement` (registry.min_improvement: a gain inside run-to-run noise leaves the champion in place).

    `champion_error` says why the champion could not be measured (its artifacts are gone): the loadable candidate is
    promoted, so that the alias points at a model that can be served again, and the reason says so. With `allowed`
    False (registry.promote: false, e.g. the runs of a study) the candidate is never promoted, whatever its numbers.
    """
    key = GATE[0]
    candidate = gate_view(candidate)
    if not allowed:
        stays = f"v{champion_version} stays @{alias}" if champion_version else f"@{alias} stays unset"
        return Decision(False, f"v{candidate_version} {key} {candidate[key]:.4f}: registry.promote is false, so it is "
                        f"not a candidate for @{alias}; {stays}", candidate_version, candidate, champion_version, None)
    if champion_error is not None and champion_version not in (None, candidate_version):
        return Decision(True, f"v{candidate_version} {key} {candidate[key]:.4f}: {champion_error}, so the loadable "
                        f"candidate is now @{alias}", candidate_version, candidate, champion_version, None)
    if champion_version is None or champion_version == candidate_version or champion is None:
        return Decision(True, f"v{candidate_version} {key} {candidate[key]:.4f}: no champion before, now @{alias}",
                        candidate_version, candidate, None, None)
    gain = round(candidate[key] - champion[key], 9)  # 0.86 - 0.85 is 0.010000000000000009 in floats
    promoted = gain > min_improvement
    verb = "beats" if promoted else ("does not beat" if gain <= 0 else "is not clearly better than")
    margin = f" (gain {gain:+.4f}, needed more than {min_improvement:.4f})" if min_improvement > 0 else ""
    reason = (f"v{candidate_version} {key} {candidate[key]:.4f} {verb} champion v{champion_version}'s "
              f"{champion[key]:.4f} on the same evaluation suite{margin}"
              + (f": now @{alias}" if promoted else f": v{champion_version} stays @{alias}"))
    return Decision(promoted, reason, candidate_version, candidate, champion_version, champion)
