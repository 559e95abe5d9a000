"""Small image filters shared by the anomaly synthesizer and the anomaly maps (pure torch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalized 1-D Gaussian of radius ceil(truncate * sigma) (scipy.ndimage's default truncation)."""
    radius = max(1, math.ceil(truncate * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W) with reflect padding; sigma <= 0 returns the input.

    Written here (two conv1d calls) rather than adding torchvision or kornia for one filter.
    """
    if sigma <= 0:
        return images
    kernel = gaussian_kernel1d(sigma).to(images.device, images.dtype)
    radius = (kernel.numel() - 1) // 2
    shape = images.shape
    h = images.reshape(-1, 1, *shape[-2:])  # (N, 1, H, W)
    h = F.pad(h, (radius, radius, radius, radius), mode="reflect" if radius < min(shape[-2:]) else "replicate")
    h = F.conv2d(h, kernel.view(1, 1, 1, -1))
    h = F.conv2d(h, kernel.view(1, 1, -1, 1))
    return h.reshape(shape)
