"""MLflow side of a training run: the Lightning logger, then the detector, threshold and figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from pytorch_lightning.loggers import MLFlowLogger

from pipeline.report import figures
from pipeline.scoring.detector import AnomalyDetector
from pipeline.tracking.registry import RUN_ID
from pipeline.tracking.runs import log_detector_model
from pipeline.tracking.store import experiment_id, open_store, redact_uri, tracking_uri


def make_logger(cfg: DictConfig, data_root: Path, run_id: str | None = None) -> MLFlowLogger:
    """Lightning's MLFlowLogger on our store; the experiment is created up front with an absolute
    artifact location, and the run is created now so that its id is known before `fit`. With
    `run_id` (a resumed training) the logger continues that run instead of starting another."""
    client = open_store(cfg)
    experiment_id(client, cfg, cfg.tracking.train_experiment)
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        run_id = None  # a checkpoint of a run that was not tracked: start a new run
    logger = MLFlowLogger(
        experiment_name=cfg.tracking.train_experiment, tracking_uri=tracking_uri(cfg),
        run_name=f"train-{cfg.data.name}-{cfg.model.kind}",
        tags={"data_root": str(data_root), "dataset": cfg.data.name, "model_kind": cfg.model.kind,
              "stage": "train"},
        save_dir=None, run_id=run_id)
    _ = logger.experiment, logger.run_id  # create the run now (rank 0 only under DDP)
    return logger


def _params(flat_config: dict[str, object]) -> dict[str, str]:
    params = {k: str(v) for k, v in flat_config.items()}
    if "tracking.uri" in params and params["tracking.uri"] not in ("None", ""):
        params["tracking.uri"] = redact_uri(params["tracking.uri"])
    return params


def log_results(cfg: DictConfig, run_id: str, detector: AnomalyDetector, datamodule, history: dict,
                summary: dict, out_dir: Path, flat_config: dict[str, object]) -> dict:
    """Log config, threshold, figures and the model into the training run; returns registry info."""
    client = open_store(cfg)
    logged = client.get_run(run_id).data.params  # a resumed run has them already; MLflow refuses changes
    for key, value in _params(flat_config).items():
        if key not in logged:
            client.log_param(run_id, key, value[:6000])
        elif logged[key] != value[:6000]:
            client.set_tag(run_id, f"resumed_with.{key}", value[:5000])
    spec = detector.spec
    calibration = detector.calibration_scores_
    client.log_metric(run_id, "threshold", float(detector.threshold_) if np.isfinite(detector.threshold_) else 1e30)
    for name, value in {"n_train": summary["n_train"], "n_calibration": summary["n_calibration"],
                        "train_seconds": summary["train_seconds"], "calibration_score_mean": float(calibration.mean()),
                        "calibration_score_max": float(calibration.max())}.items():
        client.log_metric(run_id, name, float(value))
    for key, value in {"threshold.method": f"{spec.threshold_method}: ceil((n+1)(1-alpha))-th smallest "
                       "held-out normal score", "threshold.alpha": str(spec.alpha), "threshold.score": spec.score,
                       "threshold.value": repr(detector.threshold_)}.items():
        client.set_tag(run_id, key, value)

    fig_dir = out_dir / "figures"
    figures.loss_curves(history, fig_dir / "loss_curves.png")
    shown = datamodule.val_images[:8]
    with torch.inference_mode():
        recon = detector.score_batch(shown)["reconstruction"].cpu().numpy()
    figures.image_grid([shown.numpy(), recon], ["input", "reconstruction"], fig_dir / "reconstructions.png")
    figures.score_histogram(calibration, None, detector.threshold_, fig_dir / "calibration_scores.png", spec.score)
    client.log_artifacts(run_id, str(fig_dir), artifact_path="figures")
    if summary["skipped_images"]:
        (out_dir / "skipped_images.json").write_text(json.dumps(summary["skipped_images"], indent=1))
        client.log_artifact(run_id, str(out_dir / "skipped_images.json"))

    registered = cfg.tracking.registered_model if cfg.tracking.get("register", True) else None
    info = log_detector_model(client, run_id, out_dir / "detector", registered)
    client.set_tag(run_id, "has_detector", "true")
    return info
