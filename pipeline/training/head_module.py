"""LightningModule that trains the learned anomaly map (models/head.py) on synthetic anomalies.

The VAE is trained first and frozen here: every training step turns a batch of normal training images into
synthetic anomalies (data/synthesis/), reconstructs them with the VAE's posterior mean, and fits the head's
per-pixel logits to the anomaly masks with the focal loss. Validation uses the *selection* images with
anomalies of a kind the head never trains on (leave-one-kind-out), drawn once with a fixed seed, so its
numbers say how the map carries over to defects it was not taught.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torchmetrics.classification import BinaryAUROC

from pipeline.data.synthesis import AnomalySynthesizer
from pipeline.data.synthesis.nuisance import NuisanceTransform
from pipeline.models.cvae import conditioned
from pipeline.models.head import AnomalyHead, focal_loss
from pipeline.models.two_level import restore
from pipeline.models.vae import ConvAutoencoder
from pipeline.training.optimizers import adam


@torch.no_grad()
def reconstruct(vae: ConvAutoencoder, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The reconstruction the map compares with, in [0, 1], (B, C, H, W): the two-level VAE's restoration, else the
    posterior-mean reconstruction; labels: categories (conditional VAE)."""
    with conditioned(vae, labels):
        mu, _ = vae.encode(x)
        return restore(vae, x, mu)  # no global decode where the local level restores


class HeadLightningModule(pl.LightningModule):
    def __init__(self, head: AnomalyHead, vae: ConvAutoencoder, synthesizer: AnomalySynthesizer, pool: torch.Tensor,
                 validation: tuple[torch.Tensor, ...], lr: float = 1e-3, focal_gamma: float = 2.0,
                 total_steps: int = 1000, seed: int = 0, nuisance: NuisanceTransform | None = None):
        super().__init__()
        self.head = head
        # Frozen and kept out of the module tree (a tuple is not registered): Lightning neither trains it nor
        # warns about a module left in eval mode; its batch norm keeps the normal images' statistics.
        self._vae = (vae.eval().requires_grad_(False),)
        self.synthesizer, self.pool = synthesizer, pool  # pool: (N, C, S, S) normal images the anomalies draw from
        self.nuisance = nuisance  # normal whole-image variation, shown with an empty mask
        self.save_hyperparameters(ignore=["head", "vae", "synthesizer", "pool", "validation", "nuisance"], logger=False)
        self.generator = torch.Generator().manual_seed(seed)
        self.pixel_auroc, self.image_auroc = BinaryAUROC(), BinaryAUROC()
        # The epoch's training loss and anomalous-pixel share, summed over its images on the device: logged once an
        # epoch (on_train_epoch_end) rather than through Lightning's per-step logging, which costs half a millisecond
        # a step of Python bookkeeping for the same two numbers.
        self._train_sums: torch.Tensor | None = None
        self._train_images = 0

    @property
    def vae(self) -> ConvAutoencoder:
        return self._vae[0]

    def on_fit_start(self) -> None:
        self.vae.to(self.device)

    def training_step(self, batch, batch_idx):
        x, labels = batch[0], (batch[1] if len(batch) > 1 else None)  # (B, C, S, S) normal training images
        x = x.cpu() if self.nuisance is None else self.nuisance(x.cpu(), self.generator)
        altered, masks, _ = self.synthesizer(x, self.pool, self.generator)
        altered, masks = altered.to(self.device), masks.to(self.device)
        logits = self.head(altered, reconstruct(self.vae, altered, labels))  # (B, 1, S, S)
        loss = focal_loss(logits, masks, self.hparams.focal_gamma)
        sums = torch.stack([loss.detach(), masks.mean()]) * x.shape[0]
        self._train_sums = sums if self._train_sums is None else self._train_sums + sums
        self._train_images += x.shape[0]
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train_images:
            means = self._train_sums / self._train_images
            self.log_dict({"head/train_loss": means[0], "head/anomalous_pixels": means[1]}, sync_dist=True)
        self._train_sums, self._train_images = None, 0

    def validation_step(self, batch, batch_idx):
        x, masks = batch[0], batch[1]  # (B, C, S, S) selection images, some with held-out-kind anomalies; (B, 1, S, S)
        probabilities = torch.sigmoid(self.head(x, reconstruct(self.vae, x, batch[2] if len(batch) > 2 else None)))
        self.log("head/val_loss", focal_loss(torch.logit(probabilities, 1e-6), masks, self.hparams.focal_gamma),
                 on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        self.pixel_auroc.update(probabilities.flatten(), masks.flatten().long())
        self.image_auroc.update(probabilities.flatten(1).amax(dim=1), masks.flatten(1).amax(dim=1).long())

    def on_validation_epoch_end(self) -> None:
        # torchmetrics gathers the states of every rank before computing: an AUROC, never an average of AUROCs.
        self.log_dict({"head/val_pixel_auroc": self.pixel_auroc.compute(),
                       "head/val_image_auroc": self.image_auroc.compute()}, prog_bar=True)
        self.pixel_auroc.reset()
        self.image_auroc.reset()

    def configure_optimizers(self):
        optimizer = adam(self.head.parameters(), self.hparams.lr)
        # One cycle over the fixed number of steps: a warm start, then a decay to a small rate, so the
        # last weights are the ones to keep and no checkpoint has to be chosen.
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr,
                                                       total_steps=self.hparams.total_steps, pct_start=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
