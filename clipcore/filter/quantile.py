"""The CLIP-score cut from a streaming quantile: exact (equal to `numpy.quantile`), with memory independent of the
number of scores.

While the shards are scored, a fixed-bin histogram over [-1, 1] (cosines; anything outside goes to the edge bins)
counts the scores: `ScoreHistogram`, 65,536 bins of width 2 / 65,536 ~ 3.1e-5, so the bin holding a rank already
bounds that order statistic to within 3.1e-5 (`approximate_quantile`). `exact_quantile` then reads the scores again (the
per-shard score columns, in batches) and keeps only those in that bin; a bin holding more than `max_held` scores
is split by another histogram over its own range first. Memory: the bins plus at most `max_held` scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

BINS = 65_536
MAX_HELD = 1 << 20  # scores held at once when the bin of a rank is read back (4 MiB of float32)
Batches = Callable[[], Iterable[np.ndarray]]
"""Gives the scores again, batch after batch, each time it is called (e.g. shard after shard from disk)."""


class ScoreHistogram:
    """Counts of scores in `bins` equal bins over [lo, hi]; scores outside fall in the first or last bin."""

    def __init__(self, lo: float = -1.0, hi: float = 1.0, bins: int = BINS):
        self.lo, self.hi, self.bins = float(lo), float(hi), bins
        self.counts = np.zeros(bins, dtype=np.int64)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def index(self, scores: np.ndarray) -> np.ndarray:
        """(N,) bin of each score (float64 arithmetic, so the same score always lands in the same bin)."""
        width = (self.hi - self.lo) / self.bins
        return np.clip(np.floor((np.asarray(scores, np.float64) - self.lo) / width), 0, self.bins - 1).astype(np.int64)

    def add(self, scores: np.ndarray) -> None:
        scores = np.asarray(scores)
        if not np.isfinite(scores).all():
            raise ValueError(f"{int((~np.isfinite(scores)).sum())} CLIP scores are not finite (NaN or inf): an "
                             "embedding with zero norm?")
        self.counts += np.bincount(self.index(scores), minlength=self.bins)

    def bin_of_rank(self, rank: int) -> tuple[int, int]:
        """(bin holding the `rank`-th smallest score (0-based), scores in the bins before it)."""
        cumulative = np.cumsum(self.counts)
        found = int(np.searchsorted(cumulative, rank, side="right"))
        return found, int(cumulative[found - 1]) if found else 0

    def approximate_quantile(self, q: float) -> float:
        """The lower edge of the bin holding the order statistic of rank floor(q (n - 1)) (numpy's method `lower`):
        at most one bin width below it, for scores inside [lo, hi]."""
        found, _ = self.bin_of_rank(int(np.floor(q * (self.total - 1))))
        return self.lo + found * (self.hi - self.lo) / self.bins


def exact_quantile(histogram: ScoreHistogram, q: float, batches: Batches, max_held: int = MAX_HELD) -> float:
    """`numpy.quantile(all_scores, q)` (linear interpolation) of the scores `histogram` counted, reading them back
    with `batches` and holding at most `max_held` of them (plus the bins) at once."""
    n = histogram.total
    if n == 0:
        raise ValueError("no scores to take a quantile of")
    position = q * (n - 1)  # numpy's virtual index
    below = int(np.floor(position))
    pair = np.array([_kth(histogram, below, batches, max_held), _kth(histogram, min(below + 1, n - 1), batches,
                                                                      max_held)], dtype=np.float32)
    return float(np.quantile(pair, position - below))  # numpy's own interpolation between the two order statistics


def _kth(histogram: ScoreHistogram, rank: int, batches: Batches, max_held: int) -> float:
    """The `rank`-th smallest score (0-based), narrowing to one bin of ever finer histograms until it holds few."""
    levels: list[tuple[ScoreHistogram, int]] = []  # the chain of (histogram, chosen bin) a score must fall in
    current = histogram
    while True:
        found, before = current.bin_of_rank(rank)
        levels.append((current, found))
        rank -= before
        if current.counts[found] <= max_held:
            held = np.sort(np.concatenate([_in_bins(b, levels) for b in batches()] or [np.array([], np.float32)]))
            return float(held[rank])
        lo, hi = _range_in_bins(batches, levels)
        if lo == hi:  # every score in this bin is the same value
            return lo
        current = ScoreHistogram(lo, hi, current.bins)
        for batch in batches():
            current.add(_in_bins(batch, levels))


def _in_bins(batch: np.ndarray, levels: list[tuple[ScoreHistogram, int]]) -> np.ndarray:
    keep = np.ones(len(batch), dtype=bool)
    for hist, found in levels:
        keep &= hist.index(batch) == found
    return np.asarray(batch)[keep]


def _range_in_bins(batches: Batches, levels: list[tuple[ScoreHistogram, int]]) -> tuple[float, float]:
    lo, hi = np.inf, -np.inf
    for batch in batches():
        inside = _in_bins(batch, levels)
        if len(inside):
            lo, hi = min(lo, float(inside.min())), max(hi, float(inside.max()))
    return lo, hi
