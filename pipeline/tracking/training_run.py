"""MLflow side of a training run: the Lightning logger, then what training produced (parameters, the
threshold and its guarantee, validation numbers, figures, the detector as a registered model version whose
description says how its threshold was calibrated and links its training run and the runs that used it).
Nothing here computes: the command hands over the fitted detector, the summary and the figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.loggers import MLFlowLogger

from pipeline.tracking.descriptions import version_description
from pipeline.tracking.registry import RUN_ID
from pipeline.tracking.runs import log_detector_model, log_metrics, log_params
from pipeline.tracking.store import experiment_id, open_store, redact_text, redact_uri, tracking_uri

UNABLE_TO_FLAG = "unable_to_flag"


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
    params = {k: redact_text(str(v)) for k, v in flat_config.items()}  # command_line may hold the tracking URI
    if "tracking.uri" in params and params["tracking.uri"] not in ("None", ""):
        params["tracking.uri"] = redact_uri(params["tracking.uri"])
    return params


def log_training(cfg: DictConfig, run_id: str, detector_dir: Path, summary: dict, figures_dir: Path,
                 flat_config: dict[str, object]) -> dict:
    """Log config, threshold, validation, figures and the model into the training run; returns registry info."""
    client = open_store(cfg)
    logged = client.get_run(run_id).data.params  # a resumed run has them already; MLflow refuses changes
    new = {}
    for key, value in _params(flat_config).items():
        if key not in logged:
            new[key] = value[:6000]
        elif logged[key] != value[:6000]:
            client.set_tag(run_id, f"resumed_with.{key}", value[:5000])
    log_params(client, run_id, new)
    threshold = summary["threshold"]
    sizes = {k: v for k, v in summary["sizes"].items() if isinstance(v, (int, float))}
    metrics = {"threshold": threshold if math.isfinite(threshold) else 1e30, **sizes,
               "train_seconds": summary["train_seconds"], "head_steps": summary["head_steps"],
               **{f"validation.{k}": v for k, v in summary["validation"].items() if isinstance(v, (int, float))}}
    log_metrics(client, run_id, metrics)
    guarantee = summary["guarantee"]
    tags = {"threshold.method": guarantee["method"], "threshold.alpha": str(guarantee["alpha"]),
            "threshold.score": summary["score"], "threshold.value": repr(threshold),
            "threshold.n_calibration": str(guarantee["n_calibration"]),
            "threshold.scheme": str(summary["sizes"].get("scheme", "split")),
            "threshold.status": "ok" if guarantee["can_flag"] else UNABLE_TO_FLAG}
    if not guarantee["can_flag"]:
        tags["threshold.problem"] = summary["shortfall"][:5000]
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.log_artifacts(run_id, str(figures_dir), artifact_path="figures")
    if summary["skipped_images"]:
        path = figures_dir.parent / "skipped_images.json"
        path.write_text(json.dumps(summary["skipped_images"], indent=1))
        client.log_artifact(run_id, str(path))
    registered = cfg.tracking.registered_model if cfg.tracking.get("register", True) else None
    info = log_detector_model(client, run_id, detector_dir, registered)
    if info.get("version"):  # the description links runs filtered by this version: written once it is known
        judged_in = {"scoring runs": experiment_id(client, cfg, cfg.tracking.score_experiment),
                     "inspection batches": experiment_id(client, cfg, cfg.inspect.experiment)}
        description = version_description(summary, run_id, client.get_run(run_id).info.experiment_id, judged_in,
                                          info["registered_model"], info["version"])
        client.update_model_version(info["registered_model"], info["version"], description=description)
    client.set_tag(run_id, "has_detector", "true")
    return info
