"""`python -m pipeline score`: score every test image of a dataset with a trained detector.

Writes to `score.output_dir`: scores.csv (one row per readable image), errors.csv (files that could
not be read, with the reason), maps/<relative path>.npy (float16 maps at the original resolution),
overlays/<relative path>.png for flagged images, figures/, and metrics.json when labels are known.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from pipeline.data.builtin import ensure_dataset
from pipeline.data.datasets import ImageDataset
from pipeline.data.images import ImageReadError, read_image
from pipeline.data.layout import Sample, scan_test
from pipeline.report import figures
from pipeline.review.flagged import flagged_panels
from pipeline.review.panels import defect_region
from pipeline.scoring.detector import WEIGHTS_FILE, AnomalyDetector, file_sha256
from pipeline.scoring.evaluate import evaluate, evaluate_output_folder, evaluation_figures
from pipeline.scoring.maps import resize_map
from pipeline.scoring.scores import SCORE_NAMES
from pipeline.scoring.threshold import benjamini_hochberg

log = logging.getLogger(__name__)


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file; on failure
    (e.g. a full disk) the temporary file is removed and the previous file, if any, stays intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def save_map(path: Path, anomaly_map: np.ndarray) -> None:
    _atomic_write(path, lambda handle: np.save(handle, anomaly_map.astype(np.float16)))


def map_file(out_dir: Path, sample: Sample) -> Path:
    return out_dir / "maps" / f"{sample.rel_path}.npy"


def score_dataset(detector: AnomalyDetector, samples: list[Sample], out_dir: Path, batch_size: int,
                  num_workers: int = 0, keep_maps: bool = False
                  ) -> tuple[pd.DataFrame, list[dict], dict[int, np.ndarray]]:
    """Score samples in batches, writing one map per image. Returns (rows, errors, maps by sample
    index when `keep_maps`)."""
    spec = detector.spec
    loader = DataLoader(ImageDataset(samples, spec.image_size, spec.read_options), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers)
    rows, errors, kept_maps = [], [], {}
    done, started = 0, time.perf_counter()
    for batch in loader:
        out = detector.score_batch(batch["image"])
        maps = out["map"].float().cpu()  # (B, S, S)
        for j, index in enumerate(batch["index"].tolist()):
            sample = samples[index]
            if batch["error"][j]:
                errors.append({"image_path": sample.rel_path, "error": batch["error"][j]})
                log.warning("cannot score %s: %s", sample.path, batch["error"][j])
                continue
            full = resize_map(maps[j], tuple(batch["orig_hw"][j].tolist())).numpy()  # (H, W) original size
            save_map(map_file(out_dir, sample), full)
            if keep_maps:
                kept_maps[index] = full.astype(np.float16)
            rows.append({"index": index, "image_path": sample.rel_path, "defect_type": sample.defect_type,
                         "label": sample.label, **{name: float(out[name][j]) for name in SCORE_NAMES},
                         **defect_regions(full, spec.pixel_threshold)})
        done += len(batch["index"])
        log.info("scored %d/%d images (%.1f images/s)", done, len(samples), done / (time.perf_counter() - started))
    return pd.DataFrame(rows), errors, kept_maps


def defect_regions(anomaly_map: np.ndarray, threshold: float | None) -> dict:
    """Share of pixels above the pixel threshold and their number of connected regions."""
    if threshold is None:
        return {"defect_area": float("nan"), "defect_regions": -1}
    mask = defect_region(anomaly_map, threshold)  # the same region the review panels outline
    return {"defect_area": float(mask.mean()), "defect_regions": int(ndimage.label(mask)[1])}


def apply_threshold(frame: pd.DataFrame, detector: AnomalyDetector, fdr_q: float | None = None) -> pd.DataFrame:
    """Add score, threshold, p_value and is_anomaly. Per image: flag when score > threshold (p <= alpha);
    with `fdr_q`, flag by Benjamini-Hochberg over this batch's p-values instead."""
    frame = frame.copy()
    frame["score"] = frame[detector.spec.score]
    frame["threshold"] = detector.threshold_
    frame["p_value"] = detector.p_values(frame["score"].to_numpy())
    if fdr_q is None:
        frame["is_anomaly"] = (frame["score"] > detector.threshold_).astype(int)
    else:
        frame["is_anomaly"] = benjamini_hochberg(frame["p_value"].to_numpy(), fdr_q).astype(int)
    return frame


def write_overlays(frame: pd.DataFrame, samples: list[Sample], out_dir: Path, detector: AnomalyDetector,
                   maps_vmax: float, limit: int) -> list[Path]:
    """Heat-map overlay PNGs of the flagged images, most anomalous first."""
    written = []
    shutil.rmtree(out_dir / "overlays", ignore_errors=True)  # our own output from an earlier run
    for _, row in frame[frame["is_anomaly"] == 1].sort_values("score", ascending=False).head(limit).iterrows():
        sample = samples[int(row["index"])]
        image = read_image(sample.path, detector.spec.read_options)
        anomaly_map = np.load(map_file(out_dir, sample)).astype(np.float32)
        path = out_dir / "overlays" / f"{sample.rel_path}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figures.heatmap_overlay(image, anomaly_map, maps_vmax).save(path)
        written.append(path)
    return written


def run_score(cfg: DictConfig) -> dict:
    from pipeline.scoring.distributed import score_distributed, wants_distributed
    from pipeline.tracking.runs import resolve_detector

    if cfg.data.get("categories"):  # several categories, one conditional model (model=cvae)
        from pipeline.scoring.conditional import run_score_conditional

        return run_score_conditional(cfg)
    root = ensure_dataset(cfg.data, cfg.seed)
    out_dir = Path(cfg.score.output_dir).expanduser().resolve()
    if out_dir == root or root in out_dir.parents:
        raise ValueError(f"score.output_dir={out_dir} is inside the data root {root}: choose another folder")
    detector_dir, provenance = resolve_detector(cfg, str(cfg.score.model), str(root))
    detector = AnomalyDetector.load(detector_dir)
    provenance["weights_sha256"] = file_sha256(detector_dir / WEIGHTS_FILE)
    detector.recalibrate_for(score=cfg.score.score, alpha=cfg.score.alpha, method=cfg.score.threshold_method,
                             manual_threshold=cfg.score.manual_threshold)
    samples = scan_test(root)
    log.info("scoring %d test images of %s with %s", len(samples), root, provenance["model_source"])

    started = time.perf_counter()
    if wants_distributed(cfg.trainer):  # several processes: each scores a shard, rank 0 merges
        scored = score_distributed(cfg, detector, samples, out_dir, provenance["weights_sha256"])
        if scored is None:  # a rank > 0: rank 0 writes the results and the one MLflow run
            return {}
        frame, errors, maps = scored
    else:
        frame, errors, maps = score_dataset(detector, samples, out_dir, cfg.data.batch_size, cfg.data.num_workers,
                                            keep_maps=True)
    seconds = time.perf_counter() - started
    if frame.empty:
        raise ImageReadError(root / "test", "no test image could be read (see errors.csv)")
    frame = apply_threshold(frame, detector, cfg.score.fdr_q)
    columns = ["image_path", "score", "threshold", "is_anomaly", "p_value", "defect_area", "defect_regions",
               *SCORE_NAMES, "label", "defect_type"]
    atomic_write_text(out_dir / "scores.csv", frame[columns].to_csv(index=False))
    atomic_write_text(out_dir / "errors.csv", pd.DataFrame(errors, columns=["image_path", "error"]).to_csv(index=False))

    labelled = frame["label"].nunique() > 1 or frame["defect_type"].ne("good").any()
    metrics = evaluate(frame, samples, maps, cfg.score.aupro_fpr_limit) if labelled else {"n_images": len(frame)}
    metrics.update({"threshold": detector.threshold_, "alpha": detector.spec.alpha, "score": detector.spec.score,
                    "map": detector.spec.map_kind, "threshold_method": detector.spec.threshold_method,
                    "false_alarm_control": f"benjamini-hochberg q={cfg.score.fdr_q}" if cfg.score.fdr_q is not None
                    else f"per-image p <= alpha={detector.spec.alpha}",
                    "pixel_threshold": detector.spec.pixel_threshold,
                    "n_calibration": len(detector.calibration_scores_),
                    "n_flagged": int(frame["is_anomaly"].sum()), "n_errors": len(errors),
                    "images_per_second": len(samples) / seconds, **provenance})
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))

    normal_maps = [maps[i] for i in frame.loc[frame["label"] == 0, "index"]] or list(maps.values())
    vmax = float(np.quantile(np.concatenate([m.ravel() for m in normal_maps]).astype(np.float32), 0.999)) * 2
    overlays = write_overlays(frame, samples, out_dir, detector, vmax, cfg.score.max_overlays)
    flagged = flagged_panels(detector, frame, samples, out_dir, vmax, cfg.review.max_panels, cfg.review.tile_size)
    if labelled:
        evaluation_figures(frame, detector.threshold_, detector.spec.score, out_dir / "figures")
    else:
        figures.score_histogram(frame["score"].to_numpy(), None, detector.threshold_,
                                out_dir / "figures" / "score_histogram.png", detector.spec.score)

    if cfg.tracking.enabled:
        from pipeline.tracking.scoring_run import log_scoring_run

        metrics["run_id"] = log_scoring_run(cfg, out_dir, detector, provenance, metrics, frame, overlays, str(root),
                                            flagged=flagged)
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
    metrics["output_dir"] = str(out_dir)
    return metrics


def run_evaluate(cfg: DictConfig) -> dict:
    """Metrics and figures for an existing score output folder; logged into its scoring run if any."""
    root = ensure_dataset(cfg.data, cfg.seed)
    out_dir = Path(cfg.score.output_dir).expanduser().resolve()
    if not (out_dir / "scores.csv").is_file():
        raise FileNotFoundError(f"{out_dir / 'scores.csv'} not found: run `python -m pipeline score` first "
                                "(or set score.output_dir)")
    metrics = evaluate_output_folder(out_dir, scan_test(root), cfg.score.aupro_fpr_limit)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
    if cfg.tracking.enabled and metrics.get("run_id"):
        from pipeline.tracking.scoring_run import log_evaluation

        log_evaluation(cfg, metrics["run_id"], out_dir, metrics)
    return metrics
