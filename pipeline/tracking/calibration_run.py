"""MLflow side of `calibrate`: a run (stage=calibrate) in the training experiment that says which
images were added and how the threshold moved, and the recalibrated detector as a new model version."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from pipeline.scoring.detector import AnomalyDetector
from pipeline.tracking.runs import log_detector_model
from pipeline.tracking.store import experiment_id


def log_calibration(cfg: DictConfig, client: MlflowClient, detector: AnomalyDetector, out_dir: Path, summary: dict,
                    provenance: dict, verdict_sources: pd.DataFrame, data_root: str) -> dict:
    """Returns the registry info of the new version (registered_model, version, model_uri, weights_sha256)."""
    tags = {"stage": "calibrate", "data_root": data_root, "dataset": cfg.data.name,
            "model_kind": detector.spec.model_kind, "calibrated_from": provenance["model_source"],
            "threshold.method": f"{detector.spec.threshold_method}: held-out normal scores plus reviewed false alarms",
            "threshold.alpha": str(detector.spec.alpha), "threshold.score": detector.spec.score,
            "threshold.value": repr(detector.threshold_)}
    for key in ("model_name", "model_version", "model_run_id"):
        if key in provenance:
            tags[f"calibrated_from.{key}"] = str(provenance[key])
    run = client.create_run(experiment_id(client, cfg, cfg.tracking.train_experiment),
                            run_name=f"calibrate-{cfg.data.name}", tags=tags)
    run_id = run.info.run_id
    try:
        for key in ("threshold", "previous_threshold", "n_added", "n_calibration"):
            client.log_metric(run_id, key, float(summary[key]))
        (out_dir / "calibration_added.json").write_text(json.dumps(
            {"added": summary["added"], "skipped": summary["skipped"],
             "from_runs": sorted(set(verdict_sources["run_id"]))}, indent=1))
        client.log_artifact(run_id, str(out_dir / "calibration_added.json"))
        registered = cfg.tracking.registered_model if cfg.tracking.get("register", True) else None
        info = log_detector_model(client, run_id, out_dir / "detector", registered)
        client.set_tag(run_id, "has_detector", "true")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return {"run_id": run_id, **info}
