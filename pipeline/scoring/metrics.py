"""Evaluation metrics on labelled test data (scikit-learn underneath)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of image scores (1 = anomaly); None when only one class is present."""
    labels = np.asarray(labels)
    if np.unique(labels).size < 2:
        return None
    return float(roc_auc_score(labels, scores))


def pixel_auroc(masks: list[np.ndarray], maps: list[np.ndarray]) -> float | None:
    """ROC AUC over every pixel of every image (masks: bool (H, W), maps: float (H, W), same sizes)."""
    if not masks:
        return None
    truth = np.concatenate([m.ravel() for m in masks])
    if truth.all() or not truth.any():
        return None
    return separation_auroc(np.concatenate([a.ravel().astype(np.float32) for a in maps]), truth)


def separation_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic: the chance that a positive scores above a negative, ties counted
    half; the same number as sklearn's roc_auc_score. Only the negatives are sorted and the positives looked up,
    which keeps millions of pixels (nearly all negative) at one sort instead of sklearn's full ROC curve (25x
    faster on a test split's maps; PERFORMANCE.md)."""
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are not finite (NaN or inf): no AUROC")
    negatives = np.sort(scores[~positive])
    hits = scores[positive]
    below = np.searchsorted(negatives, hits, side="left").astype(np.float64)
    tied = np.searchsorted(negatives, hits, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (hits.size * negatives.size))


def false_alarm_rate(labels: np.ndarray, flagged: np.ndarray) -> float | None:
    """Share of normal images (label 0) that were flagged; None without normal images."""
    labels, flagged = np.asarray(labels), np.asarray(flagged, dtype=bool)
    normal = labels == 0
    return float(flagged[normal].mean()) if normal.any() else None


def detection_rate(labels: np.ndarray, flagged: np.ndarray) -> float | None:
    """Share of anomalous images (label 1) that were flagged (recall); None without anomalies."""
    labels, flagged = np.asarray(labels), np.asarray(flagged, dtype=bool)
    anomalous = labels == 1
    return float(flagged[anomalous].mean()) if anomalous.any() else None
