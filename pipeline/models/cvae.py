"""Conditional convolutional VAE: one network for several product categories.

The category label c (an integer, 0..K-1) enters twice: as K one-hot channels broadcast over the image
and stacked onto the encoder's input, and as a one-hot vector concatenated to the code before the
decoder (per bottleneck cell for the spatial layout). So the code need not spend capacity on *which*
product it sees, and the decoder draws the good part of the category it is told.

Training passes c explicitly (`encode(x, c)`, `decode(z, c)`). The scorers call `encode(x)` and
`decode(z)` like for any network; they run inside `conditioned(net, c)`, which sets the condition for
the calls in that block, so the single-category scoring code stays as it is.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.vae import ConvVAE, Reconstruction, _encoder


class ConditionalConvVAE(ConvVAE):
    conditional = True

    def __init__(self, n_classes: int, in_channels: int = 1, image_size: int = 64, latent_dim: int = 32,
                 hidden_channels: Sequence[int] = (32, 64, 128, 256), latent_layout: str = "dense"):
        if n_classes < 1:
            raise ValueError(f"a conditional VAE needs at least one category (data.categories), got {n_classes}")
        super().__init__(in_channels, image_size, latent_dim, hidden_channels, latent_layout)
        self.n_classes = n_classes
        self.encoder = _encoder(in_channels + n_classes, hidden_channels)
        channels, side = self._bottleneck[0], self._bottleneck[1]
        self.fc_decode = (nn.Linear(latent_dim + n_classes, channels * side * side) if latent_layout == "dense"
                          else nn.Conv2d(latent_dim + n_classes, channels, 1))
        self._condition: torch.Tensor | None = None  # set only inside `conditioned_on`

    def _one_hot(self, c: torch.Tensor | int | None, batch: int, device: torch.device) -> torch.Tensor:
        """(B, K) float one-hot of c: a (B,) tensor of labels, one int for the whole batch, or the
        condition set by `conditioned_on`."""
        c = self._condition if c is None else c
        if c is None:
            raise RuntimeError("a conditional VAE needs the category: call encode(x, c) or run inside conditioned(net, c)")
        c = torch.as_tensor(c, device=device, dtype=torch.long)
        if c.dim() == 0:
            c = c.expand(batch)
        if c.shape != (batch,):
            raise ValueError(f"condition has shape {tuple(c.shape)}, expected ({batch},)")
        if int(c.min()) < 0 or int(c.max()) >= self.n_classes:
            raise ValueError(f"category label out of range 0..{self.n_classes - 1}: {c.tolist()}")
        return F.one_hot(c, self.n_classes).float()

    def encode(self, x: torch.Tensor, c: torch.Tensor | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W), c (B,) -> (mu, log_var), each (B, latent_size)."""
        onehot = self._one_hot(c, x.shape[0], x.device)  # (B, K)
        planes = onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])  # (B, K, H, W)
        h = self.encoder(torch.cat([x, planes.to(x.dtype)], dim=1))  # (B, C', h, w)
        return self.fc_mu(h), self.fc_log_var(h)

    def decode(self, z: torch.Tensor, c: torch.Tensor | int | None = None) -> torch.Tensor:
        """z (B, latent_size), c (B,) -> logits (B, C, H, W)."""
        onehot = self._one_hot(c, z.shape[0], z.device).to(z.dtype)  # (B, K)
        code = z.view(z.shape[0], *self._code_shape)
        if self.latent_layout == "dense":
            code = torch.cat([code, onehot], dim=1)  # (B, L + K)
        else:
            code = torch.cat([code, onehot[:, :, None, None].expand(-1, -1, *code.shape[2:])], dim=1)  # (B, L+K, h, w)
        return self.decoder(self.fc_decode(code).view(z.shape[0], *self._bottleneck))

    def forward(self, x: torch.Tensor, c: torch.Tensor | int | None = None) -> Reconstruction:
        mu, log_var = self.encode(x, c)
        z = self.reparameterize(mu, log_var) if self.training else mu
        return Reconstruction(self.decode(z, c), mu, log_var, z)

    @contextmanager
    def conditioned_on(self, c: torch.Tensor | int):
        previous, self._condition = self._condition, c
        try:
            yield self
        finally:
            self._condition = previous


def conditioned(net: nn.Module, c):
    """Context in which net.encode(x)/net.decode(z) use category c; a no-op for unconditional nets
    or c=None, so callers can wrap any network."""
    if c is None or not getattr(net, "conditional", False):
        return nullcontext(net)
    return net.conditioned_on(c)
