"""Thresholds from held-out normal scores: the conformal quantile and conformal p-values."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest, false_discovery_control


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)): the rank (1-based) of the calibration score used as threshold."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return math.ceil((n + 1) * (1.0 - alpha) - 1e-9)


def conformal_threshold(calibration_scores: np.ndarray, alpha: float) -> float:
    """The k-th smallest calibration score, k = ceil((n+1)(1-alpha)).

    Flagging `score > threshold` then has false-alarm rate <= alpha on new normal images exchangeable
    with the calibration set. With too few calibration scores (k > n) no finite threshold gives that
    guarantee: the threshold is +inf (nothing can be flagged). Callers say so loudly (`guarantee`).
    """
    scores = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
    n = scores.size
    if n == 0:
        raise ValueError("no calibration scores: the normal validation split is empty")
    k = conformal_rank(n, alpha)
    if k > n:
        return math.inf
    return float(scores[k - 1])


def pixel_threshold(normal_maps: np.ndarray | list[np.ndarray], quantile: float) -> float:
    """The `quantile` of every pixel value of held-out normal anomaly maps: a pixel above it is part of the
    outlined defect region (about (1 - quantile) of normal pixels exceed it)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"score.pixel_quantile must be in (0, 1), got {quantile}")
    values = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in normal_maps])
    if values.size == 0:
        raise ValueError("no normal anomaly maps to compute the pixel threshold from")
    return float(np.quantile(values, quantile))


def conformal_p_values(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """p = (1 + #{calibration >= s}) / (n + 1) for every score s; small p = unusual for a normal image."""
    calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
    scores = np.asarray(scores, dtype=np.float64)
    at_least = calibration.size - np.searchsorted(calibration, scores, side="left")
    return (1.0 + at_least) / (calibration.size + 1.0)


def benjamini_hochberg(p_values: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """(flags, q-values) controlling the false-discovery rate of a batch at level q (Benjamini-Hochberg):
    among the flagged images the expected share of normal ones is at most q."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"the false-discovery rate q must be in (0, 1), got {q}")
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    q_values = false_discovery_control(p, method="bh")
    return q_values <= q, q_values


def guarantee(n_calibration: int, alpha: float) -> dict:
    """What the split-conformal threshold promises with n calibration images at alpha, for records and runs.

    For a new normal image exchangeable with the calibration images, P(flagged) <= alpha (over the draw of
    the calibration set too), and P(flagged) >= alpha - 1/(n+1) when scores have no ties. Infinite when
    n < 1/alpha - 1: then nothing can be flagged at that alpha."""
    k = conformal_rank(n_calibration, alpha)
    able = k <= n_calibration
    return {"method": "split conformal: the ceil((n+1)(1-alpha))-th smallest of n held-out normal scores",
            "promise": (f"at most alpha = {alpha:g} of new normal images flagged" if able
                        else f"nothing can be flagged at alpha = {alpha:g}"),
            "alpha": alpha, "n_calibration": n_calibration, "can_flag": able,
            "false_alarm_bound": alpha if able else 0.0,
            "false_alarm_expected": (n_calibration + 1 - k) / (n_calibration + 1) if able else 0.0,
            "smallest_alpha": 1.0 / (n_calibration + 1)}


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Clopper-Pearson interval of a rate observed as k of n (None without observations)."""
    if n <= 0:
        return None
    interval = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (flag when score > threshold) with the best F1 on labelled validation data.

    Needs both normal and anomalous images; unlike anomalib's adaptive threshold it refuses, rather
    than silently falling back, when validation holds only good images."""
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels)
    if np.unique(labels).size < 2:
        raise ValueError("an F1-optimal threshold needs labelled anomalies and normal images in validation")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = thresholds[int(np.argmax(f1))]  # sklearn flags score >= t; we flag score > threshold
    below = np.asarray(scores)[np.asarray(scores) < best]
    return float(below.max()) if below.size else float(np.nextafter(best, -np.inf))

