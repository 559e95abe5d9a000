"""The linear level: the principal subspace of the normal training images, and each image's projection onto it.

Probabilistic PCA is the linear-Gaussian latent model whose likelihood maximum is known in closed form (Tipping &
Bishop 1999); a VAE with a linear decoder reaches the same subspace (Lucas et al. 2019). Where the part is
drawn the same way every time (a machined part, a printed label), the subspace holds its pose and structure
exactly, so the residual of a defect stands out where the nonlinear global code of a few numbers still blurs
the part: the same residual map the PCA baseline scores. Fitted by scikit-learn, applied by two matrix products.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn


class LinearLevel(nn.Module):
    """x (B, C, S, S) -> its projection onto the subspace of the normal images (same shape)."""

    def __init__(self, n_features: int, n_components: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("components", torch.zeros(n_components, n_features))

    @classmethod
    def fit(cls, images: torch.Tensor, variance: float, seed: int = 0) -> "LinearLevel":
        """The fewest principal components of `images` (N, C, S, S) that explain `variance` of their variance."""
        flat = images.flatten(1).float().cpu().numpy()
        if len(flat) < 2 or float(np.ptp(flat, axis=0).max()) == 0.0:
            raise ValueError(f"the linear level needs at least 2 normal images that differ, got {len(flat)}")
        pca = PCA(n_components=variance, svd_solver="full", random_state=seed).fit(flat)
        level = cls(flat.shape[1], int(pca.n_components_))
        level.mean.copy_(torch.from_numpy(np.asarray(pca.mean_, dtype=np.float32)))
        level.components.copy_(torch.from_numpy(np.asarray(pca.components_, dtype=np.float32)))
        level.explained_variance_ = float(np.sum(pca.explained_variance_ratio_))
        return level

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x.flatten(1) - self.mean
        projected = self.mean + (centered @ self.components.T) @ self.components
        return projected.view_as(x)
