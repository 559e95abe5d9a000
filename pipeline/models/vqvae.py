"""VQ-VAE (van den Oord et al., 2017): a spatial code whose every cell is snapped to the nearest of K learned
codebook vectors, a memory of normal appearance. A defect has no codebook entry of its own, so the decoder draws
the nearest normal pattern in its place.

    x (B, C, S, S) -> encoder -> z_e (B, D, s, s) -> nearest codebook vector per cell -> z_q -> decoder -> logits

Same interface as the other networks (models/vae.py): `encode` returns (z_e flattened (B, D*s*s), None) and
`decode` quantizes the code it is given before decoding (straight-through gradient, so the encoder learns from
the reconstruction). The prior is uniform over the K entries and the posterior one-hot, so the KL term of the ELBO
is the constant s*s*log K: the negative ELBO ranks images as the reconstruction NLL does. Training adds the
codebook and commitment losses (`quantization_loss`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.vae import ConvAutoencoder


class VQVAE(ConvAutoencoder):
    variational = False

    def __init__(self, in_channels: int = 1, image_size: int = 64, latent_dim: int = 16,
                 hidden_channels: Sequence[int] = (32, 64, 128), latent_layout: str = "spatial",
                 codebook_size: int = 128, commitment: float = 0.25):
        if latent_layout != "spatial":
            raise ValueError("model=vqvae quantizes a code per bottleneck cell: model.latent_layout must be 'spatial'")
        super().__init__(in_channels, image_size, latent_dim, hidden_channels, "spatial")
        self.codebook = nn.Embedding(codebook_size, latent_dim)  # (K, D)
        self.codebook.weight.data.uniform_(-1 / codebook_size, 1 / codebook_size)
        self.commitment = commitment

    def _cells(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D*s*s) -> (B*s*s, D): one row per code cell."""
        d, s = self._code_shape[0], self._code_shape[1]
        return z.view(z.shape[0], d, s * s).transpose(1, 2).reshape(-1, d)

    def _uncells(self, cells: torch.Tensor, batch: int) -> torch.Tensor:
        d, s = self._code_shape[0], self._code_shape[1]
        return cells.view(batch, s * s, d).transpose(1, 2).reshape(batch, -1)

    def code_indices(self, z: torch.Tensor) -> torch.Tensor:
        """The codebook entry nearest to each cell of z (B, D*s*s) -> (B, s*s)."""
        cells, entries = self._cells(z), self.codebook.weight  # (B*s*s, D), (K, D)
        # |c - e|^2 up to |c|^2, which does not change the argmin; written out so the ONNX export can take it.
        distances = entries.pow(2).sum(dim=1)[None, :] - 2 * cells @ entries.t()  # (B*s*s, K)
        return distances.argmin(dim=1).view(z.shape[0], -1)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D*s*s) snapped to the codebook, with the straight-through gradient to z."""
        quantized = self._uncells(self.codebook(self.code_indices(z).flatten()), z.shape[0])
        return z + (quantized - z).detach()

    def quantization_loss(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook loss (moves the entries to the codes) + commitment loss (keeps the codes near their entries),
        batch mean."""
        quantized = self._uncells(self.codebook(self.code_indices(z).flatten()), z.shape[0])
        per_image = (F.mse_loss(quantized, z.detach(), reduction="none")
                     + self.commitment * F.mse_loss(z, quantized.detach(), reduction="none"))
        return per_image.sum(dim=1).mean()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return super().decode(self.quantize(z))
