"""LightningModule that trains a ConvVAE (or ConvAutoencoder) on normal images.

Loss = reconstruction NLL + w(epoch) * KL, with w growing linearly to beta over the warm-up epochs.
`val/loss` is the negative ELBO at the full beta (the objective itself), so early stopping and
checkpointing are not fooled by the warm-up raising the training loss.

Denoising (`denoise_kind` gaussian | mask | synthetic): in training steps only, the network encodes a corrupted
copy of the batch and is scored on reconstructing the clean batch; validation sees clean inputs. `synthetic`
corrupts with the learned map's training anomalies (data/synthesis/, the `synthesizer` given): the VAE learns to
restore the part, as the local level does (DRAEM's reconstructive network).
A conditional network (models/cvae.py) gets the category labels, the third element of each batch.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from pipeline.data.synthesis import AnomalySynthesizer
from pipeline.models.corruption import CORRUPTIONS, corrupt
from pipeline.models.loss import kl_divergence, kl_weight, reconstruction_nll
from pipeline.models.vae import ConvAutoencoder
from pipeline.training.optimizers import adam


class VAELightningModule(pl.LightningModule):
    def __init__(self, net: ConvAutoencoder, recon_loss: str = "bce", beta: float = 1.0,
                 kl_warmup_epochs: int = 10, lr: float = 1e-3, weight_decay: float = 0.0,
                 denoise_kind: str = "none", denoise_level: float = 0.0,
                 synthesizer: AnomalySynthesizer | None = None, seed: int = 0):
        super().__init__()
        if denoise_kind not in (*CORRUPTIONS, "synthetic"):  # before any training, with every kind there is
            raise ValueError(f"model.denoise.kind must be one of {(*CORRUPTIONS, 'synthetic')}, got {denoise_kind!r}")
        if (denoise_kind == "synthetic") != (synthesizer is not None):
            raise ValueError("model.denoise.kind=synthetic corrupts with the anomaly synthesizer (head.synthesis), and "
                             "only it does")
        self.net = net
        self.synthesizer = synthesizer
        self.generator = torch.Generator().manual_seed(seed)
        # the seed is the run's (logged with the config); a cross-conformal member's own would clash with it
        self.save_hyperparameters(ignore=["net", "synthesizer", "seed"])

    def _losses(self, x: torch.Tensor, target: torch.Tensor | None = None,
                c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch means of (reconstruction NLL of `target` (default x), KL); the VAE samples z in
        training and validation alike. c: (B,) category labels for a conditional network."""
        target = x if target is None else target
        cond = () if c is None else (c,)
        mu, log_var = self.net.encode(x, *cond)
        if log_var is None:  # plain autoencoder; a VQ-VAE adds its codebook and commitment losses
            extra = self.net.quantization_loss(mu) if hasattr(self.net, "quantization_loss") else x.new_zeros(())
            return reconstruction_nll(self.net.decode(mu, *cond), target, self.hparams.recon_loss).mean() + extra, \
                x.new_zeros(())
        z = self.net.reparameterize(mu, log_var)
        recon = reconstruction_nll(self.net.decode(z, *cond), target, self.hparams.recon_loss).mean()
        return recon, kl_divergence(mu, log_var).mean()

    @staticmethod
    def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images (B, C, H, W), category labels (B,) or None): batches are (images, indices[, labels])."""
        return batch[0], (batch[2] if len(batch) > 2 else None)

    def training_step(self, batch, batch_idx):
        x, c = self._unpack(batch)
        if self.synthesizer is not None:  # drawn on the CPU with the module's own generator: the same on CPU and GPU
            corrupted = self.synthesizer(x.cpu(), x.cpu(), self.generator)[0].to(x.device)
        else:
            corrupted = corrupt(x, self.hparams.denoise_kind, self.hparams.denoise_level)
        recon, kl = self._losses(corrupted, x, c)
        weight = kl_weight(self.current_epoch, self.hparams.beta, self.hparams.kl_warmup_epochs)
        loss = recon + weight * kl
        self.log_dict({"train/recon": recon, "train/kl": kl, "train/loss": loss, "train/kl_weight": weight},
                      on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, c = self._unpack(batch)
        recon, kl = self._losses(x, c=c)
        # sync_dist averages across ranks: right for a mean loss (never for quantiles or AUROC).
        self.log_dict({"val/recon": recon, "val/kl": kl, "val/loss": recon + self.hparams.beta * kl},
                      on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True, prog_bar=True)

    def configure_optimizers(self):
        return adam(self.net.parameters(), self.hparams.lr, self.hparams.weight_decay)
