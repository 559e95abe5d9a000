"""`python -m pipeline train`: assemble data, network, LightningModule, logger and Trainer from the
config, fit, then calibrate the threshold on the held-out normal images and log the detector.

This file only assembles; the learning is in module.py, the scores in scoring/, MLflow in tracking/.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from pipeline.config import to_flat_dict
from pipeline.data.builtin import ensure_dataset
from pipeline.data.datamodule import InspectionDataModule
from pipeline.data.images import ReadOptions
from pipeline.models.cvae import conditioned
from pipeline.models.factory import build_network
from pipeline.scoring.detector import AnomalyDetector, DetectorSpec
from pipeline.scoring.scores import SCORE_NAMES
from pipeline.training.callbacks import EpochHistory, StopOnNonFiniteLoss
from pipeline.training.distributed import (DistributedRunInfo, build_strategy, launch_rank,
                                           resolve_precision)
from pipeline.training.module import VAELightningModule
from pipeline.training.throughput import EpochThroughput

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig, root: Path) -> InspectionDataModule:
    options = ReadOptions(channels=cfg.data.channels, max_pixels=cfg.data.max_image_pixels,
                          strict_channels=cfg.data.strict_channels)
    if cfg.data.get("categories"):  # several categories (data=builtin_all): labelled, for model=cvae
        from pipeline.data.conditional import ConditionalDataModule, category_roots

        return ConditionalDataModule(category_roots(cfg.data, cfg.seed), cfg.data.image_size, options,
                                     cfg.data.val_fraction, cfg.data.batch_size, cfg.data.num_workers, cfg.seed,
                                     strict_size=cfg.data.strict_size)
    return InspectionDataModule(root, cfg.data.image_size, options, cfg.data.val_fraction, cfg.data.batch_size,
                                cfg.data.num_workers, cfg.seed, strict_size=cfg.data.strict_size)


def build_spec(cfg: DictConfig, datamodule: InspectionDataModule) -> DetectorSpec:
    options = datamodule.read_options
    return DetectorSpec(
        model_kind=cfg.model.kind, in_channels=cfg.data.channels, image_size=cfg.data.image_size,
        latent_dim=cfg.model.latent_dim, hidden_channels=list(cfg.model.hidden_channels),
        latent_layout=cfg.model.latent_layout, recon_loss=cfg.model.recon_loss, score=cfg.score.score, mc_samples=cfg.score.mc_samples,
        map_kind=cfg.score.map, map_sigma=cfg.score.map_sigma, map_std_floor=cfg.score.map_std_floor,
        balanced_powers=dict(cfg.score.balanced_powers), topk_fraction=cfg.score.topk_fraction,
        projection=dict(cfg.score.projection), pixel_quantile=cfg.score.pixel_quantile,
        threshold_method=cfg.score.threshold_method, manual_threshold=cfg.score.manual_threshold,
        seed=cfg.seed, max_image_pixels=options.max_pixels,
        strict_channels=options.strict_channels,
        expected_size=list(options.expected_size) if options.expected_size else None, alpha=cfg.score.alpha,
        categories=list(datamodule.categories) if hasattr(datamodule, "categories") else None)


def score_images(detector: AnomalyDetector, images: torch.Tensor, batch_size: int,
                 labels: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Every per-sample score (N,) and the smoothed maps ('map', (N, S, S)) of in-memory images (N, C, S, S);
    `labels` (N,): the category of each image for a conditional network."""
    collected: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        with conditioned(detector.net, None if labels is None else labels[start:start + batch_size]):
            out = detector.score_batch(images[start:start + batch_size])
        for name in (*SCORE_NAMES, "map"):
            collected.setdefault(name, []).append(out[name].cpu())
    return {name: torch.cat(parts).numpy() for name, parts in collected.items()}


def load_best_weights(net: torch.nn.Module, checkpoint_path: str) -> None:
    """Copy the network weights out of a Lightning checkpoint without unpickling arbitrary objects."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], logger) -> pl.Trainer:
    t = cfg.trainer
    return pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=build_strategy(t), num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator),
        max_epochs=t.max_epochs, min_epochs=min(t.min_epochs, t.max_epochs),
        log_every_n_steps=t.log_every_n_steps, limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches, enable_progress_bar=t.enable_progress_bar,
        callbacks=callbacks, logger=logger if logger is not None else False, enable_model_summary=False,
        num_sanity_val_steps=0)


def run_train(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> dict:
    """Train, calibrate and log one detector; returns a summary (run id, threshold, paths).
    `extra_callbacks` ride along in the Trainer (the benchmark times epochs with one)."""
    from pipeline.tracking import training_run

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    root = ensure_dataset(cfg.data, cfg.seed)
    datamodule = build_datamodule(cfg, root)
    net = build_network(cfg.model.kind, cfg.data.channels, cfg.data.image_size, cfg.model.latent_dim,
                        cfg.model.hidden_channels, cfg.model.latent_layout,
                        n_classes=len(cfg.data.get("categories") or []))
    module = VAELightningModule(net, cfg.model.recon_loss, cfg.model.beta, cfg.model.kl_warmup_epochs,
                                cfg.model.lr, cfg.model.weight_decay, cfg.model.denoise.kind, cfg.model.denoise.level)
    # Only rank 0 may create the MLflow run: under DDP this function also runs in every other rank
    # (Lightning re-runs the command, or torchrun/srun started it), before any process group exists.
    rank = launch_rank(cfg.trainer)
    resume = Path(cfg.train.resume).expanduser().resolve() if cfg.train.resume else None
    resumed_run = resumed_run_id(resume) if resume is not None else None
    logger = (training_run.make_logger(cfg, root, run_id=resumed_run)
              if cfg.tracking.enabled and rank == 0 else None)
    run_id = logger.run_id if logger is not None else resumed_run or time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(cfg.output_root) / "train" / cfg.data.name / str(run_id)
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val/loss",
                                 mode="min", save_top_k=1, save_last=True)
    history = EpochHistory()
    throughput = EpochThroughput()
    callbacks = [EarlyStopping(monitor="val/loss", mode="min", patience=cfg.trainer.early_stopping_patience),
                 checkpoint, history, throughput, DistributedRunInfo(cfg, logger.run_id if logger else None),
                 StopOnNonFiniteLoss(str(out_dir / "checkpoints")), *(extra_callbacks or [])]
    trainer = build_trainer(cfg, callbacks, logger)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    train_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return {}

    # Calibrate on the held-out normal validation images, in this one process and on the complete
    # split, so the threshold never depends on how a distributed sampler sharded or padded it.
    load_best_weights(net, checkpoint.best_model_path or checkpoint.last_model_path)
    detector = AnomalyDetector(net.cpu(), build_spec(cfg, datamodule))
    val_labels = getattr(datamodule, "val_labels", None)  # (N,) categories, conditional models only
    detector.fit_map_statistics(datamodule.train_images, cfg.data.batch_size, getattr(datamodule, "train_labels", None))
    calibration = score_images(detector, datamodule.val_images, cfg.data.batch_size, val_labels)
    normal_maps = calibration.pop("map")
    threshold = detector.calibrate(calibration, normal_maps=normal_maps)
    detector.spec.extra = {"data_root": str(root), "run_id": str(run_id), "n_train": len(datamodule.train_samples),
                           "n_calibration": len(datamodule.val_samples), "best_epoch": _best_epoch(history)}
    detector_dir = detector.save(out_dir / "detector")
    summary = {"run_id": run_id, "threshold": threshold, "detector_dir": str(detector_dir),
               "train_seconds": train_seconds, "epochs": trainer.current_epoch,
               "n_train": len(datamodule.train_samples), "n_calibration": len(datamodule.val_samples),
               "skipped_images": [str(e) for e in datamodule.skipped],
               "world_size": trainer.world_size, "train_images_per_second": throughput.steady_rate()}
    if logger is not None:
        with conditioned(detector.net, None if val_labels is None else val_labels[:8]):  # the 8 shown images
            summary.update(training_run.log_results(cfg, logger.run_id, detector, datamodule, history.history,
                                                    summary, out_dir, to_flat_dict(cfg)))
    if cfg.report.enabled:
        from pipeline.report.run import write_report

        summary["report"] = write_report(cfg, detector, datamodule, root, out_dir / "report",
                                         logger.run_id if logger is not None else None)
    return summary


def resumed_run_id(checkpoint: Path) -> str:
    """The run a checkpoint belongs to: our checkpoints live in <output_root>/train/<dataset>/<run id>/checkpoints/."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"train.resume={checkpoint}: no such checkpoint file")
    if checkpoint.parent.name != "checkpoints":
        raise ValueError(f"train.resume={checkpoint} is not in a run's checkpoints/ folder; cannot tell which run it continues")
    return checkpoint.parent.parent.name


def _best_epoch(history: EpochHistory) -> int | None:
    values = history.history.get("val/loss", [])
    return min(values, key=lambda ev: ev[1])[0] if values else None
