"""Thresholds from held-out normal scores: the conformal quantile and conformal p-values."""

from __future__ import annotations

import math
import warnings

import numpy as np


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)): the rank (1-based) of the calibration score used as threshold."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return math.ceil((n + 1) * (1.0 - alpha) - 1e-9)


def conformal_threshold(calibration_scores: np.ndarray, alpha: float) -> float:
    """The k-th smallest calibration score, k = ceil((n+1)(1-alpha)).

    Flagging `score > threshold` then has false-alarm rate <= alpha on new normal images exchangeable
    with the calibration set. With too few calibration scores (k > n) no finite threshold gives that
    guarantee: we warn and return +inf (nothing is flagged) rather than silently promise it.
    """
    scores = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
    n = scores.size
    if n == 0:
        raise ValueError("no calibration scores: the normal validation split is empty")
    k = conformal_rank(n, alpha)
    if k > n:
        warnings.warn(f"{n} calibration images are too few for alpha={alpha}: need at least "
                      f"{math.ceil(1 / alpha - 1)}; the threshold is +inf (nothing is flagged)", stacklevel=2)
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


def benjamini_hochberg(p_values: np.ndarray, q: float) -> np.ndarray:
    """Boolean flags controlling the false-discovery rate of a batch at level q (Benjamini-Hochberg)."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    return false_discovery_control(p, method="bh") <= q


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (flag when score > threshold) with the best F1 on labelled validation data.

    Needs both normal and anomalous images; unlike anomalib's adaptive threshold it refuses, rather
    than silently falling back, when validation holds only good images."""
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels)
    if labels.min(initial=0) == labels.max(initial=0):
        raise ValueError("an F1-optimal threshold needs labelled anomalies and normal images in validation")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = thresholds[int(np.argmax(f1))]  # sklearn flags score >= t; we flag score > threshold
    below = np.asarray(scores)[np.asarray(scores) < best]
    return float(below.max()) if below.size else float(np.nextafter(best, -np.inf))

