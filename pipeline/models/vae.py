"""Convolutional VAE and a plain autoencoder of the same backbone.

Encoder: stride-2 4x4 convolutions (each halves the side) -> flatten -> linear heads.
Decoder: linear -> reshape -> stride-2 4x4 transposed convolutions back to the input size.
The decoder returns logits; `torch.sigmoid(logits)` is the reconstruction in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass
class Reconstruction:
    logits: torch.Tensor          # (B, C, H, W) decoder output before the sigmoid
    mu: torch.Tensor              # (B, L) posterior mean (the code itself for the autoencoder)
    log_var: torch.Tensor | None  # (B, L) posterior log-variance; None for the autoencoder
    z: torch.Tensor               # (B, L) the code that was decoded


def _encoder(in_channels: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in hidden:
        layers += [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


def _decoder(out_channels: int, hidden: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    reversed_hidden = list(hidden)[::-1]
    for in_ch, out_ch in zip(reversed_hidden[:-1], reversed_hidden[1:]):
        layers += [nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.2, inplace=True)]
    layers.append(nn.ConvTranspose2d(reversed_hidden[-1], out_channels, 4, stride=2, padding=1))
    return nn.Sequential(*layers)


class ConvAutoencoder(nn.Module):
    """Deterministic autoencoder: x -> z -> logits. The comparison baseline for the VAE."""

    variational = False

    def __init__(self, in_channels: int = 1, image_size: int = 64, latent_dim: int = 32,
                 hidden_channels: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        factor = 2 ** len(hidden_channels)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} must be divisible by 2**len(hidden_channels) = {factor}")
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, latent_dim
        self.hidden_channels = tuple(hidden_channels)
        self._bottleneck = (hidden_channels[-1], image_size // factor, image_size // factor)  # (C, h, w)
        flat = hidden_channels[-1] * (image_size // factor) ** 2
        self.encoder = nn.Sequential(_encoder(in_channels, hidden_channels), nn.Flatten())
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_decode = nn.Linear(latent_dim, flat)
        self.decoder = _decoder(in_channels, hidden_channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, H, W) -> (mu (B, L), log_var (B, L) or None)."""
        return self.fc_mu(self.encoder(x)), None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, L) -> logits (B, C, H, W)."""
        h = self.fc_decode(z).view(z.shape[0], *self._bottleneck)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> Reconstruction:
        mu, _ = self.encode(x)
        return Reconstruction(self.decode(mu), mu, None, mu)


class ConvVAE(ConvAutoencoder):
    """Gaussian-posterior VAE: q(z|x) = N(mu, diag(exp(log_var))), prior N(0, I)."""

    variational = True

    def __init__(self, in_channels: int = 1, image_size: int = 64, latent_dim: int = 32,
                 hidden_channels: Sequence[int] = (32, 64, 128, 256)):
        super().__init__(in_channels, image_size, latent_dim, hidden_channels)
        self.fc_log_var = nn.Linear(self.fc_mu.in_features, latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_log_var(h)

    @staticmethod
    def reparameterize(mu: torch.Tensor, log_var: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + eps * sigma with eps ~ N(0, I): differentiable in mu and log_var."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * log_var)

    def forward(self, x: torch.Tensor) -> Reconstruction:
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var) if self.training else mu
        return Reconstruction(self.decode(z), mu, log_var, z)


def build_network(kind: str, in_channels: int, image_size: int, latent_dim: int,
                  hidden_channels: Sequence[int]) -> ConvAutoencoder:
    """The network named by `model.kind` (vae | ae)."""
    classes = {"vae": ConvVAE, "ae": ConvAutoencoder}
    if kind not in classes:
        raise ValueError(f"model.kind must be one of {sorted(classes)}, got {kind!r}")
    return classes[kind](in_channels, image_size, latent_dim, list(hidden_channels))
