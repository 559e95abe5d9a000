"""Per-pixel anomaly maps: squared residual, Gaussian smoothing, resizing to the original resolution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def residual_map(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared reconstruction error averaged over channels: (B, C, H, W) -> (B, H, W)."""
    return (x - x_hat).pow(2).mean(dim=1)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalized 1-D Gaussian of radius ceil(truncate * sigma) (scipy.ndimage's default truncation)."""
    radius = max(1, math.ceil(truncate * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps with reflect padding; sigma <= 0 returns the input.

    Written here (two conv1d calls) rather than adding torchvision or kornia for one filter.
    """
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)
    radius = (kernel.numel() - 1) // 2
    h = maps.unsqueeze(1)  # (B, 1, H, W)
    h = F.pad(h, (radius, radius, radius, radius), mode="reflect" if radius < min(maps.shape[-2:]) else "replicate")
    h = F.conv2d(h, kernel.view(1, 1, 1, -1))
    h = F.conv2d(h, kernel.view(1, 1, -1, 1))
    return h.squeeze(1)


def resize_map(anomaly_map: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W) map -> (H', W') with bilinear interpolation (anomaly maps are smooth, so this is exact enough)."""
    if tuple(anomaly_map.shape[-2:]) == tuple(size_hw):
        return anomaly_map
    return F.interpolate(anomaly_map[None, None], size=tuple(int(s) for s in size_hw), mode="bilinear",
                         align_corners=False)[0, 0]
