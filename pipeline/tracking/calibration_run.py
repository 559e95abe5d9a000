"""MLflow side of `calibrate`: a run (stage=calibrate) in the training experiment that says which images were
added and how the threshold moved, and the recalibrated detector as a new model version (not promoted)."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from pipeline.tracking.runs import log_detector_model
from pipeline.tracking.store import experiment_id


def log_calibration(cfg: DictConfig, client: MlflowClient, out_dir: Path, summary: dict, provenance: dict) -> dict:
    """Returns the run id and the registry info of the new version."""
    tags = {"stage": "calibrate", "dataset": cfg.data.name, "calibrated_from": provenance["model_source"],
            "threshold.method": "split conformal: the calibration images plus reviewed normal images of the audit sample",
            "threshold.alpha": str(summary["alpha"]), "threshold.score": summary["score"],
            "threshold.value": repr(summary["threshold"])}
    for key in ("model_name", "model_version", "model_run_id"):
        if provenance.get(key):
            tags[f"calibrated_from.{key}"] = str(provenance[key])
    run = client.create_run(experiment_id(client, cfg, cfg.tracking.train_experiment),
                            run_name=f"calibrate-{cfg.data.name}", tags=tags)
    run_id = run.info.run_id
    try:
        for key in ("threshold", "previous_threshold", "n_added", "n_calibration"):
            client.log_metric(run_id, key, float(summary[key]) if summary[key] != float("inf") else 1e30)
        (out_dir / "calibration_added.json").write_text(json.dumps(
            {k: summary[k] for k in ("added", "skipped", "from_runs", "n_ignored_not_audited")}, indent=1))
        client.log_artifact(run_id, str(out_dir / "calibration_added.json"))
        registered = cfg.tracking.registered_model if cfg.tracking.get("register", True) else None
        description = (f"Recalibrated by run `{run_id}` from `{provenance['model_source']}`: {summary['n_added']} reviewed "
                       f"normal images of the audit sample added to the calibration set (now {summary['n_calibration']}); "
                       f"threshold {summary['previous_threshold']:.6g} -> {summary['threshold']:.6g} at alpha = "
                       f"{summary['alpha']:g} (split conformal).")
        info = log_detector_model(client, run_id, out_dir / "detector", registered, description)
        client.set_tag(run_id, "has_detector", "true")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return {"run_id": run_id, **info}
