"""Is this detector's decision to be trusted on these images? The two checks a run of judged images makes after
the decision, on the scored table (detector/files.py), with the detector's stored calibration:

- drift (scoring/drift.py): have the images' global statistics (scale, brightness, contrast, focus) moved away
  from the calibration images'? Needs no labels; `inspect` runs it on every batch, `score` on its test images.
- the promise (scoring/promise.py): with labelled good images (`score` on an MVTec-layout test split), are more
  of them flagged than the threshold's alpha allows, by a test that accounts for the calibration set's own
  randomness? Per calibration group (each category of a conditional detector), Bonferroni over the groups.

With labels, both checks use the good images only: defects are supposed to differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.detector.spec import DetectorSpec
from pipeline.detector import calibration as C
from pipeline.scoring.drift import FEATURES, drift_test
from pipeline.scoring.promise import promise_test


@dataclass(frozen=True)
class DriftSettings:
    """conf/inspect drift_* (the same test for `inspect` and `score`)."""

    alpha: float = 0.01
    trim: float = 0.2
    min_images: int = 20
    min_shift: float = 0.5
    test: str = "mannwhitneyu"

    @classmethod
    def from_config(cls, icfg) -> "DriftSettings":
        return cls(icfg.drift_alpha, icfg.drift_trim, icfg.drift_min_images, icfg.drift_min_shift, icfg.drift_test)


def check_drift(spec: DetectorSpec, frame: pd.DataFrame, settings: DriftSettings) -> dict:
    """The drift test of the rows' image statistics (columns 'stat.<feature>') against the calibration images'."""
    reference = np.asarray(spec.drift_reference, dtype=np.float64)
    columns = [f"stat.{f}" for f in FEATURES]
    if frame.empty or reference.size == 0 or not set(columns) <= set(frame.columns):
        return {"tested": False, "drifted": False, "n": int(len(frame)),
                "reason": "not tested: no images or no reference"}
    return drift_test(reference, frame[columns].to_numpy(dtype=np.float64), settings.alpha, settings.trim,
                      settings.min_images, settings.min_shift, settings.test)


def check_promise(spec: DetectorSpec, frame: pd.DataFrame, level: float) -> dict:
    """The false-alarm test of the good rows (defect_type 'good') at the conformal threshold: a row is a false
    alarm when its score is above its own threshold (the per-image rule alpha promises, whatever control flagged
    the run). Columns: score, threshold, defect_type, and 'category' for a conditional detector."""
    if spec.threshold_method != "conformal":
        return {"tested": False, "broken": False, "level": float(level), "groups": {},
                "reason": "not tested: a manual threshold makes no promise"}
    good = frame[frame["defect_type"] == "good"]
    flagged = (good["score"].to_numpy(dtype=np.float64) > good["threshold"].to_numpy(dtype=np.float64))
    groups = {}
    for key, guarantee in C.guarantees(spec).items():
        rows = np.ones(len(good), bool) if key is None else (good["category"] == guarantee["category"]).to_numpy()
        groups["" if key is None else guarantee["category"]] = (int(flagged[rows].sum()), int(rows.sum()),
                                                                int(guarantee["n_calibration"]))
    return promise_test(groups, spec.alpha, level)
