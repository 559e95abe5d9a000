"""MLflow side of a scoring run: the model used, metrics, the scores table and the flagged images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.scoring.detector import AnomalyDetector
from pipeline.tracking.review_log import log_flagged
from pipeline.tracking.runs import start_run
from pipeline.tracking.store import open_store, redact_uri, tracking_uri


def log_scoring_run(cfg: DictConfig, out_dir: Path, detector: AnomalyDetector, provenance: dict, metrics: dict,
                    frame: pd.DataFrame, overlays: list[Path], data_root: str,
                    flagged: pd.DataFrame | None = None) -> str:
    """One run in the scoring experiment; returns its id."""
    tags = {"stage": "score", "data_root": data_root, "dataset": cfg.data.name,
            "model_source": provenance["model_source"], "tracking_uri": redact_uri(tracking_uri(cfg))}
    if "model_run_id" in provenance:
        tags["model_run_id"] = provenance["model_run_id"]
    for key in ("model_name", "model_version"):  # which registered version judged these parts
        if key in provenance:
            tags[key] = str(provenance[key])
    client, run_id = start_run(cfg, cfg.tracking.score_experiment, f"score-{cfg.data.name}", tags)
    try:
        for key, value in {"score": detector.spec.score, "alpha": detector.spec.alpha,
                           "threshold": detector.threshold_, "model_source": provenance["model_source"],
                           "n_calibration": len(detector.calibration_scores_)}.items():
            client.log_param(run_id, key, str(value))
        client.set_tag(run_id, "weights_sha256", provenance["weights_sha256"])
        _log_metrics(client, run_id, out_dir, metrics)
        client.log_artifact(run_id, str(out_dir / "errors.csv"))
        if overlays:  # one upload for the folder, not one call per image
            client.log_artifacts(run_id, str(out_dir / "overlays"), artifact_path="overlays")
        if flagged is not None:
            log_flagged(client, run_id, flagged, int(metrics.get("n_flagged", len(flagged))))
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def _log_metrics(client, run_id: str, out_dir: Path, metrics: dict) -> None:
    """Numeric metrics (per defect type as '<type>.<metric>'), the tables and the figures."""
    values = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for defect_type, entry in metrics.get("per_defect_type", {}).items():
        values.update({f"{defect_type}.{k}": v for k, v in entry.items() if v is not None})
    for key, value in values.items():
        if value is not None and np.isfinite(value):
            client.log_metric(run_id, key, float(value))
    for name in ("scores.csv", "metrics.json"):
        client.log_artifact(run_id, str(out_dir / name))
    if (out_dir / "figures").is_dir():
        client.log_artifacts(run_id, str(out_dir / "figures"), artifact_path="figures")


def log_evaluation(cfg: DictConfig, run_id: str, out_dir: Path, metrics: dict) -> None:
    """Add a re-evaluation's metrics and figures to an existing scoring run."""
    client = open_store(cfg)
    _log_metrics(client, run_id, out_dir, metrics)
