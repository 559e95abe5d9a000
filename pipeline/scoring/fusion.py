"""Fusing several per-image scores into one without labels: each score is put on a common scale by its
own distribution on normal *selection* images (never the calibration images), then the fused score is
the largest of them. An image is as anomalous as its most anomalous component: a local defect the
learned map sees, or a wrong part only the ELBO sees.

Scores are first mapped to a scale where normal images spread roughly symmetrically (log of a positive
error, logit of a probability), then standardized: z = (t(s) - mean) / std over the selection images.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.scoring.metrics import image_auroc

log = logging.getLogger(__name__)

EPS = 1e-6
# A component whose spread over normal images is below this (on its log or logit scale; trained detectors show
# 0.17-0.66) does not vary: standardizing it divides float roundoff by almost nothing, so it rules the fused
# score with noise. Typically a learned map that outputs one value everywhere.
MIN_SPREAD = 1e-3
TRANSFORMS = ("log", "logit")


def transform(scores: np.ndarray, kind: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if kind == "log":
        return np.log(np.maximum(scores, EPS))
    if kind == "logit":
        p = np.clip(scores, EPS, 1 - EPS)
        return np.log(p) - np.log1p(-p)
    raise ValueError(f"score transform must be one of {TRANSFORMS}, got {kind!r}")


ELBO_COMPONENT = "neg_elbo_mean"
WHOLE_PART_COMPONENTS = (ELBO_COMPONENT, "linear_max", "nearest_distance")  # models of the whole part, left out
#   where it is a texture


def draws_the_part(global_detail_ratio: float | None, max_ratio: float | None) -> bool:
    """Whether the global level draws the part: its reconstruction of normal images misses at most `max_ratio` of
    their own detail (mean |x_hat - x| / mean |x - mean x|; a flat blur gives about 1). None: not measured, or the
    rule switched off, counts as drawn."""
    return max_ratio is None or global_detail_ratio is None or global_detail_ratio <= max_ratio


def keep_components(components: list[str], global_detail_ratio: float | None, max_ratio: float | None) -> list[str]:
    """The fused components worth keeping. The ELBO, the linear level and the nearest-parts level describe the whole
    part, and the part only as well as the global level draws it (draws_the_part): where it does not, the image is a
    texture: the ELBO measures its brightness and contrast, and the linear residual and the distance to the nearest
    training images grow with any shift, rescaling or relighting of the whole image, which the local level and the
    map are taught to take as normal. They are then dropped. A component is never dropped when it is the only one."""
    if draws_the_part(global_detail_ratio, max_ratio):
        return list(components)
    kept = [c for c in components if c not in WHOLE_PART_COMPONENTS] or list(components)
    if len(kept) < len(components):
        log.info("the global level misses %.0f %% of the normal images' detail (over %.0f %%): a texture, with no "
                 "whole part to model; left out of the fused score: %s", 100 * global_detail_ratio, 100 * max_ratio,
                 ", ".join(c for c in components if c not in kept))
    return kept


def keep_if_it_helps(base: list[str], candidates: list[str], standardization: dict[str, dict],
                     validation_scores: dict[str, np.ndarray], truth: np.ndarray, min_gain: float,
                     decided: dict[str, float] | None = None) -> tuple[list[str], dict[str, float]]:
    """Which candidate components join the fused score, by the label-free validation (normal selection images and
    synthetic anomalies of a kind no network trained on, `truth` 1 = anomalous): one by one, a candidate is kept
    when the fused score with it ranks the validation images at least `min_gain` image AUROC better than without
    it (min_gain 0: unless it ranks them worse). A component that adds nothing only adds its own noise to the
    maximum. With no base component a candidate is kept as it is; with a validation of one class it is left out.
    `decided`: gains measured elsewhere that decide instead of these images' own, also where these images show
    nothing (a cross-conformal member: the members' mean, detector/ensemble.py: shared_gains); a candidate it does
    not name is decided by its own gain.
    Returns (the kept components, each measured candidate's gain)."""
    kept, gains, decided = list(base), {}, decided or {}
    for candidate in candidates:
        if not kept:
            kept.append(candidate)
            continue
        without = image_auroc(truth, fuse(validation_scores, {c: standardization[c] for c in kept}))
        with_it = image_auroc(truth, fuse(validation_scores, {c: standardization[c] for c in [*kept, candidate]}))
        if without is not None and with_it is not None:
            gains[candidate] = float(with_it - without)
        elif candidate not in decided:  # a validation of one class shows nothing: keep what the base has
            log.warning("the validation images are all normal or all anomalous: '%s' is left out", candidate)
            continue
        if decided.get(candidate, gains.get(candidate)) >= min_gain:
            kept.append(candidate)
    return kept, gains


def fit_standardization(selection_scores: dict[str, np.ndarray], transforms: dict[str, str]) -> dict[str, dict]:
    """{component: {"transform", "center", "scale"}} from the components' scores on normal selection images."""
    params = {}
    for name, kind in transforms.items():
        values = transform(selection_scores[name], kind)
        if values.size < 2:
            raise ValueError(f"standardizing '{name}' needs at least 2 selection images, got {values.size}")
        spread = float(values.std())
        params[name] = {"transform": kind, "center": float(values.mean()), "scale": max(spread, EPS)}
        if spread < MIN_SPREAD:
            log.warning("'%s' barely varies over the %d selection images (spread %.2g on its %s scale, under %g): "
                        "it carries no information, and the fused score follows its roundoff. Retrain (a learned "
                        "map that outputs one value has not learned), or leave it out of detect.components.",
                        name, values.size, spread, kind, MIN_SPREAD)
    return params


def standardize(scores: np.ndarray, params: dict) -> np.ndarray:
    """z-scores of one component's raw scores (N,) -> (N,)."""
    return (transform(scores, params["transform"]) - params["center"]) / params["scale"]


def _standardized(component_scores: dict[str, np.ndarray], standardization: dict[str, dict]) -> np.ndarray:
    if not standardization:
        raise ValueError("no fused components: the detector was fitted without a standardization")
    return np.stack([standardize(component_scores[name], params) for name, params in standardization.items()])


def fuse(component_scores: dict[str, np.ndarray], standardization: dict[str, dict]) -> np.ndarray:
    """The largest standardized component per image, (N,)."""
    return np.max(_standardized(component_scores, standardization), axis=0)


# Each component in the words of the review panel ("score 4.2 by the anomaly map > threshold 2.9")
COMPONENT_WORDS = {"map_max": "the anomaly map", "map_topk": "the anomaly map", ELBO_COMPONENT: "the ELBO",
                   "linear_max": "the linear residual", "nearest_distance": "the distance to the nearest good parts"}


def in_words(component: str) -> str:
    """A fused component as the review names it (its own name where it has no words)."""
    return COMPONENT_WORDS.get(component, component)


def deciding_component(component_scores: dict[str, np.ndarray], standardization: dict[str, dict]) -> np.ndarray:
    """Per image, the component whose standardized score is the fused score (the largest), (N,) of names: what a
    reviewer needs to know why an image was flagged (a local defect, a wrong part as a whole, a residual the
    linear level could not explain, a part unlike every good part)."""
    names = np.asarray(list(standardization), dtype=object)
    return names[np.argmax(_standardized(component_scores, standardization), axis=0)]
