"""Fitting the two networks with Lightning: the VAE on the normal training images (early stopping on the
selection images), then the learned anomaly map on synthetic anomalies with the VAE frozen.

Each fit returns a `FitReport`; the networks are updated in place (the VAE gets its best checkpoint's
weights). Under DDP every rank runs both fits; only rank 0 goes on to select and calibrate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from pipeline.data.synthesis import AnomalySynthesizer
from pipeline.models.head import AnomalyHead
from pipeline.models.vae import ConvAutoencoder
from pipeline.training.callbacks import EpochHistory, ProgressBar, StopOnNonFiniteLoss
from pipeline.training.distributed import build_strategy, resolve_precision
from pipeline.training.head_module import HeadLightningModule
from pipeline.training.module import VAELightningModule
from pipeline.training.throughput import EpochThroughput


@dataclass
class FitReport:
    seconds: float
    epochs: int
    is_global_zero: bool
    world_size: int
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    best_epoch: int | None = None
    images_per_second: float | None = None


def build_trainer(trainer_cfg: DictConfig, callbacks: list[pl.Callback], logger, max_epochs: int,
                  min_epochs: int = 0, max_steps: int = -1) -> pl.Trainer:
    t = trainer_cfg
    return pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=build_strategy(t), num_nodes=t.num_nodes,
        precision=resolve_precision(t.precision, t.accelerator), max_epochs=max_epochs,
        min_epochs=min(min_epochs, max_epochs), max_steps=max_steps, log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        enable_progress_bar=False, callbacks=callbacks, logger=logger if logger is not None else False,
        enable_model_summary=False, num_sanity_val_steps=0,
        # Only where we place the checkpoints ourselves; Lightning's default would write into the working directory.
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))


def load_best_weights(net: torch.nn.Module, checkpoint_path: str, prefix: str = "net.") -> None:
    """Copy the network weights out of a Lightning checkpoint without unpickling arbitrary objects."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})


def fit_vae(net: ConvAutoencoder, model_cfg: DictConfig, datamodule: pl.LightningDataModule, trainer_cfg: DictConfig,
            checkpoint_dir: Path, logger=None, callbacks: list[pl.Callback] = (), resume: Path | None = None) -> FitReport:
    """Train the VAE (or AE) on datamodule's training images; `net` ends with the best checkpoint's weights
    (by the selection images' negative ELBO) on rank 0."""
    module = VAELightningModule(net, model_cfg.recon_loss, model_cfg.beta, model_cfg.kl_warmup_epochs, model_cfg.lr,
                                model_cfg.weight_decay, model_cfg.denoise.kind, model_cfg.denoise.level)
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val/loss", mode="min",
                                 save_top_k=1, save_last=True)
    history, throughput = EpochHistory(), EpochThroughput()
    trainer = build_trainer(trainer_cfg, [
        EarlyStopping(monitor="val/loss", mode="min", patience=trainer_cfg.early_stopping_patience), checkpoint,
        history, throughput, StopOnNonFiniteLoss(str(checkpoint_dir)),
        ProgressBar(f"training {model_cfg.kind}", "epoch", ("val/loss",), trainer_cfg.enable_progress_bar,
                    trainer_cfg.progress_every_percent),
        *callbacks], logger, trainer_cfg.max_epochs, trainer_cfg.min_epochs)
    started = time.perf_counter()
    net.train()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    report = FitReport(time.perf_counter() - started, trainer.current_epoch, trainer.is_global_zero,
                       trainer.world_size, history.history, _best_epoch(history), throughput.steady_rate())
    if trainer.is_global_zero:
        load_best_weights(net, checkpoint.best_model_path or checkpoint.last_model_path)
    return report


def head_synthesizers(synthesis_cfg: DictConfig) -> tuple[AnomalySynthesizer, AnomalySynthesizer]:
    """(the training synthesizer: every kind but the validation kind, the validation synthesizer: that kind only)."""
    params = {k: dict(v) for k, v in synthesis_cfg.params.items()}
    held_out = str(synthesis_cfg.validation_kind)
    kinds = tuple(k for k in synthesis_cfg.kinds if k != held_out)
    common = dict(params=params, visible_delta=synthesis_cfg.visible_delta, min_pixels=synthesis_cfg.min_pixels)
    return (AnomalySynthesizer(kinds, anomaly_share=synthesis_cfg.anomaly_share, **common),
            AnomalySynthesizer((held_out,), anomaly_share=synthesis_cfg.validation_share, **common))


def validation_set(synthesizer: AnomalySynthesizer, images: torch.Tensor, pool: torch.Tensor,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection images, a share of them with an anomaly of the validation kind, drawn once: (images, masks)."""
    altered, masks, _ = synthesizer(images, pool, torch.Generator().manual_seed(seed))
    return altered, masks


def _with_labels(tensors: tuple[torch.Tensor, ...], labels: torch.Tensor | None) -> TensorDataset:
    return TensorDataset(*tensors, *(() if labels is None else (labels,)))


def fit_head(head: AnomalyHead, vae: ConvAutoencoder, datamodule, head_cfg: DictConfig, trainer_cfg: DictConfig,
             seed: int, logger=None, callbacks: list[pl.Callback] = ()) -> FitReport:
    """Train the learned map for head_cfg.steps steps on synthetic anomalies of the training images;
    validate on the selection images with anomalies of the held-out kind."""
    train_images, train_labels = datamodule.train_images, getattr(datamodule, "train_labels", None)
    train_synth, validation_synth = head_synthesizers(head_cfg.synthesis)
    validation = validation_set(validation_synth, datamodule.selection_images, train_images, seed + 1)
    module = HeadLightningModule(head, vae, train_synth, train_images, validation, head_cfg.lr, head_cfg.focal_gamma,
                                 head_cfg.steps, seed)
    per_epoch = int(head_cfg.validate_every)  # steps between validations: one "epoch" of the sampler
    loader = DataLoader(_with_labels((train_images,), train_labels), batch_size=head_cfg.batch_size, drop_last=True,
                        sampler=RandomSampler(range(len(train_images)), replacement=True,
                                              num_samples=per_epoch * head_cfg.batch_size,
                                              generator=torch.Generator().manual_seed(seed)))
    validation_loader = DataLoader(_with_labels(validation, getattr(datamodule, "selection_labels", None)),
                                   batch_size=head_cfg.batch_size)
    epochs = -(-int(head_cfg.steps) // per_epoch)
    history = EpochHistory(prefixes=("head/",))
    trainer = build_trainer(trainer_cfg, [history, StopOnNonFiniteLoss("(the learned map keeps no checkpoints)"),
                                          ProgressBar("training the anomaly map", "step",
                                                      ("head/val_pixel_auroc",), trainer_cfg.enable_progress_bar,
                                                      trainer_cfg.progress_every_percent),
                                          *callbacks], logger, epochs, max_steps=int(head_cfg.steps))
    started = time.perf_counter()
    head.train()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=validation_loader)
    return FitReport(time.perf_counter() - started, trainer.current_epoch, trainer.is_global_zero, trainer.world_size,
                     history.history)


def _best_epoch(history: EpochHistory) -> int | None:
    values = history.history.get("val/loss", [])
    return min(values, key=lambda ev: ev[1])[0] if values else None
