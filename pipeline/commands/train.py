"""`python -m pipeline train`: assemble the data, the detector, the logger and the callbacks from the config,
fit the detector (detector/fitting.py), save it, and hand the results to the report and to MLflow.

This file only assembles; the learning is in training/, the decision in detector/, MLflow in tracking/.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from pipeline.config import to_flat_dict
from pipeline.data.builtin import ensure_dataset
from pipeline.data.conditional import build_datamodule
from pipeline.detector import AnomalyDetector
from pipeline.detector import calibration as C
from pipeline.report.latent_report import write_report
from pipeline.report.training import training_figures
from pipeline.tracking import training_run
from pipeline.tracking.report_run import log_latent_report
from pipeline.tracking.system_metrics import DistributedRunInfo
from pipeline.training.distributed import launch_rank

log = logging.getLogger(__name__)


def announce_unable_to_flag(message: str) -> None:
    """Loud on purpose: a detector that can never flag looks like a clean line."""
    banner = "!" * 100
    log.error("\n%s\nTHE THRESHOLD CANNOT FLAG ANYTHING AT THE REQUESTED ALPHA\n%s\n%s", banner, message, banner)


def run_train(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> dict:
    """Train, select, calibrate and log one detector; returns a summary (run id, threshold, paths).
    `extra_callbacks` ride along in the VAE's Trainer (the benchmark times epochs with one)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # a mistyped checkpoint fails at once, before any data is generated or read
    resume = Path(cfg.train.resume).expanduser().resolve() if cfg.train.resume else None
    resumed_run = resumed_run_id(resume) if resume is not None else None
    root = ensure_dataset(cfg.data, cfg.seed)
    datamodule = build_datamodule(cfg, root)
    datamodule.setup("fit")  # every rank reads and splits the images itself (deterministic from the seed)
    shortfall = datamodule.sizes.shortfall()
    # Only rank 0 may create the MLflow run: under DDP this function also runs in every other rank.
    rank = launch_rank(cfg.trainer)
    if shortfall and rank == 0:
        announce_unable_to_flag(shortfall)
    sizes = datamodule.sizes
    if sizes.scheme == "cross" and datamodule.split.scheme == "auto" and rank == 0:  # one category: its SplitSettings
        n, split = sizes.n_calibration, datamodule.split  # the cross scheme calibrates on every normal image
        log.info("%d normal images: %s, so %d detectors train, every image calibrating the one that did not train on "
                 "it (about %d times one detector's training; data.split.scheme=split for one detector)", n,
                 f"fewer than data.split.cross_below={split.cross_below}" if split.small_set(n)
                 else "too few for one detector to flag at alpha", sizes.n_members, sizes.n_members)
    logger = (training_run.make_logger(cfg, root, run_id=resumed_run)
              if cfg.tracking.enabled and rank == 0 else None)
    run_id = logger.run_id if logger is not None else resumed_run or time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(cfg.output_root) / "train" / cfg.data.name / str(run_id)
    detector = AnomalyDetector.from_config(cfg, datamodule.read_options, getattr(datamodule, "categories", None),
                                           n_members=datamodule.sizes.n_members)
    callbacks = [DistributedRunInfo(cfg, logger.run_id if logger else None), *(extra_callbacks or [])]
    detector.fit(datamodule, cfg, out_dir / "checkpoints", logger, callbacks, resume)
    fitted = detector.fit_result_
    if not fitted.is_global_zero:
        return {}
    detector.spec.extra.update({"data_root": str(root), "run_id": str(run_id), "best_epoch": fitted.vae.best_epoch})
    detector_dir = detector.save(out_dir / "detector")
    guarantee = list(C.guarantees(detector.spec).values())[0] if not detector.spec.categories else \
        min(C.guarantees(detector.spec).values(), key=lambda g: g["n_calibration"])
    history = {**fitted.vae.history, **(fitted.local.history if fitted.local else {}),
               **(fitted.head.history if fitted.head else {})}
    local_seconds = fitted.local.seconds if fitted.local else 0.0
    summary = {"run_id": run_id, "data_root": str(root), "detector_dir": str(detector_dir),
               "threshold": detector.threshold_, "score": detector.spec.score, "guarantee": guarantee,
               "shortfall": shortfall, "validation": detector.spec.validation,
               "sizes": {**{k: detector.spec.extra[k] for k in ("n_train", "n_selection", "n_calibration")},
                         "scheme": detector.spec.scheme, "n_members": max(1, len(detector.members))},
               "train_seconds": fitted.vae.seconds + local_seconds + (fitted.head.seconds if fitted.head else 0.0),
               "vae_seconds": fitted.vae.seconds, "local_seconds": local_seconds,
               "head_seconds": fitted.head.seconds if fitted.head else 0.0,
               "head_steps": fitted.head.steps if fitted.head else 0, "reconstruction": detector.spec.reconstruction,
               "epochs": fitted.vae.epochs, "world_size": fitted.vae.world_size,
               "train_images_per_second": fitted.vae.images_per_second,
               "skipped_images": [str(e) for e in datamodule.skipped]}
    figures = training_figures(detector, datamodule, history, cfg.head.synthesis, out_dir / "figures", int(cfg.seed))
    if logger is not None:
        summary.update(training_run.log_training(cfg, logger.run_id, detector_dir, summary, figures[0].parent,
                                                 to_flat_dict(cfg)))
    if cfg.report.enabled:
        summary["report"] = write_report(cfg, detector, datamodule, root, out_dir / "report")
        if logger is not None:
            log_latent_report(cfg, logger.run_id, out_dir / "report", summary["report"])
    return summary


def resumed_run_id(checkpoint: Path) -> str:
    """The run a checkpoint belongs to: our checkpoints live in <output_root>/train/<dataset>/<run id>/checkpoints/."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"train.resume={checkpoint}: no such checkpoint file")
    if checkpoint.parent.name.startswith("member") and checkpoint.parent.parent.name == "checkpoints":
        raise ValueError(f"train.resume={checkpoint} is a member's checkpoint: train.resume cannot continue a "
                         "cross-conformal training (data.split.scheme=cross); train again")
    if checkpoint.parent.name != "checkpoints":
        raise ValueError(f"train.resume={checkpoint} is not in a run's checkpoints/ folder; cannot tell which run it continues")
    return checkpoint.parent.parent.name
