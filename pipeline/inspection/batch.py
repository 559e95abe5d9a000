"""Judge one batch of inbox files into a staging folder: scores, maps, review panels, summary.

Writes into `staging` (later renamed to batches/<batch id>/ by commit.publish):
    scores.csv, scores.parquet   one row per scored image (SCORE_COLUMNS)
    errors.csv, errors.parquet   one row per file that could not be judged, with the reason
    maps/<path>.npy              float16 anomaly map at the image's original resolution
    panels/<path>.png            review panel of each flagged image (most anomalous first, capped)
    summary.json                 counts, throughput, model, false-alarm control, drift check, errors
Nothing in the inbox is written.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.images import ImageReadError, read_image
from pipeline.data.layout import Sample
from pipeline.inspection.control import flag_batch, score_drift
from pipeline.inspection.inbox import InboxFile
from pipeline.inspection.panels import review_panel
from pipeline.scoring.detector import AnomalyDetector
from pipeline.scoring.run import apply_threshold, map_file, score_dataset
from pipeline.scoring.scores import SCORE_NAMES

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["batch_id", "image_path", "score", "threshold", "p_value", "q_value", "is_anomaly", "defect_area",
                 "defect_regions", *SCORE_NAMES, "model_version", "inspected_at", "sha256", "file_size", "file_mtime_ns"]
ERROR_COLUMNS = ["batch_id", "image_path", "reason", "sha256", "file_size", "file_mtime_ns"]
VMAX_SAMPLE = 32  # maps of unflagged images used to fix the heat-map colour scale of a batch's panels


@dataclass
class InspectionModel:
    detector: AnomalyDetector
    version: str        # what the ledger records as the judge, e.g. 'fabric-vae/v3'
    provenance: dict    # model_source, weights_sha256, ...


def new_batch_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _file_columns(file: InboxFile) -> dict:
    return {"sha256": file.sha256, "file_size": file.size, "file_mtime_ns": file.mtime_ns}


def _write_table(frame: pd.DataFrame, folder: Path, stem: str) -> None:
    frame.to_csv(folder / f"{stem}.csv", index=False)
    frame.to_parquet(folder / f"{stem}.parquet", index=False)


def _panel_vmax(frame: pd.DataFrame, staging: Path) -> float:
    """Colour scale of the batch's panels: twice the 99.9th percentile of unflagged images' maps."""
    pool = frame[frame["is_anomaly"] == 0]
    pool = (pool if not pool.empty else frame).head(VMAX_SAMPLE)
    values = [np.load(map_file(staging, Sample(Path(p), p, "", None))).astype(np.float32).ravel()
              for p in pool["image_path"]]
    return float(np.quantile(np.concatenate(values), 0.999)) * 2 if values else 1.0


def write_panels(frame: pd.DataFrame, files: dict[str, InboxFile], staging: Path, detector: AnomalyDetector,
                 control: str, limit: int) -> list[str]:
    """Review panels of the flagged images, most anomalous first; returns their paths relative to staging."""
    flagged = frame[frame["is_anomaly"] == 1].sort_values("score", ascending=False).head(limit)
    if flagged.empty:
        return []
    vmax, written = _panel_vmax(frame, staging), []
    for row in flagged.itertuples():
        try:
            image = read_image(files[row.image_path].path, detector.spec.read_options)
        except ImageReadError as err:  # changed or removed since it was scored: the scores stand
            log.warning("no review panel for %s", err)
            continue
        anomaly_map = np.load(map_file(staging, Sample(Path(row.image_path), row.image_path, "", None)))
        decision = (f"q {row.q_value:.3g}" if control == "bh" else f"threshold {row.threshold:.4g}")
        lines = [row.image_path, f"score {row.score:.4g}  {decision}", f"p-value {row.p_value:.3g}  FLAGGED"]
        rel = f"panels/{row.image_path}.png"
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        review_panel(image, anomaly_map.astype(np.float32), vmax, lines).save(staging / rel)
        written.append(rel)
    return written


def judge_batch(files: list[InboxFile], model: InspectionModel, icfg, staging: Path, batch_id: str,
                batch_size: int, num_workers: int, csv_offset: int) -> dict:
    """Score `files` into `staging` and return the batch summary (also written as summary.json)."""
    started, now = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    detector, by_rel = model.detector, {f.rel_path: f for f in files}
    staging.mkdir(parents=True)
    errors = [{"image_path": f.rel_path, "reason": f.problem} for f in files if f.problem]
    samples = [Sample(f.path, f.rel_path, "unknown", None) for f in files if not f.problem]
    forward_seconds = 0.0
    frame = pd.DataFrame()
    if samples:
        t0 = time.perf_counter()
        frame, read_errors, _ = score_dataset(detector, samples, staging, batch_size, num_workers)
        forward_seconds = time.perf_counter() - t0
        errors += [{"image_path": e["image_path"], "reason": e["error"]} for e in read_errors]
    if not frame.empty:
        frame = apply_threshold(frame, detector)
        frame["is_anomaly"], frame["q_value"] = flag_batch(frame["score"].to_numpy(), frame["p_value"].to_numpy(),
                                                           detector.threshold_, icfg.control, icfg.fdr_q)
        extra = pd.DataFrame([_file_columns(by_rel[p]) for p in frame["image_path"]], index=frame.index)
        frame = pd.concat([frame, extra], axis=1).assign(batch_id=batch_id, model_version=model.version,
                                                         inspected_at=now)
        frame = frame[SCORE_COLUMNS]
    else:
        frame = pd.DataFrame(columns=SCORE_COLUMNS)
    error_frame = pd.DataFrame([{"batch_id": batch_id, **e, **_file_columns(by_rel[e["image_path"]])} for e in errors],
                               columns=ERROR_COLUMNS).astype({"sha256": "string", "reason": "string"})
    for f in files:
        if f.problem:  # decoding errors were already reported by score_dataset
            log.warning("cannot judge %s: %s", f.path, f.problem)
    _write_table(frame, staging, "scores")
    _write_table(error_frame, staging, "errors")
    panels = write_panels(frame, by_rel, staging, detector, icfg.control, icfg.max_panels)
    seconds = time.perf_counter() - started
    drift = score_drift(frame["score"].to_numpy(dtype=float), detector.calibration_scores_, icfg.drift_alpha,
                        icfg.drift_min_images)
    if drift["drifted"]:
        log.warning("batch %s: the scores drifted from the calibration scores (KS statistic %.3f, p = %.2g < %g): "
                    "check the camera, lighting and parts", batch_id, drift["ks_statistic"], drift["p_value"],
                    icfg.drift_alpha)
    summary = {
        "batch_id": batch_id, "created_at": now, "model_version": model.version, **model.provenance,
        "score": detector.spec.score, "control": icfg.control, "alpha": detector.spec.alpha,
        "fdr_q": icfg.fdr_q if icfg.control == "bh" else None, "threshold": detector.threshold_,
        "n_calibration": len(detector.calibration_scores_),
        "n_seen": len(files), "n_scored": len(frame), "n_flagged": int(frame["is_anomaly"].sum()),
        "n_errors": len(errors), "seconds": seconds,
        "images_per_second": len(frame) / seconds if seconds > 0 else None,
        "scoring_images_per_second": len(frame) / forward_seconds if forward_seconds > 0 else None,
        "drift": drift, "errors": errors, "flagged": frame.loc[frame["is_anomaly"] == 1, "image_path"].tolist(),
        "panels": panels, "csv_offset": csv_offset,
    }
    (staging / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary
