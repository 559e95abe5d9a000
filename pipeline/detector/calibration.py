"""The decision from stored calibration scores: thresholds, conformal p-values and flags, one group of
calibration images per category for a conditional detector (a pooled threshold over categories would
hold alpha only on average over them, not for each), a single group otherwise. A cross-conformal detector
(spec.scheme == "cross") stores rank scores and takes its threshold and p-values from scoring/cross_conformal.py."""

from __future__ import annotations

import math

import numpy as np

from pipeline.detector.spec import DetectorSpec
from pipeline.scoring import cross_conformal as X
from pipeline.scoring import threshold as T

THRESHOLD_METHODS = ("conformal", "manual")


def groups(spec: DetectorSpec, labels: np.ndarray | None, n: int) -> dict[int | None, np.ndarray]:
    """{category label (None for a single group): boolean selector over n images}."""
    if not spec.categories:
        return {None: np.ones(n, dtype=bool)}
    if labels is None:
        raise ValueError(f"a conditional detector needs each image's category (one of {spec.categories})")
    labels = np.asarray(labels)
    return {k: labels == k for k in range(len(spec.categories))}


def calibration_scores(spec: DetectorSpec, score: str | None = None, category: int | None = None) -> np.ndarray:
    name = score or spec.score
    if name not in spec.calibration_scores:
        raise ValueError(f"score '{name}' has no calibration scores in this detector (stored: "
                         f"{sorted(spec.calibration_scores)})")
    values = np.asarray(spec.calibration_scores[name], dtype=np.float64)
    if category is None:
        return values
    return values[np.asarray(spec.calibration_labels) == category]


def thresholds(spec: DetectorSpec) -> dict[int | None, float]:
    """The image threshold of each group (flag when score > threshold); +inf where nothing can be flagged."""
    if spec.threshold_method == "manual":
        if spec.manual_threshold is None:
            raise ValueError("score.threshold_method=manual needs score.manual_threshold")
        return {k: float(spec.manual_threshold) for k in _group_keys(spec)}
    if spec.threshold_method != "conformal":
        raise ValueError(f"score.threshold_method must be one of {THRESHOLD_METHODS}, got {spec.threshold_method!r}")
    if spec.scheme == "cross":
        return {None: X.threshold(len(calibration_scores(spec)), spec.alpha)}
    return {k: T.conformal_threshold(calibration_scores(spec, category=k), spec.alpha) for k in _group_keys(spec)}


def _group_keys(spec: DetectorSpec) -> list[int | None]:
    return list(range(len(spec.categories))) if spec.categories else [None]


def guarantees(spec: DetectorSpec) -> dict[int | None, dict]:
    """What each group's threshold promises (scoring/threshold.guarantee), with its threshold."""
    limits = thresholds(spec)
    if spec.scheme == "cross":
        return {None: {**X.guarantee(len(calibration_scores(spec)), len(spec.members), spec.alpha),
                       "threshold": limits[None]}}
    return {k: {**T.guarantee(len(calibration_scores(spec, category=k)), spec.alpha), "threshold": limits[k],
                **({"category": spec.categories[k]} if k is not None else {})} for k in limits}


def can_flag(spec: DetectorSpec) -> bool:
    """False when some group's threshold is infinite: there, no image can ever be flagged."""
    return all(math.isfinite(t) for t in thresholds(spec).values())


def p_values(spec: DetectorSpec, scores: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Conformal p-values (N,) of the decision score against each image's own group's calibration scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if spec.scheme == "cross":
        return X.p_values(scores, len(calibration_scores(spec)))
    result = np.ones(len(scores))
    for k, selector in groups(spec, labels, len(scores)).items():
        result[selector] = T.conformal_p_values(calibration_scores(spec, category=k), scores[selector])
    return result


def image_thresholds(spec: DetectorSpec, labels: np.ndarray | None, n: int) -> np.ndarray:
    """Each image's threshold (N,): its group's."""
    limits, result = thresholds(spec), np.zeros(n)
    for k, selector in groups(spec, labels, n).items():
        result[selector] = limits[k]
    return result


def decide(spec: DetectorSpec, scores: np.ndarray, labels: np.ndarray | None = None,
           fdr_q: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(is_anomaly (N,) int, BH q-values or None). Per image: score > its group's threshold (p <= alpha);
    with fdr_q: Benjamini-Hochberg over the batch's p-values instead."""
    scores = np.asarray(scores, dtype=np.float64)
    if fdr_q is None:
        return (scores > image_thresholds(spec, labels, len(scores))).astype(int), None
    flags, q_values = T.benjamini_hochberg(p_values(spec, scores, labels), fdr_q)
    return flags.astype(int), q_values
