"""Convolutional VAE and a plain autoencoder of the same backbone.

Encoder: stride-2 4x4 convolutions (each halves the side) -> heads for the code.
Decoder: the code back to the bottleneck -> stride-2 4x4 transposed convolutions to the input size.
The decoder returns logits; `torch.sigmoid(logits)` is the reconstruction in [0, 1].

Two code layouts: `dense` (flatten + linear heads: one global vector of `latent_dim` numbers) and
`spatial` (1x1-convolution heads: `latent_dim` numbers per bottleneck cell, so a part shifted by a
few pixels or a texture seen at another phase stays easy to represent). Codes are always handed
around flattened, (B, latent_size).
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
                 hidden_channels: Sequence[int] = (32, 64, 128, 256), latent_layout: str = "dense"):
        super().__init__()
        factor = 2 ** len(hidden_channels)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} must be divisible by 2**len(hidden_channels) = {factor}")
        if latent_layout not in ("dense", "spatial"):
            raise ValueError(f"model.latent_layout must be 'dense' or 'spatial', got {latent_layout!r}")
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, latent_dim
        self.hidden_channels, self.latent_layout = tuple(hidden_channels), latent_layout
        side = image_size // factor
        self._bottleneck = (hidden_channels[-1], side, side)  # (C, h, w)
        self._code_shape = (latent_dim,) if latent_layout == "dense" else (latent_dim, side, side)
        self.latent_size = latent_dim if latent_layout == "dense" else latent_dim * side * side
        self.encoder = _encoder(in_channels, hidden_channels)
        self.fc_mu = self._head_in()
        self.fc_decode = (nn.Linear(latent_dim, hidden_channels[-1] * side * side) if latent_layout == "dense"
                          else nn.Conv2d(latent_dim, hidden_channels[-1], 1))
        self.decoder = _decoder(in_channels, hidden_channels)

    def _head_in(self) -> nn.Module:
        channels, side = self._bottleneck[0], self._bottleneck[1]
        if self.latent_layout == "dense":
            return nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, self.latent_dim))
        return nn.Sequential(nn.Conv2d(channels, self.latent_dim, 1), nn.Flatten())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, H, W) -> (mu (B, latent_size), log_var (B, latent_size) or None)."""
        return self.fc_mu(self.encoder(x)), None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_size) -> logits (B, C, H, W)."""
        h = self.fc_decode(z.view(z.shape[0], *self._code_shape)).view(z.shape[0], *self._bottleneck)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> Reconstruction:
        mu, _ = self.encode(x)
        return Reconstruction(self.decode(mu), mu, None, mu)


class ConvVAE(ConvAutoencoder):
    """Gaussian-posterior VAE: q(z|x) = N(mu, diag(exp(log_var))), prior N(0, I)."""

    variational = True

    def __init__(self, in_channels: int = 1, image_size: int = 64, latent_dim: int = 32,
                 hidden_channels: Sequence[int] = (32, 64, 128, 256), latent_layout: str = "dense"):
        super().__init__(in_channels, image_size, latent_dim, hidden_channels, latent_layout)
        self.fc_log_var = self._head_in()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)  # (B, C, h, w)
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
