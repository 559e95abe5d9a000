"""Per-sample anomaly scores (higher = more anomalous) as pure functions of a network and a batch."""

from __future__ import annotations

import torch

from pipeline.models.loss import kl_divergence, reconstruction_nll
from pipeline.models.vae import ConvAutoencoder

SCORE_NAMES = ("recon_error", "neg_elbo")


def posterior_mean_reconstruction(net: ConvAutoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Decode the posterior mean: returns (x_hat (B, C, H, W) in [0, 1], mu (B, L), log_var (B, L) or None)."""
    mu, log_var = net.encode(x)
    return torch.sigmoid(net.decode(mu)), mu, log_var


def recon_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: (B, C, H, W) x2 -> (B,)."""
    return (x - x_hat).pow(2).flatten(1).mean(dim=1)


def neg_elbo(net: ConvAutoencoder, x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor | None,
             eps: torch.Tensor, recon_loss: str) -> torch.Tensor:
    """Monte Carlo negative ELBO: mean_k -log p(x|z_k) + KL(q(z|x) || p(z)), (B,).

    eps (K, L) are standard-normal draws shared by every image (common random numbers), so an image's
    score does not depend on which batch or which process scored it. For the autoencoder (no
    posterior) it is -log p(x|mu).
    """
    if log_var is None:
        return reconstruction_nll(net.decode(mu), x, recon_loss)
    sigma = torch.exp(0.5 * log_var)
    nll = torch.stack([reconstruction_nll(net.decode(mu + e * sigma), x, recon_loss) for e in eps])  # (K, B)
    return nll.mean(dim=0) + kl_divergence(mu, log_var)
