"""`python -m pipeline score` (and `evaluate`): score every test image of a dataset with a trained detector.

Writes to `score.output_dir`: scores.csv (one row per readable image), errors.csv (files that could not be
read, with the reason), maps/<relative path>.npy (float16 maps at the original resolution), review/
(panels, thumbnails and records of the flagged images, the audit sample), figures/, and metrics.json
(with labels: image and pixel metrics). Then one MLflow run in the scoring experiment, laid out like an
inspection batch's (tracking/detection_run.py).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pipeline.commands.common import load_detector
from pipeline.data.builtin import category_roots, ensure_dataset
from pipeline.data.images import ImageReadError
from pipeline.data.layout import GOOD, Sample, scan_test
from pipeline.detector import calibration as C
from pipeline.data.fs import atomic_write_text
from pipeline.detector.checks import DriftSettings, check_drift, check_promise
from pipeline.detector.files import decide_frame, score_files
from pipeline.report import figures
from pipeline.report.evaluation import evaluation_figures
from pipeline.report.review_page import write_review_page
from pipeline.report.review_set import audit_indices, build_review, write_records
from pipeline.scoring import scores as S
from pipeline.scoring.evaluate import evaluate, evaluate_output_folder
from pipeline.tracking.detection_run import detection_urls, log_detection_run, log_evaluation
from pipeline.training.world import wants_distributed

log = logging.getLogger(__name__)

COLUMNS = ["image_path", "score", "threshold", "is_anomaly", "p_value", "q_value", "defect_area", "defect_regions"]


def test_samples(cfg: DictConfig, detector, root: Path) -> tuple[list[Sample], list[int] | None]:
    """The test split (every category's, paths prefixed by the category, for a conditional detector) and
    each sample's category label (None for a single-category detector)."""
    if not cfg.data.get("categories"):
        if detector.spec.categories:
            raise ValueError(f"{detector.spec.categories} is a conditional detector: score it with data=builtin_all")
        return scan_test(root), None
    if not detector.spec.categories:
        raise ValueError("data.categories needs a conditional detector (train it with model=cvae data=builtin_all)")
    samples, labels = [], []
    for category, category_root in category_roots(cfg.data, cfg.seed):
        if category not in detector.spec.categories:
            raise ValueError(f"category {category!r} is not one the detector was trained on: {detector.spec.categories}")
        for s in scan_test(category_root):
            samples.append(Sample(s.path, f"{category}/{s.rel_path}", s.defect_type, s.mask_path))
            labels.append(detector.spec.categories.index(category))
    return samples, labels


def run_score(cfg: DictConfig) -> dict:
    root = ensure_dataset(cfg.data, cfg.seed)
    out_dir = Path(cfg.score.output_dir).expanduser().resolve()
    if out_dir == root or root in out_dir.parents:
        raise ValueError(f"score.output_dir={out_dir} is inside the data root {root}: choose another folder")
    detector, provenance = load_detector(cfg, "latest", str(root))
    samples, labels = test_samples(cfg, detector, root)
    log.info("scoring %d test images of %s with %s", len(samples), root, provenance["model_source"])
    audit = audit_indices(len(samples), cfg.review.audit_size, cfg.seed)
    extra = tuple(cfg.score.extra) + ((detector.spec.score,) if detector.spec.score not in (*S.BASE_SCORES, S.FUSED) else ())
    started = time.perf_counter()
    if wants_distributed(cfg.trainer):  # several processes: each scores a shard, rank 0 merges
        from pipeline.detector.distributed import score_distributed  # Lightning: imported only when used

        scored = score_distributed(cfg, detector, samples, out_dir, extra, labels, audit)
        if scored is None:  # a rank > 0: rank 0 writes the results and the one MLflow run
            return {}
    else:
        scored = score_files(detector, samples, out_dir, cfg.data.batch_size, cfg.data.num_workers, extra, labels,
                             keep_top=cfg.review.max_panels, keep_indices=audit, keep_maps=True, statistics=True,
                             progress="scoring", progress_every_percent=cfg.trainer.progress_every_percent)
    seconds = time.perf_counter() - started
    if scored.frame.empty:
        raise ImageReadError(root / "test", "no test image could be read (see errors.csv)")
    frame_labels = None if labels is None else pd.Series(labels)[scored.frame["index"]].to_numpy()
    frame = decide_frame(detector, scored.frame, cfg.score.fdr_q, frame_labels)
    if frame_labels is not None:  # conditional: each image's category, by name
        frame.insert(0, "category", [detector.spec.categories[k] for k in frame_labels])
    scores_present = [n for n in S.SCORE_NAMES if n in frame]
    category = ["category"] if "category" in frame else []
    decided_by = ["decided_by"] if "decided_by" in frame else []
    atomic_write_text(out_dir / "scores.csv", frame[[*category, *COLUMNS, *scores_present, *decided_by, "label",
                                                     "defect_type"]].to_csv(index=False))
    atomic_write_text(out_dir / "errors.csv", pd.DataFrame(scored.errors, columns=["image_path", "error"]).to_csv(index=False))
    labelled = frame["defect_type"].ne("good").any()
    metrics = evaluate(frame, samples, scored.maps, cfg.score.aupro_fpr_limit) if labelled else {"n_images": len(frame)}
    if labelled and category:  # per category too: each has its own threshold, a pooled AUROC mixes their scales
        metrics.update(per_category_metrics(frame, samples, scored.maps, cfg.score.aupro_fpr_limit))
    metrics.update(decision_metrics(detector, frame, scored.errors, cfg.score.fdr_q, seconds), **provenance)
    metrics.update(trust_checks(detector, frame, cfg))
    records = build_review(frame, scored.kept, audit, out_dir, detector.spec.pixel_threshold, cfg.review.max_panels,
                           cfg.review.top_when_none, cfg.review.tile_size, cfg.review.thumbnail_width)
    if labelled:
        evaluation_figures(frame, detector.threshold_, detector.spec.score, out_dir / "figures")
    else:
        figures.score_histogram(frame["score"].to_numpy(), None, detector.threshold_,
                                out_dir / "figures" / "score_histogram.png", detector.spec.score)
    write_records(out_dir, records)
    write_review_page(out_dir, records, metrics, "score")
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
    if cfg.tracking.enabled:
        metrics["run_id"] = log_detection_run(cfg, "score", out_dir, metrics, records, str(root))
        metrics.update(detection_urls(cfg, "score", metrics["run_id"]))
        log.info("review it in MLflow (`make ui` serves the local store): %s", metrics["mlflow_run"])
        write_review_page(out_dir, records, metrics, "score", metrics["run_id"])  # with the run id in its commands
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
    metrics["output_dir"] = str(out_dir)
    return {k: v for k, v in metrics.items() if k != "per_defect_type"}


def per_category_metrics(frame: pd.DataFrame, samples: list[Sample], maps: dict, fpr_limit: float) -> dict:
    """'<category>.<metric>' for every category of a conditional detector's frame, and their mean image AUROC."""
    metrics = {}
    for name, rows in frame.groupby("category", sort=False):
        metrics.update({f"{name}.{k}": v for k, v in evaluate(rows, samples, maps, fpr_limit).items()
                        if not isinstance(v, dict)})
    aurocs = [metrics[f"{c}.image_auroc"] for c in frame["category"].unique() if metrics.get(f"{c}.image_auroc") is not None]
    return {**metrics, "mean_image_auroc": sum(aurocs) / len(aurocs) if aurocs else None}


def decision_metrics(detector, frame: pd.DataFrame, errors: list, fdr_q: float | None, seconds: float) -> dict:
    """The decision as it was applied, with the promise it makes."""
    guarantees = list(C.guarantees(detector.spec).values())
    return {"score": detector.spec.score, "alpha": detector.spec.alpha, "threshold": detector.threshold_,
            "threshold_method": detector.spec.threshold_method, "map": detector.spec.detect["map"],
            "false_alarm_control": f"benjamini-hochberg q={fdr_q}" if fdr_q is not None
            else f"per-image p <= alpha={detector.spec.alpha}",
            "n_calibration": min(g["n_calibration"] for g in guarantees),
            "can_flag": all(g["can_flag"] for g in guarantees), "guarantee": guarantees[0]["method"],
            "guarantee_statement": guarantees[0]["promise"],
            "pixel_threshold": detector.spec.pixel_threshold, "n_images": int(len(frame)),
            "n_flagged": int(frame["is_anomaly"].sum()), "n_errors": len(errors),
            "images_per_second": len(frame) / max(seconds, 1e-9)}


def trust_checks(detector, frame: pd.DataFrame, cfg: DictConfig) -> dict:
    """The drift test and, with labelled good images, the false-alarm promise (detector/checks.py); with labels
    both look at the good images only. Says so in the log when either fails."""
    good = frame["defect_type"].eq(GOOD)
    labelled = bool(good.any())
    drift = check_drift(detector.spec, frame[good] if labelled else frame, DriftSettings.from_config(cfg.inspect))
    drift["images"] = "good" if labelled else "all"
    promise = (check_promise(detector.spec, frame, cfg.score.promise_level) if labelled else
               {"tested": False, "broken": False, "reason": "not tested: no labelled good images (test/good)"})
    if promise["broken"]:
        log.warning("the threshold does not keep its promise on these good images: %s. They differ from the "
                    "calibration images; see the review page", promise["reason"])
    if drift["drifted"]:
        log.warning("the %s images drifted from the calibration images: %s", "good" if labelled else "scored",
                    drift["reason"])
    return {"drift": drift, "promise": promise}


def run_evaluate(cfg: DictConfig) -> dict:
    """Metrics and figures for an existing score output folder; logged into its scoring run if any."""
    root = ensure_dataset(cfg.data, cfg.seed)
    out_dir = Path(cfg.score.output_dir).expanduser().resolve()
    if not (out_dir / "scores.csv").is_file():
        raise FileNotFoundError(f"{out_dir / 'scores.csv'} not found: run `python -m pipeline score` first "
                                "(or set score.output_dir)")
    metrics = evaluate_output_folder(out_dir, scan_test(root), cfg.score.aupro_fpr_limit)
    frame = pd.read_csv(out_dir / "scores.csv")
    evaluation_figures(frame, float(frame["threshold"].iloc[0]), str(metrics.get("score", "score")), out_dir / "figures")
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
    if cfg.tracking.enabled and metrics.get("run_id"):
        log_evaluation(cfg, metrics["run_id"], out_dir, metrics)
    return {k: v for k, v in metrics.items() if k != "per_defect_type"}
