"""`python -m pipeline calibrate`: add reviewed false alarms (confirmed-normal images) to the
calibration set, recompute the threshold and log the result as a new model version.

Never silent: the old and new threshold, the images added and the version it started from are
printed, logged as a run (stage=calibrate) in the training experiment and stored in detector.json.
The new version is not promoted; `python -m pipeline promote <version>` does that.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from pipeline.data.builtin import ensure_dataset
from pipeline.data.datasets import load_images
from pipeline.data.layout import Sample
from pipeline.scoring.detector import AnomalyDetector
from pipeline.scoring.scores import SCORE_NAMES

log = logging.getLogger(__name__)
ADDED_KEY = "calibration_added"  # detector.json extra: image paths already added, never added twice


def extend_calibration(calibration: dict[str, list[float]], new_scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every score kind's calibration scores with the new normal scores appended."""
    return {k: np.concatenate([np.asarray(calibration[k], dtype=np.float64), np.asarray(new_scores[k], np.float64)])
            for k in calibration}


def score_all(detector: AnomalyDetector, images, batch_size: int) -> dict[str, np.ndarray]:
    """(N, C, S, S) -> every per-sample score (N,)."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SCORE_NAMES}
    for start in range(0, len(images), batch_size):
        out = detector.score_batch(images[start:start + batch_size])
        for name in SCORE_NAMES:
            parts[name].append(out[name].cpu().numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def run_calibrate(cfg: DictConfig) -> dict:
    from pipeline.tracking.calibration_run import log_calibration
    from pipeline.tracking.review_log import reviewed_false_alarms
    from pipeline.tracking.runs import resolve_detector
    from pipeline.tracking.store import open_store

    root = ensure_dataset(cfg.data, cfg.seed)
    client = open_store(cfg)
    found = reviewed_false_alarms(client, cfg.tracking.score_experiment, str(root))
    detector_dir, provenance = resolve_detector(cfg, str(cfg.review.calibrate_model), str(root))
    detector = AnomalyDetector.load(detector_dir)
    already = set(detector.spec.extra.get(ADDED_KEY, []))
    paths = sorted(set(found["image_path"]) - already)
    if not paths:
        raise LookupError(f"no new reviewed false alarms on {root} (found {len(found)} verdict(s), "
                          f"{len(already)} image(s) already in the calibration set of {provenance['model_source']}): "
                          "record some with `python -m pipeline review <scoring run> review.set=[<id>:false_alarm]`")
    samples = [Sample(root / p, p, "good", None) for p in paths]
    images, kept, errors = load_images(samples, detector.spec.image_size, detector.spec.read_options)
    for err in errors:
        log.warning("not added to the calibration set: %s", err)
    old_threshold, old_n = detector.threshold_, len(detector.calibration_scores_)
    detector.calibrate(extend_calibration(detector.spec.calibration_scores,
                                          score_all(detector, images, cfg.data.batch_size)))
    added = [s.rel_path for s in kept]
    detector.spec.extra = {**detector.spec.extra, ADDED_KEY: sorted(already | set(added)),
                           "calibrated_from": provenance["model_source"]}
    log.warning("threshold recalibrated with %d confirmed-normal image(s): %.6g -> %.6g (n = %d -> %d)",
                len(added), old_threshold, detector.threshold_, old_n, len(detector.calibration_scores_))
    out_dir = Path(cfg.output_root) / "calibrate" / cfg.data.name / time.strftime("%Y%m%d-%H%M%S")
    detector.save(out_dir / "detector")
    summary = {"previous_threshold": old_threshold, "threshold": detector.threshold_, "n_added": len(added),
               "n_calibration": len(detector.calibration_scores_), "added": added,
               "skipped": [str(e) for e in errors], "calibrated_from": provenance["model_source"],
               "detector_dir": str(out_dir / "detector")}
    summary.update(log_calibration(cfg, client, detector, out_dir, summary, provenance, found, str(root)))
    summary["next"] = f"champion unchanged: `python -m pipeline promote {summary.get('version', '<version>')}` to use it"
    return summary
