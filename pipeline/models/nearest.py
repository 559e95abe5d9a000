"""The nearest-parts level: how far an image lies from the normal training images it resembles most.

A wrong part (another digit, a part of another type, a missing or extra feature) differs from every normal part as a
whole, while the learned map looks for local defects and a code of a few numbers can place a wrong part close to a
right one (its ELBO then barely moves). The mean distance to the k nearest normal training images is the
non-parametric model of the whole part (PyOD's k-NN detector, PatchCore's memory of normal appearance, here on the
pixels): a new image far from every normal part is wrong however well the VAE draws it. Compared on a coarse copy of
the image (at most `side` pixels a side): the whole part's shape and layout, not the texture of its surface, whose
local defects are the map's, and a memory of a few hundred numbers per training image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NearestLevel(nn.Module):
    """x (B, C, S, S) -> (B,): root-mean-square pixel distance to each of its k nearest normal training images
    (on the coarse copy), averaged over the k."""

    def __init__(self, n_references: int, n_features: int, k: int, grid: int):
        super().__init__()
        self.k, self.grid = int(k), int(grid)  # grid: the coarse copies' side, fixed at the fit
        self.register_buffer("references", torch.zeros(n_references, n_features))
        self.register_buffer("reference_norms", torch.zeros(n_references))

    @classmethod
    def fit(cls, images: torch.Tensor, k: int, side: int) -> "NearestLevel":
        """The coarse copies (at most `side` pixels a side, never upsampled) of the normal training images `images`
        (N, C, S, S)."""
        if k < 1 or side < 1:
            raise ValueError(f"the nearest-parts level needs k >= 1 and side >= 1, got k={k}, side={side}")
        if len(images) < k:
            raise ValueError(f"the nearest-parts level averages over the {k} nearest training images, and there are "
                             f"only {len(images)}")
        level = cls(0, 0, k, min(int(side), int(images.shape[-1])))
        coarse = level.coarse(images.float().cpu())
        level.references = coarse
        level.reference_norms = coarse.square().sum(dim=1)
        return level

    def coarse(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, C * grid * grid): block means (the identity where S is the grid already)."""
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.coarse(x)
        # |q - r|^2 = |q|^2 - 2 q.r + |r|^2: one matrix product (and exportable), not a (B, N, D) difference tensor
        squared = query.square().sum(dim=1, keepdim=True) - 2.0 * query @ self.references.T + self.reference_norms
        nearest = squared.clamp_min(0.0).topk(self.k, dim=1, largest=False).values
        return (nearest / query.shape[1]).sqrt().mean(dim=1)
