"""Pure decisions for one batch: which images to flag, and whether the batch's scores drifted.

Two ways to bound false alarms over a batch of m images, both from conformal p-values (the share of
held-out normal calibration scores at least as high as an image's score):
  alpha  flag an image when its score exceeds the conformal threshold for `alpha`: each normal image
         is flagged with probability <= alpha, so a batch of m normal images yields about alpha * m alarms.
  bh     Benjamini-Hochberg over the batch's p-values at level q: among the flagged images the expected
         share of normal ones is <= q. It adapts to the batch: a batch of normal images flags almost
         nothing, a batch with many defects flags more freely.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import false_discovery_control, ks_2samp

CONTROLS = ("alpha", "bh")


def flag_batch(scores: np.ndarray, p_values: np.ndarray, threshold: float, control: str,
               fdr_q: float) -> tuple[np.ndarray, np.ndarray]:
    """scores, p_values (m,) -> (is_anomaly (m,) int, q_values (m,): BH-adjusted p-values, NaN for alpha)."""
    scores, p_values = np.asarray(scores, dtype=float), np.asarray(p_values, dtype=float)
    if control == "alpha":
        return (scores > threshold).astype(int), np.full(len(scores), np.nan)
    if control == "bh":
        if not 0.0 < fdr_q < 1.0:
            raise ValueError(f"inspect.fdr_q must be in (0, 1), got {fdr_q}")
        if len(p_values) == 0:
            return np.zeros(0, dtype=int), np.zeros(0)
        q_values = false_discovery_control(p_values, method="bh")
        return (q_values <= fdr_q).astype(int), q_values
    raise ValueError(f"inspect.control must be one of {CONTROLS}, got {control!r}")


def score_drift(batch_scores: np.ndarray, calibration_scores: np.ndarray, drift_alpha: float,
                min_images: int) -> dict:
    """Two-sample Kolmogorov-Smirnov test of the batch's scores against the calibration scores.

    A small p-value means the line's images no longer score like the held-out normal images: the
    camera, lighting or parts changed, or many defects arrived. Batches below `min_images` are not tested.
    """
    n = len(batch_scores)
    if n < max(1, min_images) or len(calibration_scores) == 0:
        return {"tested": False, "n": n, "drifted": False}
    result = ks_2samp(np.asarray(batch_scores, dtype=float), np.asarray(calibration_scores, dtype=float))
    p_value = float(result.pvalue)
    return {"tested": True, "n": n, "ks_statistic": float(result.statistic), "p_value": p_value,
            "drift_alpha": drift_alpha, "drifted": p_value < drift_alpha}
