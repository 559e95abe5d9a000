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
from pipeline.data.synthesis.nuisance import NuisanceTransform, fit_lighting
from pipeline.models.head import AnomalyHead
from pipeline.models.vae import ConvAutoencoder
from pipeline.training.callbacks import EpochHistory, ProgressBar, StopOnNonFiniteLoss
from pipeline.training.distributed import build_strategy, resolve_precision
from pipeline.training.head_module import HeadLightningModule
from pipeline.training.local_module import LocalLevelModule
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
    steps: int | None = None  # optimizer steps taken (the learned map's schedule)


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
            checkpoint_dir: Path, logger=None, callbacks: list[pl.Callback] = (), resume: Path | None = None,
            synthesizer: AnomalySynthesizer | None = None, seed: int = 0) -> FitReport:
    """Train the VAE (or AE) on datamodule's training images; `net` ends with the best checkpoint's weights
    (by the selection images' negative ELBO) on rank 0. synthesizer: the anomalies of model.denoise.kind=synthetic."""
    module = VAELightningModule(net, model_cfg.recon_loss, model_cfg.beta, model_cfg.kl_warmup_epochs, model_cfg.lr,
                                model_cfg.weight_decay, model_cfg.denoise.kind, model_cfg.denoise.level, synthesizer,
                                seed)
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
    local = getattr(net, "local", None)
    if local is not None:  # trained afterwards, if at all (fit_local); DDP syncs only what this fit trains
        local.requires_grad_(False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    if local is not None:
        local.requires_grad_(True)
    report = FitReport(time.perf_counter() - started, trainer.current_epoch, trainer.is_global_zero,
                       trainer.world_size, history.history, _best_epoch(history), throughput.steady_rate())
    if trainer.is_global_zero:
        load_best_weights(net, checkpoint.best_model_path or checkpoint.last_model_path)
    share_weights(trainer, net)
    return report


def share_weights(trainer: pl.Trainer, net: torch.nn.Module) -> None:
    """Every rank goes on with rank 0's weights (its best checkpoint), which may lie on rank 0's machine only."""
    if trainer.world_size > 1:
        net.load_state_dict(trainer.strategy.broadcast(net.state_dict() if trainer.is_global_zero else None))


@torch.no_grad()
def global_detail_ratio(net: ConvAutoencoder, images: torch.Tensor, batch_size: int = 64) -> float:
    """mean |global reconstruction - image| / mean |image - its own mean| over normal images (N, C, S, S): about 1
    when the global level draws a flat blur, small when it draws the part (the posterior-mean reconstruction)."""
    was_training, error, spread = net.training, 0.0, 0.0
    net.eval()
    device = next(net.parameters()).device
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        mu, _ = net.encode(x)
        error += float((torch.sigmoid(net.decode(mu)) - x).abs().sum())
        spread += float((x - x.mean(dim=(1, 2, 3), keepdim=True)).abs().sum())
    net.train(was_training)
    return error / max(spread, 1e-12)


def fit_local(net: ConvAutoencoder, model_cfg: DictConfig, datamodule: pl.LightningDataModule, trainer_cfg: DictConfig,
              checkpoint_dir: Path, synthesizer: AnomalySynthesizer, seed: int, nuisance: NuisanceTransform | None = None,
              logger=None) -> FitReport:
    """Train a two-level VAE's local level to restore (training/local_module.py), the global level frozen; `net.local`
    ends with the best checkpoint's weights (by the selection images' loss) on every rank."""
    module = LocalLevelModule(net, synthesizer, model_cfg.recon_loss, float(model_cfg.local.beta),
                              model_cfg.kl_warmup_epochs, model_cfg.lr, seed, nuisance)
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="local/val_loss", mode="min",
                                 save_top_k=1, save_last=False)
    history = EpochHistory(prefixes=("local/",))
    trainer = build_trainer(trainer_cfg, [
        EarlyStopping(monitor="local/val_loss", mode="min", patience=trainer_cfg.early_stopping_patience), checkpoint,
        history, StopOnNonFiniteLoss(str(checkpoint_dir)),
        ProgressBar("training the local level", "epoch", ("local/val_loss",), trainer_cfg.enable_progress_bar)],
        logger, trainer_cfg.max_epochs, trainer_cfg.min_epochs)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    if trainer.is_global_zero:
        load_best_weights(net, checkpoint.best_model_path or checkpoint.last_model_path)
    share_weights(trainer, net)
    net.requires_grad_(True)
    return FitReport(time.perf_counter() - started, trainer.current_epoch, trainer.is_global_zero, trainer.world_size,
                     history.history)


def head_synthesizers(synthesis_cfg: DictConfig) -> tuple[AnomalySynthesizer, AnomalySynthesizer]:
    """(the training synthesizer: every kind but the validation kind, the validation synthesizer: that kind only)."""
    params = {k: dict(v) for k, v in synthesis_cfg.params.items()}
    held_out = str(synthesis_cfg.validation_kind)
    kinds = tuple(k for k in synthesis_cfg.kinds if k != held_out)
    common = dict(params=params, visible_delta=synthesis_cfg.visible_delta, min_pixels=synthesis_cfg.min_pixels)
    return (AnomalySynthesizer(kinds, anomaly_share=synthesis_cfg.anomaly_share, **common),
            AnomalySynthesizer((held_out,), anomaly_share=synthesis_cfg.validation_share, **common))


def nuisance_transform(synthesis_cfg: DictConfig, train_images: torch.Tensor) -> NuisanceTransform | None:
    """The normal variation the networks are shown as normal (conf head.synthesis.nuisance), its lighting bounds
    from the training images; None when its share is 0."""
    n = synthesis_cfg.get("nuisance")
    if n is None or float(n.share) <= 0:
        return None
    gain, offset = fit_lighting(train_images) if n.lighting else (0.0, 0.0)
    return NuisanceTransform(float(n.share), float(n.shift), float(n.rotation_degrees), float(n.scale), gain, offset)


def validation_set(synthesizer: AnomalySynthesizer, images: torch.Tensor, pool: torch.Tensor,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Selection images, a share of them with an anomaly of the validation kind, drawn once: (images, masks)."""
    altered, masks, _ = synthesizer(images, pool, torch.Generator().manual_seed(seed))
    return altered, masks


def _with_labels(tensors: tuple[torch.Tensor, ...], labels: torch.Tensor | None) -> TensorDataset:
    return TensorDataset(*tensors, *(() if labels is None else (labels,)))


MIN_SHORTENED_HEAD_STEPS = 20  # a shortened schedule keeps its one-cycle warm-up and a few validations


def head_steps(head_cfg: DictConfig, reconstruction: str | None) -> int:
    """The learned map's optimizer steps: `head.steps`, or `head.global_steps_share` of them (at least 20, never more)
    where the two-level VAE's global level draws the part and the map compares with it (`reconstruction` "global")."""
    steps = int(head_cfg.steps)
    if reconstruction != "global":
        return steps
    return min(steps, max(round(steps * float(head_cfg.global_steps_share)), MIN_SHORTENED_HEAD_STEPS))


def fit_head(head: AnomalyHead, vae: ConvAutoencoder, datamodule, head_cfg: DictConfig, trainer_cfg: DictConfig,
             seed: int, logger=None, callbacks: list[pl.Callback] = (), nuisance: NuisanceTransform | None = None,
             steps: int | None = None) -> FitReport:
    """Train the learned map for `steps` (default head_cfg.steps) steps on synthetic anomalies of the training images
    (a share of them changed as a whole first, by `nuisance`, as normal); validate on the selection images with
    anomalies of the held-out kind."""
    steps = int(head_cfg.steps) if steps is None else int(steps)
    train_images, train_labels = datamodule.train_images, getattr(datamodule, "train_labels", None)
    train_synth, validation_synth = head_synthesizers(head_cfg.synthesis)
    validation = validation_set(validation_synth, datamodule.selection_images, train_images, seed + 1)
    module = HeadLightningModule(head, vae, train_synth, train_images, validation, head_cfg.lr, head_cfg.focal_gamma,
                                 steps, seed, nuisance)
    per_epoch = int(head_cfg.validate_every)  # steps between validations: one "epoch" of the sampler
    loader = DataLoader(_with_labels((train_images,), train_labels), batch_size=head_cfg.batch_size, drop_last=True,
                        sampler=RandomSampler(range(len(train_images)), replacement=True,
                                              num_samples=per_epoch * head_cfg.batch_size,
                                              generator=torch.Generator().manual_seed(seed)))
    validation_loader = DataLoader(_with_labels(validation, getattr(datamodule, "selection_labels", None)),
                                   batch_size=head_cfg.batch_size)
    epochs = -(-steps // per_epoch)
    history = EpochHistory(prefixes=("head/",))
    trainer = build_trainer(trainer_cfg, [history, StopOnNonFiniteLoss("(the learned map keeps no checkpoints)"),
                                          ProgressBar("training the anomaly map", "step",
                                                      ("head/val_pixel_auroc",), trainer_cfg.enable_progress_bar,
                                                      trainer_cfg.progress_every_percent),
                                          *callbacks], logger, epochs, max_steps=steps)
    started = time.perf_counter()
    head.train()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=validation_loader)
    return FitReport(time.perf_counter() - started, trainer.current_epoch, trainer.is_global_zero, trainer.world_size,
                     history.history, steps=trainer.global_step)


def _best_epoch(history: EpochHistory) -> int | None:
    values = history.history.get("val/loss", [])
    return min(values, key=lambda ev: ev[1])[0] if values else None
