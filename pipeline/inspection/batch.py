"""Judge one batch of inbox files into a staging folder: scores, maps, the review set, summary.

Writes into `staging` (later renamed to batches/<batch id>/ by commit.publish):
    scores.csv, scores.parquet   one row per scored image (SCORE_COLUMNS)
    errors.csv, errors.parquet   one row per file that could not be judged, with the reason
    maps/<path>.npy              float16 anomaly map at the image's original resolution
    review/                      panels, thumbnails, records.json and index.html: the same review set as `score`
    summary.json                 counts, throughput, model, decision and its guarantee, drift check, errors
Nothing in the inbox is written.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pipeline.data.layout import Sample
from pipeline.detector import AnomalyDetector
from pipeline.detector import calibration as C
from pipeline.detector.checks import DriftSettings, check_drift
from pipeline.detector.files import decide_frame, score_files
from pipeline.inspection.inbox import InboxFile
from pipeline.report.review_page import write_review_page
from pipeline.report.review_set import audit_indices, build_review, write_records
from pipeline.scoring import scores as S

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["batch_id", "image_path", "score", "threshold", "p_value", "q_value", "is_anomaly", "defect_area",
                 "defect_regions", *S.BASE_SCORES, S.FUSED, "model_version", "inspected_at", "sha256", "file_size",
                 "file_mtime_ns"]
ERROR_COLUMNS = ["batch_id", "image_path", "reason", "sha256", "file_size", "file_mtime_ns"]


@dataclass
class InspectionModel:
    detector: AnomalyDetector
    version: str        # what the ledger records as the judge, e.g. 'fabric-vae/v3'
    provenance: dict    # model_source, model_name, model_version, model_alias, weights_sha256, unable_to_flag, ...


def new_batch_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _file_columns(file: InboxFile) -> dict:
    return {"sha256": file.sha256, "file_size": file.size, "file_mtime_ns": file.mtime_ns}


def _write_table(frame: pd.DataFrame, folder: Path, stem: str) -> None:
    frame.to_csv(folder / f"{stem}.csv", index=False)
    frame.to_parquet(folder / f"{stem}.parquet", index=False)


def batch_drift(detector: AnomalyDetector, frame: pd.DataFrame, icfg: DictConfig) -> dict:
    """The drift test (detector/checks.py) of the batch's image statistics against the calibration images'."""
    return check_drift(detector.spec, frame, DriftSettings.from_config(icfg))


def judge_batch(files: list[InboxFile], model: InspectionModel, cfg: DictConfig, staging: Path, batch_id: str) -> dict:
    """Score `files` into `staging` and return the batch summary (also written as summary.json)."""
    icfg, review = cfg.inspect, cfg.review
    started, now = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    detector, by_rel = model.detector, {f.rel_path: f for f in files}
    staging.mkdir(parents=True)
    errors = [{"image_path": f.rel_path, "reason": f.problem} for f in files if f.problem]
    for f in files:
        if f.problem:  # decoding errors are reported by score_files
            log.warning("cannot judge %s: %s", f.path, f.problem)
    samples = [Sample(f.real_path or f.path, f.rel_path, "unknown", None) for f in files if not f.problem]
    audit = audit_indices(len(samples), review.audit_size, zlib.crc32(batch_id.encode()))
    scored = score_files(detector, samples, staging, cfg.data.batch_size, cfg.data.num_workers, keep_top=icfg.max_panels,
                         keep_indices=audit, statistics=True)
    forward_seconds = time.perf_counter() - started
    errors += [{"image_path": e["image_path"], "reason": e["error"]} for e in scored.errors]
    frame = scored.frame
    if not frame.empty:
        frame = decide_frame(detector, frame, icfg.fdr_q if icfg.control == "bh" else None)
        extra = pd.DataFrame([_file_columns(by_rel[p]) for p in frame["image_path"]], index=frame.index)
        frame = pd.concat([frame, extra], axis=1).assign(batch_id=batch_id, model_version=model.version,
                                                         inspected_at=now)
    drift = batch_drift(detector, frame, icfg)
    if drift["drifted"]:
        log.warning("batch %s drifted from the calibration images: %s (check the camera, lighting and focus)",
                    batch_id, drift["reason"])
    table = frame[SCORE_COLUMNS] if not frame.empty else pd.DataFrame(columns=SCORE_COLUMNS)
    error_frame = pd.DataFrame([{"batch_id": batch_id, **e, **_file_columns(by_rel[e["image_path"]])} for e in errors],
                               columns=ERROR_COLUMNS).astype({"sha256": "string", "reason": "string"})
    _write_table(table, staging, "scores")
    _write_table(error_frame, staging, "errors")
    guarantees = list(C.guarantees(detector.spec).values())
    summary = {
        "batch_id": batch_id, "created_at": now, "model_version": model.version, **model.provenance,
        "score": detector.spec.score, "control": icfg.control, "alpha": detector.spec.alpha,
        "fdr_q": icfg.fdr_q if icfg.control == "bh" else None, "threshold": detector.threshold_,
        "false_alarm_control": (f"benjamini-hochberg q={icfg.fdr_q}" if icfg.control == "bh"
                                else f"per-image p <= alpha={detector.spec.alpha}"),
        "guarantee": guarantees[0]["method"], "guarantee_statement": guarantees[0]["promise"],
        "n_calibration": min(g["n_calibration"] for g in guarantees),
        "can_flag": all(g["can_flag"] for g in guarantees),
        "n_seen": len(files), "n_scored": len(table), "n_images": len(table), "n_flagged": int(table["is_anomaly"].sum()),
        "n_errors": len(errors), "scoring_images_per_second": len(table) / forward_seconds if len(table) else None,
        "drift": drift, "errors": errors, "flagged": table.loc[table["is_anomaly"] == 1, "image_path"].tolist(),
    }
    records = build_review(frame, scored.kept, audit, staging, detector.spec.pixel_threshold, icfg.max_panels,
                           review.top_when_none, review.tile_size, review.thumbnail_width) if not frame.empty else []
    write_records(staging, records)
    write_review_page(staging, records, summary, "inspect")
    summary["seconds"] = time.perf_counter() - started
    summary["images_per_second"] = len(table) / summary["seconds"] if summary["seconds"] > 0 else None
    (staging / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary
