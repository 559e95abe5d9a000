"""LightningModule that trains the local level of a two-level VAE (models/two_level.py) to *restore*.

The global level is trained first and frozen here. In each training step a share of the batch gets a synthetic
anomaly (data/synthesis/: the kinds the learned map trains on, never its held-out validation kind); the local
level encodes that copy and is scored on reconstructing the clean image: reconstruction NLL of the clean image +
w(epoch) * beta * KL of the local code (DRAEM's reconstructive network, with a variational code). Validation:
the same loss on the clean selection images, for early stopping.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from pipeline.data.synthesis import AnomalySynthesizer
from pipeline.data.synthesis.nuisance import NuisanceTransform
from pipeline.models.loss import kl_divergence, kl_weight, reconstruction_nll
from pipeline.models.two_level import local_logits
from pipeline.models.vae import ConvAutoencoder
from pipeline.training.optimizers import adam


class LocalLevelModule(pl.LightningModule):
    def __init__(self, net: ConvAutoencoder, synthesizer: AnomalySynthesizer | None, recon_loss: str = "bce",
                 beta: float = 0.01, kl_warmup_epochs: int = 10, lr: float = 1e-3, seed: int = 0,
                 nuisance: NuisanceTransform | None = None):
        super().__init__()
        self.net = net  # only net.local trains; the global level is frozen and stays in eval mode
        for name, parameter in net.named_parameters():  # before DDP wraps the module: it syncs only what trains
            parameter.requires_grad_(name.startswith("local."))
        self.synthesizer, self.nuisance = synthesizer, nuisance
        self.generator = torch.Generator().manual_seed(seed)
        self.save_hyperparameters(ignore=["net", "synthesizer", "nuisance"], logger=False)  # the config is logged once

    @property
    def local(self) -> torch.nn.Module:
        return self.net.local

    def on_train_epoch_start(self) -> None:
        self.net.eval()
        self.local.train()  # batch norm of the frozen global level keeps the normal images' statistics

    def losses(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch means of (the local level's reconstruction NLL of `target` from input x, the local code's KL)."""
        with torch.no_grad():
            mu, _ = self.net.encode(x)
        moments: list[torch.Tensor] = []
        logits = local_logits(self.net, x, mu, sample=True, moments=moments)
        return reconstruction_nll(logits, target, self.hparams.recon_loss).mean(), kl_divergence(*moments).mean()

    def training_step(self, batch, batch_idx):
        x = batch[0]  # (B, C, S, S) normal training images
        clean = x if self.nuisance is None else self.nuisance(x, self.generator)
        altered = clean
        if self.synthesizer is not None:
            # Drawn on the CPU with the module's own generator: the same anomalies on CPU and GPU.
            altered = self.synthesizer(clean.cpu(), x.cpu(), self.generator)[0].to(x.device)
        nll, kl = self.losses(altered, clean)
        loss = nll + kl_weight(self.current_epoch, self.hparams.beta, self.hparams.kl_warmup_epochs) * kl
        self.log_dict({"local/train_recon": nll, "local/train_kl": kl, "local/train_loss": loss}, on_step=False,
                      on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        nll, kl = self.losses(batch[0], batch[0])
        # sync_dist averages across ranks: right for a mean loss.
        self.log_dict({"local/val_recon": nll, "local/val_kl": kl, "local/val_loss": nll + self.hparams.beta * kl},
                      on_step=False, on_epoch=True, batch_size=batch[0].shape[0], sync_dist=True, prog_bar=True)

    def configure_optimizers(self):
        return adam(self.local.parameters(), self.hparams.lr)
