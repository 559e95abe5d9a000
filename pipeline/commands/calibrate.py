"""`python -m pipeline calibrate`: add reviewed normal images of the *audit sample* to the calibration set of a
detector (`detector`, default: the newest version), recompute the threshold at the same alpha, and log the
result as a new model version (not promoted: `python -m pipeline promote <version>` does that).

Why only the audit sample: the conformal promise (at most alpha of new normal images flagged) needs calibration
images exchangeable with new normal images. Audit images are drawn at random among everything judged, so the
normal ones among them are such a sample. Flagged false alarms are not: they are the highest-scoring normal
images, and adding only those would push the threshold up past what alpha promises (tests/test_calibrate.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from pipeline.commands.common import load_detector
from pipeline.commands.review import review_experiments
from pipeline.data.datasets import load_images
from pipeline.data.fs import real_path, within
from pipeline.data.layout import Sample
from pipeline.detector import AnomalyDetector
from pipeline.review.loop import audited_normal_images
from pipeline.scoring import scores as S
from pipeline.tracking.calibration_run import log_calibration
from pipeline.tracking.store import open_store

log = logging.getLogger(__name__)
ADDED_KEY = "calibration_added"  # detector.json extra: images already added ('<where>/<path>'), never added twice


def extend_calibration(detector: AnomalyDetector, images) -> int:
    """Score the confirmed-normal images with every calibrated score and append them; returns how many."""
    out = detector.score(images, extra=(*S.MONTE_CARLO_SCORES, *S.STRUCTURE_SCORES), keep=())
    for name, values in detector.spec.calibration_scores.items():
        values.extend(float(v) for v in out[name])
    return len(images)


def locate(where: str, image_path: str) -> Path | None:
    """The file of a reviewed image: under the data root or inbox it was judged in (or its processed/ folder);
    None, with a warning, when that path leads outside the folder (the record's path or a symlink on its way)."""
    base = real_path(Path(where))
    candidates = [p for p in (base / image_path, base / "processed" / image_path) if p.is_file()]
    path = candidates[0] if candidates else base / image_path
    if not within(real_path(path), base):
        log.warning("not added to the calibration set: %s leads outside %s (to %s)", path, base, real_path(path))
        return None
    return path


def run_calibrate(cfg: DictConfig) -> dict:
    client = open_store(cfg)
    detector, provenance = load_detector(cfg, "latest", str(cfg.data.root), judges=False)
    if detector.spec.categories:
        raise ValueError("calibrate does not support conditional detectors yet: their calibration is per category")
    if detector.spec.scheme == "cross":
        raise ValueError("calibrate does not support cross-conformal detectors (small normal sets, data.split.scheme="
                         "cross): each of their calibration images belongs to the member that did not train on it; "
                         "add the reviewed normal images to train/good and train again")
    model_name = provenance.get("model_name") or cfg.tracking.registered_model
    found, ignored = audited_normal_images(client, review_experiments(client, cfg), model_name)
    already = set(detector.spec.extra.get(ADDED_KEY, []))
    found["id"] = [f"{w}/{p}" for w, p in zip(found["where"], found["image_path"])]
    new = found[~found["id"].isin(already)].drop_duplicates("id")
    if new.empty:
        raise LookupError(f"no new reviewed normal image of an audit sample for {model_name} ({len(found)} found, "
                          f"{len(already)} already added, {ignored} flagged false alarms outside the audit sample, "
                          "which calibrate never uses): review the images marked 'audit' of a scoring run or an "
                          "inspection batch, e.g. `python -m pipeline review <run> review.set=[<sample id>:false_alarm]`")
    located = {i: locate(w, p) for i, w, p in zip(new["id"], new["where"], new["image_path"])}
    samples = {i: Sample(path, i, "good", None) for i, path in located.items() if path is not None}
    images, kept, errors = load_images(list(samples.values()), detector.spec.image_size, detector.spec.read_options)
    for err in errors:
        log.warning("not added to the calibration set: %s", err)
    old_threshold, old_n = detector.threshold_, len(detector.calibration_scores_)
    n_added = extend_calibration(detector, images)
    added = [i for i, s in samples.items() if s in kept]
    detector.spec.extra = {**detector.spec.extra, ADDED_KEY: sorted(already | set(added)),
                           "calibrated_from": provenance["model_source"]}
    log.warning("threshold recalibrated with %d reviewed normal audit image(s): %.6g -> %.6g (n = %d -> %d); "
                "%d flagged false alarm(s) outside the audit sample were not used", n_added, old_threshold,
                detector.threshold_, old_n, len(detector.calibration_scores_), ignored)
    out_dir = Path(cfg.output_root) / "calibrate" / cfg.data.name / time.strftime("%Y%m%d-%H%M%S")
    detector.save(out_dir / "detector")
    summary = {"previous_threshold": old_threshold, "threshold": detector.threshold_, "n_added": n_added,
               "n_calibration": len(detector.calibration_scores_), "added": added, "alpha": detector.spec.alpha,
               "score": detector.spec.score, "skipped": [str(e) for e in errors], "n_ignored_not_audited": ignored,
               "from_runs": sorted(set(new["run_id"])), "calibrated_from": provenance["model_source"],
               "detector_dir": str(out_dir / "detector")}
    summary.update(log_calibration(cfg, client, out_dir, summary, provenance))
    summary["next"] = f"champion unchanged: `python -m pipeline promote {summary.get('version', '<version>')}` to use it"
    return {k: (v if not isinstance(v, np.floating) else float(v)) for k, v in summary.items()}
