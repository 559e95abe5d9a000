"""AUPRO: area under the per-region-overlap curve up to a false-positive-rate limit (Bergmann et al.,
MVTec AD, 2021), normalized by the limit so that a perfect map scores 1.

For a threshold t, each connected ground-truth region r has overlap |{map > t} ∩ r| / |r|; PRO(t) is
the mean over all regions of all images, FPR(t) the share of normal pixels above t. Hand-written
because scikit-learn has no per-region metric, and torchmetrics' is absent; anomalib's needs its
whole framework.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def pro_curve(masks: list[np.ndarray], maps: list[np.ndarray], num_thresholds: int = 200
              ) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) arrays over `num_thresholds` thresholds from the largest map value down to the smallest."""
    values = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    thresholds = np.linspace(values.max(), values.min(), num_thresholds)
    normal_pixels = sum(int((~m).sum()) for m in masks)
    false_positives = np.zeros(num_thresholds)
    overlaps: list[np.ndarray] = []
    for mask, anomaly_map in zip(masks, maps):
        a = anomaly_map.astype(np.float64)
        # Normal pixels above each threshold: count via a sorted array, one searchsorted for all t.
        normal_sorted = np.sort(a[~mask])
        false_positives += normal_sorted.size - np.searchsorted(normal_sorted, thresholds, side="right")
        labelled, n_regions = ndimage.label(mask)
        for region in range(1, n_regions + 1):
            region_sorted = np.sort(a[labelled == region])
            overlaps.append((region_sorted.size - np.searchsorted(region_sorted, thresholds, side="right"))
                            / region_sorted.size)
    if not overlaps:
        raise ValueError("no defect regions in the masks: AUPRO needs at least one")
    fpr = false_positives / max(normal_pixels, 1)
    return fpr, np.mean(overlaps, axis=0)


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float = 0.3, num_thresholds: int = 200
          ) -> float | None:
    """Normalized area under PRO(FPR) for FPR in [0, fpr_limit]; None when there is no defect region."""
    if not any(m.any() for m in masks):
        return None
    fpr, pro = pro_curve(masks, maps, num_thresholds)
    # Close the curve exactly at the limit by linear interpolation, then integrate (trapezoids).
    pro_at_limit = np.interp(fpr_limit, fpr, pro)
    keep = fpr <= fpr_limit
    x = np.concatenate([[0.0], fpr[keep], [fpr_limit]])
    y = np.concatenate([[pro[keep][0] if keep.any() else 0.0], pro[keep], [pro_at_limit]])
    return float(np.trapezoid(y, x) / fpr_limit)
