"""Scoring with a conditional detector (model=cvae) over several categories (data=builtin_all).

Each category's test split is scored with the category's label as the condition (the label is the
category's index in the detector's own list, detector.json `categories`, matched by name), through
the same single-category functions (score_dataset, apply_threshold, evaluate). Output folder:
scores.csv (all images, with a `category` column, image_path = <category>/<path in its root>),
errors.csv, maps/<category>/..., metrics.json (every metric per category as '<category>.<metric>'
and the mean image AUROC), logged as one scoring run. One threshold serves every category: it is
calibrated on the held-out normal images of all categories together.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.data.conditional import category_roots
from pipeline.data.layout import scan_test
from pipeline.models.cvae import conditioned
from pipeline.scoring.detector import WEIGHTS_FILE, AnomalyDetector, file_sha256
from pipeline.scoring.evaluate import evaluate, evaluation_figures
from pipeline.scoring.run import apply_threshold, atomic_write_text, score_dataset
from pipeline.scoring.scores import SCORE_NAMES


def category_label(detector: AnomalyDetector, category: str) -> int:
    """The condition of `category`: its index in the detector's category list; a clear error if absent."""
    known = detector.spec.categories or []
    if category not in known:
        raise ValueError(f"category {category!r} (data.categories) is not one the detector was trained on: {known}")
    return known.index(category)


def score_category(detector: AnomalyDetector, category: str, root: Path, out_dir: Path, cfg: DictConfig):
    """(thresholded rows, errors, metrics) of one category's test split, scored under its condition."""
    samples = scan_test(root)
    with conditioned(detector.net, category_label(detector, category)):
        frame, errors, maps = score_dataset(detector, samples, out_dir / category, cfg.data.batch_size,
                                            cfg.data.num_workers, keep_maps=True)
    frame = apply_threshold(frame, detector, cfg.score.fdr_q)
    metrics = evaluate(frame, samples, maps, cfg.score.aupro_fpr_limit)
    frame.insert(0, "category", category)
    frame["image_path"] = category + "/" + frame["image_path"]
    return frame, [{**e, "image_path": f"{category}/{e['image_path']}"} for e in errors], metrics


def run_score_conditional(cfg: DictConfig) -> dict:
    from pipeline.tracking.runs import resolve_detector

    roots = category_roots(cfg.data, cfg.seed)
    parent = str(Path(cfg.data.root).expanduser().resolve())
    out_dir = Path(cfg.score.output_dir).expanduser().resolve()
    detector_dir, provenance = resolve_detector(cfg, str(cfg.score.model), parent)
    detector = AnomalyDetector.load(detector_dir)
    if not detector.spec.categories:
        raise ValueError(f"{detector_dir} is a single-category detector; data.categories needs a conditional one "
                         "(train it with model=cvae)")
    provenance["weights_sha256"] = file_sha256(detector_dir / WEIGHTS_FILE)
    detector.recalibrate_for(score=cfg.score.score, alpha=cfg.score.alpha, method=cfg.score.threshold_method,
                             manual_threshold=cfg.score.manual_threshold)
    started, frames, errors, metrics = time.perf_counter(), [], [], {}
    for category, root in roots:
        frame, errs, per_cat = score_category(detector, category, root, out_dir / "maps", cfg)
        frames.append(frame)
        errors += errs
        metrics.update({f"{category}.{k}": v for k, v in per_cat.items() if not isinstance(v, dict)})
    frame = pd.concat(frames, ignore_index=True)
    seconds = time.perf_counter() - started
    columns = ["category", "image_path", "score", "threshold", "is_anomaly", "p_value", "defect_area",
               "defect_regions", *SCORE_NAMES, "label", "defect_type"]
    atomic_write_text(out_dir / "scores.csv", frame[columns].to_csv(index=False))
    atomic_write_text(out_dir / "errors.csv", pd.DataFrame(errors, columns=["image_path", "error"]).to_csv(index=False))
    aurocs = [metrics[f"{c}.image_auroc"] for c, _ in roots if metrics.get(f"{c}.image_auroc") is not None]
    metrics.update({"categories": [c for c, _ in roots], "mean_image_auroc": float(np.mean(aurocs)) if aurocs else None,
                    "n_images": len(frame), "threshold": detector.threshold_, "alpha": detector.spec.alpha,
                    "score": detector.spec.score, "n_flagged": int(frame["is_anomaly"].sum()),
                    "n_errors": len(errors), "images_per_second": len(frame) / seconds, **provenance})
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
    evaluation_figures(frame.assign(defect_type=frame["category"] + "/" + frame["defect_type"]),
                       detector.threshold_, detector.spec.score, out_dir / "figures")
    if cfg.tracking.enabled:
        from pipeline.tracking.scoring_run import log_scoring_run

        metrics["run_id"] = log_scoring_run(cfg, out_dir, detector, provenance, metrics, frame, [], parent)
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
    metrics["output_dir"] = str(out_dir)
    return metrics
