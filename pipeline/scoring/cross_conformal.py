"""Cross-conformal decisions for small normal sets: K detectors, every normal image calibrates the one that did not
train on it (Vovk 2015, "Cross-conformal predictors"; for anomaly detection Hennhoefer & Preisach 2024).

The n normal images are cut into K folds; member k never trains on fold k and scores it. A new image x gets, per
member, the count of fold k's calibration scores at least as high as its own, N_k(x), and the cross-conformal
p-value p(x) = (1 + sum_k N_k(x)) / (n + 1); it is flagged when p(x) <= alpha. Barber, Candes, Ramdas & Tibshirani
(2021, "Predictive inference with the jackknife+", CV+) bound its false-alarm rate by 2 alpha in the worst case; in
the bench it stays below alpha (BENCHMARKS.md, "Small normal sets"): the members disagree on good parts, and a part
must stand out under all of them.

One score per image, so that `score > threshold` stays the rule everywhere: the *rank score*
r(x) = 1 - (sum_k N_k(x) - 0.999 mean_k f_k(x)) / n, where f_k in [0, 1) is how far member k's score has come
from the calibration score below it toward the one above (beyond the largest: 1 - exp(-excess / tail spacing)).
The fractions only order images with the same total count, so r is monotone in every member's score and
r > 1 - (floor(c*) + (1 - 0.999) / 2) / n, c* = alpha (n + 1) - 1, flags exactly the images with p(x) <= alpha.
"""

from __future__ import annotations

import math

import numpy as np


FRACTION_SCALE = 0.999  # keeps a total count's fractions below the next count (what makes the threshold exact)


class FoldTable:
    """One member's calibration scores: the step count #{calibration >= s} and the fraction within its step."""

    def __init__(self, calibration_scores: np.ndarray):
        scores = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
        if scores.size == 0:
            raise ValueError("a cross-conformal member has no calibration scores")
        if not np.isfinite(scores).all():
            raise ValueError("a cross-conformal member has non-finite calibration scores")
        self.n = scores.size
        self.values, first = np.unique(scores, return_index=True)
        self.counts = (self.n - first).astype(np.float64)  # #{calibration >= value}, at each distinct value
        top = max(1, self.n // 4)  # the tail's spacing: the mean gap among the top quarter of the scores
        gap = (scores[-1] - scores[-1 - top]) / top if self.n > top else 0.0
        spread = scores[-1] - scores[0]
        self.tail_gap = gap if gap > 0 else (spread / max(self.n - 1, 1) if spread > 0 else max(abs(scores[-1]), 1.0) * 1e-6)

    def step_counts(self, scores: np.ndarray) -> np.ndarray:
        """#{calibration >= s} for every s."""
        s = np.asarray(scores, dtype=np.float64)
        position = np.searchsorted(self.values, s, side="left")
        return np.where(position < len(self.values), self.counts[np.minimum(position, len(self.values) - 1)], 0.0)

    def fractions(self, scores: np.ndarray) -> np.ndarray:
        """Where s lies within its step, in [0, 1): 0 at or below the smallest calibration score, linear from the
        distinct calibration score below s to the one at or above it, 1 - exp(-(s - max) / tail_gap) beyond."""
        s = np.asarray(scores, dtype=np.float64)
        position = np.searchsorted(self.values, s, side="left")
        v = self.values
        below = v[np.clip(position - 1, 0, len(v) - 1)]
        above = v[np.clip(position, 0, len(v) - 1)]
        inside = np.divide(s - below, above - below, out=np.zeros_like(s), where=above > below)
        beyond = -np.expm1(-np.maximum(s - v[-1], 0.0) / self.tail_gap)
        result = np.where(position == 0, 0.0, np.where(position < len(v), inside, beyond))
        return np.clip(result, 0.0, 1.0)


def total_calibration(tables: list[FoldTable]) -> int:
    return int(sum(t.n for t in tables))


def rank_scores(member_scores: list[np.ndarray], tables: list[FoldTable]) -> np.ndarray:
    """r(x) for every image: member k's scores (N,) against its own fold (module docstring)."""
    if len(member_scores) != len(tables):
        raise ValueError(f"{len(member_scores)} members' scores for {len(tables)} calibration folds")
    counts = sum(t.step_counts(s) for t, s in zip(tables, member_scores))
    fractions = sum(t.fractions(s) for t, s in zip(tables, member_scores)) / len(tables)
    return 1.0 - (counts - FRACTION_SCALE * fractions) / total_calibration(tables)


def own_fold_rank_scores(tables: list[FoldTable], member_calibration: list[np.ndarray]) -> np.ndarray:
    """Every calibration image's rank within its own fold, on the rank score's scale (1 - share of its fold at
    least as high): what the histogram of calibration scores shows beside the threshold."""
    return np.concatenate([1.0 - t.step_counts(s) / t.n for t, s in zip(tables, member_calibration)])


def critical_count(n: int, alpha: float) -> float:
    """c* = alpha (n + 1) - 1: p(x) <= alpha exactly when sum_k N_k(x) <= c*."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha * (n + 1) - 1.0


def can_flag(n: int, alpha: float) -> bool:
    """Whether n normal images in all can flag anything at alpha: c* >= 0, i.e. n + 1 >= 1 / alpha."""
    return critical_count(n, alpha) >= -1e-9


def threshold(n: int, alpha: float) -> float:
    """Flag when r(x) > this: exactly when the total count is at most floor(c*); +inf when nothing can be flagged."""
    if not can_flag(n, alpha):
        return math.inf
    return 1.0 - (math.floor(critical_count(n, alpha) + 1e-9) + (1.0 - FRACTION_SCALE) / 2) / n


def total_counts(rank: np.ndarray, n: int) -> np.ndarray:
    """sum_k N_k(x) back from the rank score (the fractions stay below one count)."""
    value = n * (1.0 - np.asarray(rank, dtype=np.float64))
    return np.maximum(np.ceil(value - 1e-6), 0.0)


def p_values(rank: np.ndarray, n: int) -> np.ndarray:
    """The cross-conformal p-value (1 + sum_k N_k(x)) / (n + 1) of every rank score."""
    return np.minimum((1.0 + total_counts(rank, n)) / (n + 1.0), 1.0)


def guarantee(n: int, n_members: int, alpha: float) -> dict:
    """What the cross-conformal threshold promises, for records and runs (the keys of threshold.guarantee)."""
    able = can_flag(n, alpha)
    return {"method": f"cross-conformal over {n_members} detectors: every normal image calibrates the detector that did "
                      f"not train on it; flag when (1 + sum of counts at least as high) / (n + 1) <= alpha",
            "promise": (f"about alpha = {alpha:g} of new normal images flagged, at most {min(1.0, 2 * alpha):g} in the "
                        "worst case (the cross-conformal bound of Barber et al. 2021)" if able
                        else f"nothing can be flagged at alpha = {alpha:g}"),
            "alpha": alpha, "n_calibration": n, "n_members": n_members, "can_flag": able,
            "false_alarm_bound": min(1.0, 2 * alpha) if able else 0.0, "false_alarm_expected": alpha if able else 0.0,
            "smallest_alpha": 1.0 / (n + 1)}
