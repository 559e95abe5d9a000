"""LightningModule that trains a ConvVAE (or ConvAutoencoder) on normal images.

Loss = reconstruction NLL + w(epoch) * KL, with w growing linearly to beta over the warm-up epochs.
`val/loss` is the negative ELBO at the full beta (the objective itself), so early stopping and
checkpointing are not fooled by the warm-up raising the training loss.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from pipeline.models.loss import kl_divergence, kl_weight, reconstruction_nll
from pipeline.models.vae import ConvAutoencoder


class VAELightningModule(pl.LightningModule):
    def __init__(self, net: ConvAutoencoder, recon_loss: str = "bce", beta: float = 1.0,
                 kl_warmup_epochs: int = 10, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])

    def _losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch means of (reconstruction NLL, KL); the VAE samples z in training and validation alike."""
        mu, log_var = self.net.encode(x)
        if log_var is None:  # plain autoencoder
            return reconstruction_nll(self.net.decode(mu), x, self.hparams.recon_loss).mean(), x.new_zeros(())
        z = self.net.reparameterize(mu, log_var)
        recon = reconstruction_nll(self.net.decode(z), x, self.hparams.recon_loss).mean()
        return recon, kl_divergence(mu, log_var).mean()

    def training_step(self, batch, batch_idx):
        x, _ = batch  # (B, C, H, W), sample indices
        recon, kl = self._losses(x)
        weight = kl_weight(self.current_epoch, self.hparams.beta, self.hparams.kl_warmup_epochs)
        loss = recon + weight * kl
        self.log_dict({"train/recon": recon, "train/kl": kl, "train/loss": loss, "train/kl_weight": weight},
                      on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        recon, kl = self._losses(x)
        # sync_dist averages across ranks: right for a mean loss (never for quantiles or AUROC).
        self.log_dict({"val/recon": recon, "val/kl": kl, "val/loss": recon + self.hparams.beta * kl},
                      on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
