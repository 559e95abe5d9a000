"""Does a conformal threshold keep its promise on labelled normal images? A test of the false-alarm count
that accounts for the calibration set's own randomness.

With n calibration scores and k = ceil((n + 1)(1 - alpha)), the threshold is the k-th smallest of them. For
normal images exchangeable with the calibration images (continuous scores), the probability that a new one
lies above that threshold is itself random, Beta(n + 1 - k, k) over the draw of the calibration set (its mean
(n + 1 - k) / (n + 1) is at most alpha). Given the threshold, the m normal test images are flagged
independently with that probability, so the count of false alarms among them follows BetaBinomial(m, n + 1 - k,
k) (`scipy.stats.betabinom`), which is wider than a binomial at alpha: with 99 calibration images a test set of
400 normal images may well see 2 % false alarms at alpha = 1 % by the calibration set's chance alone.

Pure functions: counts in, a JSON-ready verdict out. Only too many false alarms break the promise (one-sided).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import betabinom

from pipeline.scoring.threshold import conformal_rank


def false_alarm_law(n_normal: int, n_calibration: int, alpha: float):
    """The frozen BetaBinomial(m, n + 1 - k, k) law of the false-alarm count among m normal images; None when
    the threshold cannot fire (k > n: no finite threshold, nothing is ever flagged)."""
    k = conformal_rank(n_calibration, alpha)
    if k > n_calibration:
        return None
    return betabinom(n_normal, n_calibration + 1 - k, k)


def false_alarm_test(n_false_alarms: int, n_normal: int, n_calibration: int, alpha: float,
                     level: float = 0.01) -> dict:
    """Are `n_false_alarms` of `n_normal` normal images flagged more than a conformal threshold at `alpha`
    with `n_calibration` calibration images allows, at test level `level`?

    p_value = P(X >= n_false_alarms) under the false-alarm law; broken when p_value < level. max_allowed is the
    largest count that is not broken (what the promise allows on this many normal images at this level).
    Returns tested, broken, n_false_alarms, n_normal, rate, alpha, n_calibration, expected_rate (the law's mean
    rate), max_allowed, max_allowed_rate, p_value, level; tested is False (and broken False) without normal
    images or when the threshold cannot fire.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"the promise test's level must be in (0, 1), got {level}")
    if not 0 <= n_false_alarms <= n_normal:
        raise ValueError(f"false alarms must be between 0 and the {n_normal} normal images, got {n_false_alarms}")
    result = {"tested": False, "broken": False, "n_false_alarms": int(n_false_alarms), "n_normal": int(n_normal),
              "rate": n_false_alarms / n_normal if n_normal else None, "alpha": float(alpha),
              "n_calibration": int(n_calibration), "level": float(level)}
    law = false_alarm_law(n_normal, n_calibration, alpha) if n_normal else None
    if law is None:
        return result
    counts = np.arange(n_normal + 1)
    tails = law.sf(counts - 1)  # P(X >= c) for c = 0..m, non-increasing
    max_allowed = int(counts[tails >= level].max())
    p_value = float(tails[n_false_alarms])
    return {**result, "tested": True, "broken": bool(p_value < level), "expected_rate": float(law.mean() / n_normal),
            "max_allowed": max_allowed, "max_allowed_rate": max_allowed / n_normal, "p_value": p_value}


def promise_test(groups: dict[str, tuple[int, int, int]], alpha: float, level: float = 0.01) -> dict:
    """The test over the calibration groups of a detector ({name: (false alarms, normal images, calibration
    images)}; one group, '', for a single-category detector): each group at level / (number of groups tested)
    (Bonferroni), broken when any group is. Returns tested, broken, level, reason (one sentence, '' when kept)
    and per group the false_alarm_test result."""
    tested = {name: counts for name, counts in groups.items() if counts[1] > 0}
    per_group_level = level / max(1, len(tested))
    results = {name: false_alarm_test(*counts, alpha=alpha, level=per_group_level) for name, counts in groups.items()}
    broken = [name for name, r in results.items() if r["broken"]]
    reason = "; ".join(_reason(name, results[name]) for name in broken)
    return {"tested": any(r["tested"] for r in results.values()), "broken": bool(broken), "level": float(level),
            "reason": reason, "groups": results}


def _reason(name: str, r: dict) -> str:
    where = f"{name}: " if name else ""
    return (f"{where}{r['n_false_alarms']} of {r['n_normal']} good images flagged ({r['rate']:.1%}) where alpha = "
            f"{r['alpha']:g} with {r['n_calibration']} calibration images allows at most {r['max_allowed']} "
            f"({r['max_allowed_rate']:.1%}; p = {r['p_value']:.2g} < {r['level']:.2g})")
