"""Drift of a batch of images away from the calibration images, told apart from a minority of defects.

Drift is a change of the imaging process that moves *every* image of a batch: the camera moved (scale),
the gain or the lighting changed (intensity), focus was lost (blur). A defect is local and hits a few
images. So this test does not compare anomaly scores (a batch with many defects moves those too); it
compares a few global statistics per image that such process changes move and a local defect barely
touches, and it compares only the *bulk* of the batch: per statistic, the batch's most extreme share
`trim` (and the same share of the reference) is left out before a two-sample test, so up to that share
of defective images cannot make a batch look drifted.

Pure functions over tensors and arrays: no file I/O, no logging, no knowledge of the detector. The caller
passes model-input images, (N, C, S, S) in [0, 1], the same tensors the detector scores.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import false_discovery_control, ks_2samp, mannwhitneyu

# Columns of image_statistics, in order. Every one but mean_intensity stays the same when all intensities
# are multiplied by a constant (ratios, a period, a share), so a gain or lighting change moves the mean
# alone and the reason stays specific.
FEATURES: tuple[str, ...] = ("mean_intensity", "contrast", "sharpness", "detail_frequency",
                             "dominant_period", "bright_area")

# How a move reads to a person: (label, word when the batch's value is higher, word when lower).
_WORDING = {
    "mean_intensity": ("mean intensity", "brighter", "darker"),
    "contrast": ("contrast", "higher-contrast", "lower-contrast"),
    "sharpness": ("sharpness", "sharper", "blurrier"),
    "detail_frequency": ("detail frequency", "finer-grained", "coarser-grained"),
    "dominant_period": ("dominant period", "with larger repeating structures", "with smaller repeating structures"),
    "bright_area": ("bright area", "with more bright area", "with less bright area"),
}
TESTS = ("mannwhitneyu", "ks")
_EPS = 1e-6  # keeps ratios finite on blank images; such images are outliers and get trimmed


def _luminance(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, S, S) in [0, 1] -> (N, S, S) float64, the channel mean."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"images must be (N, C, S, S), got shape {x.shape}")
    return x.astype(np.float64).mean(axis=1)


def radial_power(x: np.ndarray) -> np.ndarray:
    """(N, S, S) -> (N, S // 2 + 1): mean spectral power on rings of radius k cycles per image, k = 0..S/2.

    A Hann window first: the jump between opposite image borders would otherwise leak power into every
    frequency and hide the image's own structure. Written here because numpy and scipy have no ring
    average of a spectrum; it is one matrix product.
    """
    n, s, _ = x.shape
    window = np.outer(np.hanning(s), np.hanning(s))  # (S, S)
    power = np.abs(np.fft.rfft2((x - x.mean(axis=(1, 2), keepdims=True)) * window)) ** 2  # (N, S, S//2+1)
    radius = np.rint(np.hypot(np.fft.fftfreq(s)[:, None], np.fft.rfftfreq(s)[None, :]) * s).astype(int)
    rings = s // 2 + 1
    inside = (radius < rings).ravel()  # the corners beyond Nyquist have no full ring
    one_hot = np.zeros((inside.sum(), rings))  # (P, K): which ring each kept frequency belongs to
    one_hot[np.arange(inside.sum()), radius.ravel()[inside]] = 1.0
    return power.reshape(n, -1)[:, inside] @ one_hot / one_hot.sum(axis=0)  # (N, K)


def _dominant_period(x: np.ndarray, min_frequency: float) -> np.ndarray:
    """(N, S, S) -> (N,): period in pixels of the strongest ring at or above `min_frequency` cycles/pixel,
    refined between rings by a parabola through the log power, so that a zoom of a few % is seen."""
    s = x.shape[1]
    low = max(2, int(np.ceil(min_frequency * s)))  # below: lighting gradients and the part's outline
    log_power = np.log(radial_power(x)[:, low:] + 1e-20)  # (N, K')
    peak = np.argmax(log_power, axis=1)
    inner = np.clip(peak, 1, log_power.shape[1] - 2)
    rows = np.arange(len(x))
    left, mid, right = log_power[rows, inner - 1], log_power[rows, inner], log_power[rows, inner + 1]
    curvature = left - 2 * mid + right
    offset = np.where(curvature < 0, 0.5 * (left - right) / np.minimum(curvature, -1e-12), 0.0)
    # A peak on the band's edge is not refined: the parabola would extrapolate.
    offset = np.where(peak == inner, np.clip(offset, -0.5, 0.5), 0.0)
    return s / (low + peak + offset)


def _share_above(x: np.ndarray, level: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(N, S, S), (N,), (N,) -> (N,): share of pixels above `level`, pixels at it counting half. Grey levels
    are quantised, so many pixels can sit exactly on the level; counting them half keeps the share the same
    when a gain change perturbs them by a rounding error."""
    tolerance = (1e-6 * np.maximum(scale, _EPS))[:, None, None]
    above = x > level[:, None, None] + tolerance
    tied = np.abs(x - level[:, None, None]) <= tolerance
    return (above + 0.5 * tied).mean(axis=(1, 2))


def image_statistics(images: torch.Tensor | np.ndarray, min_frequency: float = 1 / 16) -> np.ndarray:
    """(N, C, S, S) model-input images in [0, 1] -> (N, F) statistics, columns in FEATURES order.

    Computed on the luminance at the model's input size, because that is what the detector sees.
    """
    x = _luminance(images)  # (N, S, S)
    n = len(x)
    q05, q25, q50, q75, q95 = np.quantile(x.reshape(n, -1), [0.05, 0.25, 0.5, 0.75, 0.95], axis=1)  # (N,) each
    std = x.std(axis=(1, 2))
    gx, gy = np.diff(x, axis=2)[:, :-1, :], np.diff(x, axis=1)[:, :, :-1]  # (N, S-1, S-1)
    gradient_rms = np.sqrt((gx ** 2 + gy ** 2).mean(axis=(1, 2)))
    laplacian = (4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1]
                 - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])  # (N, S-2, S-2)
    laplacian_rms = np.sqrt((laplacian ** 2).mean(axis=(1, 2)))
    columns = {
        # Gain and lighting: the only statistic that a uniform intensity change moves much.
        "mean_intensity": x.mean(axis=(1, 2)),
        # Interquartile range over the median: relative spread of grey levels; quartiles ignore a defect
        # covering a few % of the image. Falls when blur averages a fine texture, rises with glare.
        "contrast": (q75 - q25) / np.maximum(q50, _EPS),
        # Finest-scale (Laplacian) energy per unit of contrast: the first thing lost when focus goes.
        "sharpness": laplacian_rms / np.maximum(std, _EPS),
        # Laplacian over gradient energy: a mean frequency of the image's edges; a zoom stretches edges
        # (lower), blur too. Unlike sharpness it ignores how much contrast the edges carry.
        "detail_frequency": laplacian_rms / np.maximum(gradient_rms, _EPS),
        # Period of a repeating texture (weave, grain): scales with the camera distance, and blur, which
        # damps a spectral peak but does not move it, leaves it alone.
        "dominant_period": _dominant_period(x, min_frequency),
        # Share of pixels brighter than half-way between the dark (5 %) and bright (95 %) levels: the
        # size of a bright part on a dark background (or the reverse), which grows when the camera closes in.
        "bright_area": _share_above(x, (q05 + q95) / 2, q95 - q05),
    }
    return np.stack([columns[name] for name in FEATURES], axis=1)  # (N, F)


def _trimmed(values: np.ndarray, centre: np.ndarray, share: float) -> np.ndarray:
    """(n, F) -> (n - round(share * n), F): per column, the values farthest from `centre` (F,) left out.

    One centre, the reference's median, for both samples: trimming each sample around its own median
    would keep a tight cluster whose position still varies like a median, and the test, which takes it
    for an ordinary sample, would fire far more often than alpha (measured: about half of all normal
    batches at trim 0.2).
    """
    keep = len(values) - int(round(share * len(values)))
    order = np.argsort(np.abs(values - centre), axis=0, kind="stable")[:keep]  # (keep, F)
    return np.take_along_axis(values, order, axis=0)


def _robust_spread(values: np.ndarray) -> np.ndarray:
    """(n, F) -> (F,): 1.4826 x median absolute deviation (the standard deviation for Gaussian data), the
    standard deviation where that is 0 (a feature constant on most images)."""
    mad = 1.4826 * np.median(np.abs(values - np.median(values, axis=0)), axis=0)
    return np.where(mad > 0, mad, np.maximum(values.std(axis=0), _EPS))


def _reason(name: str, change_pct: float, shift: float) -> str:
    label, up, down = _WORDING.get(name, (name, "higher", "lower"))
    return f"images {up if shift > 0 else down} than calibration ({label} {change_pct:+.0f} %)"


def _check_drift_arguments(reference: np.ndarray, batch: np.ndarray, alpha: float, trim: float, test: str,
                           n_features: int) -> None:
    if reference.ndim != 2 or batch.ndim != 2 or not reference.shape[1] == batch.shape[1] == n_features:
        raise ValueError(f"reference (M, F) and batch (N, F) with F = {n_features} expected, "
                         f"got {reference.shape} and {batch.shape}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"drift alpha must be in (0, 1), got {alpha}")
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"drift trim must be in [0, 0.5), got {trim}")
    if test not in TESTS:
        raise ValueError(f"drift test must be one of {TESTS}, got {test!r}")


def drift_test(reference: np.ndarray, batch: np.ndarray, alpha: float, trim: float = 0.2,
               min_images: int = 20, min_shift: float = 0.5, test: str = "mannwhitneyu",
               names: tuple[str, ...] = FEATURES) -> dict:
    """Has the bulk of a batch moved away from the reference images? One test per feature.

    reference (M, F): image_statistics of held-out normal calibration images; batch (N, F): of the batch.
    Per feature, the `trim` share of batch images farthest from the reference median is left out (and the
    same share of the reference, so that both samples are cut alike), then a two-sample test (`test`:
    mannwhitneyu for a shift of the median, ks for any change of distribution). The p-values are
    Benjamini-Hochberg adjusted over features (`q_value`): when nothing moved, the chance that some
    feature gets q <= alpha is at most alpha (for independent or positively dependent features). A feature
    has moved when q <= alpha and its median moved by at least `min_shift` reference standard deviations,
    so a huge batch does not report a trivial change. No test below `min_images` images.

    Returns a JSON-ready dict: tested, drifted, n, reason ("; " joined, largest move first), moved
    (feature names, largest move first) and per feature: statistic (mannwhitneyu: share of
    (batch, reference) pairs where the batch image is higher; ks: the KS distance), p_value, q_value,
    reference_median, batch_median (of all images), change_pct (batch over reference median), shift_sd
    (the same difference in reference standard deviations: 1.4826 x MAD), moved.
    """
    reference, batch = np.asarray(reference, dtype=np.float64), np.asarray(batch, dtype=np.float64)
    _check_drift_arguments(reference, batch, alpha, trim, test, len(names))
    settings = {"alpha": alpha, "trim": trim, "min_images": min_images, "min_shift": min_shift, "test": test}
    n, m = len(batch), len(reference)
    if n < max(1, min_images) or m < 2:
        why = (f"batch of {n} images is below the minimum of {min_images}" if n < max(1, min_images)
               else f"only {m} reference images")
        return {"tested": False, "drifted": False, "n": n, "n_reference": m, "reason": f"not tested: {why}",
                "moved": [], "features": {}, **settings}

    if not (np.isfinite(reference).all() and np.isfinite(batch).all()):
        raise ValueError("reference and batch statistics must be finite")
    centre, spread = np.median(reference, axis=0), _robust_spread(reference)  # (F,) each
    ref_kept, new_kept = _trimmed(reference, centre, trim), _trimmed(batch, centre, trim)  # (m', F), (n', F)
    if test == "mannwhitneyu":
        result = mannwhitneyu(new_kept, ref_kept, alternative="two-sided", method="asymptotic", axis=0)
        statistics = result.statistic / (len(new_kept) * len(ref_kept))  # share of pairs where the batch is higher
    else:
        result = ks_2samp(new_kept, ref_kept, axis=0)
        statistics = result.statistic
    # The size of the move from the whole batch's median: trimming removes the most moved images of a
    # drifted batch and would understate it; a median is robust by itself (defects in 20 % of the batch
    # move it by at most about 0.32 standard deviations, the normal quantile at 0.5 / 0.8, below min_shift).
    new_median = np.median(batch, axis=0)  # (F,)
    change = 100.0 * (new_median / np.where(centre != 0, centre, np.nan) - 1.0)
    shift = (new_median - centre) / spread
    rows = [{"statistic": float(statistics[j]), "p_value": float(result.pvalue[j]), "n_kept": len(new_kept),
             "reference_median": float(centre[j]), "batch_median": float(new_median[j]),
             "change_pct": float(change[j]), "shift_sd": float(shift[j])} for j in range(len(names))]
    q_values = false_discovery_control([r["p_value"] for r in rows], method="bh")
    for row, q in zip(rows, q_values):
        row["q_value"] = float(q)
        row["moved"] = bool(q <= alpha and abs(row["shift_sd"]) >= min_shift)
    features = dict(zip(names, rows))
    moved = sorted((name for name, r in features.items() if r["moved"]),
                   key=lambda name: -abs(features[name]["shift_sd"]))
    reason = "; ".join(_reason(name, features[name]["change_pct"], features[name]["shift_sd"]) for name in moved)
    return {"tested": True, "drifted": bool(moved), "n": n, "n_reference": m, "reason": reason,
            "moved": moved, "features": features, **settings}
