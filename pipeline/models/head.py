"""The learned anomaly map: a small U-Net that compares an image with the VAE's reconstruction of it.

Input: the image and its reconstruction stacked on channels, (B, 2C, H, W) in [0, 1]. Output: one logit
per pixel, (B, 1, H, W); sigmoid(logit) is the probability that the pixel belongs to an anomaly. The
network is trained on synthetic anomalies (data/synthesis/) and never sees a real defect (DRAEM's
discriminative sub-network, Zavrtanik et al. 2021, at a size a CPU trains in minutes).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class AnomalyHead(nn.Module):
    """U-Net: `len(widths)` resolutions, each a block of two 3x3 convolutions; skip connections carry the
    fine detail a thin scratch needs past the coarse context that tells a texture's variation from a defect."""

    def __init__(self, image_channels: int, widths: Sequence[int] = (16, 32, 64, 128), channels_last: bool = False):
        super().__init__()
        self.image_channels, self.widths, self.channels_last = image_channels, tuple(widths), channels_last
        self.down = nn.ModuleList()
        channels = 2 * image_channels
        widths = self.widths  # a tuple: slicing a config list backwards is not reliable
        for width in widths:
            self.down.append(_block(channels, width))
            channels = width
        self.up = nn.ModuleList(_block(wide + narrow, narrow) for wide, narrow in zip(widths[::-1], widths[-2::-1]))
        self.out = nn.Conv2d(widths[0], 1, 1)
        if channels_last:
            # Few channels at full resolution: the channels-last layout runs the step 1.3x faster on CPU (PERFORMANCE.md)
            # and is the layout cuDNN prefers; the numbers are the same up to float rounding.
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """image and reconstruction (B, C, H, W) -> logits (B, 1, H, W); H, W divisible by 2**(len(widths) - 1)."""
        x = torch.cat([x, reconstruction], dim=1)  # (B, 2C, H, W)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, skips[-2::-1]):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.out(x)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean binary focal loss (Lin et al., 2017) of per-pixel logits against targets in [0, 1]: down-weights
    the many easy normal pixels so the few anomalous ones count. By hand: torchvision (which has one)
    does not install beside the CPU build of torch we use."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * target + (1 - p) * (1 - target)
    return ((1 - p_true) ** gamma * bce).mean()

