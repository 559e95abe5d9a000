"""The ELBO's pieces as pure functions over tensors: per-sample values, shape (B,)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RECON_LOSSES = ("bce", "mse")


def kl_divergence(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(log_var)) || N(0, I)) in closed form, summed over latent dims: (B, L) -> (B,)."""
    return 0.5 * torch.sum(torch.exp(log_var) + mu.pow(2) - 1.0 - log_var, dim=1)


def reconstruction_nll(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """-log p(x|z) summed over pixels: (B, C, H, W) -> (B,).

    bce: Bernoulli likelihood with mean sigmoid(logits) (for images in [0, 1]);
    mse: Gaussian likelihood with mean sigmoid(logits) and unit variance, constant included.
    """
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        per_pixel = 0.5 * (torch.sigmoid(logits) - x).pow(2) + 0.5 * math.log(2 * math.pi)
    else:
        raise ValueError(f"model.recon_loss must be one of {RECON_LOSSES}, got {kind!r}")
    return per_pixel.flatten(1).sum(dim=1)


def kl_weight(epoch: int, beta: float, warmup_epochs: int) -> float:
    """Linear KL warm-up: beta/W, 2*beta/W, ... reaching beta at epoch W-1 and staying there."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, (epoch + 1) / warmup_epochs)
