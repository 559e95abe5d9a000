"""Normal variation: what a good part may do without being defective, shown to the networks as normal.

The learned map and the restoring VAE only know the variation they saw. A good part seen a little shifted,
turned, larger or brighter than any training image is still good, and a map that has never seen that lights up
normal structure. `NuisanceTransform` draws such a whole-image change for a share of a batch: a shift, a rotation
and a scale (one affine warp, the border reflected), then a gain and an offset of the brightness. The mask stays
empty: only a *local* rescaling or rotation (the synthesizer's `patch` kind) is a defect.

The brightness bounds are not fixed numbers: they are the spread the training images themselves show
(`fit_lighting`), so a change stays within the variation good parts have among themselves; what goes beyond it
is a shift of the process, the drift test's job (scoring/drift.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class NuisanceTransform:
    share: float = 0.5                 # share of the images that get a whole-image change
    shift: float = 0.04                # largest shift, fraction of the side
    rotation_degrees: float = 4.0      # largest rotation
    scale: float = 0.08                # largest relative change of scale (0.08: 0.92x to 1.08x)
    gain_spread: float = 0.0           # std of the images' contrast ratios among training images (fit_lighting)
    offset_spread: float = 0.0         # std of the images' mean intensity among training images (fit_lighting)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images (B, C, H, W) in [0, 1] -> the same with a share of them changed as a whole."""
        b = images.shape[0]
        chosen = torch.rand(b, generator=generator) < self.share  # (B,)
        if not bool(chosen.any()):
            return images

        def draw(bound: float) -> torch.Tensor:  # (B,) uniform in [-bound, bound]
            return (torch.rand(b, generator=generator) * 2 - 1) * bound

        angle = draw(math.radians(self.rotation_degrees))
        scale = 1 + draw(self.scale)
        shift_x, shift_y = draw(2 * self.shift), draw(2 * self.shift)  # [-1, 1] coordinates span 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        matrix = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(matrix.to(images.dtype), list(images.shape), align_corners=False)
        warped = F.grid_sample(images, grid.to(images.device), mode="bilinear", padding_mode="reflection",
                               align_corners=False)
        gain = torch.exp(draw(self.gain_spread)).to(images)[:, None, None, None]
        offset = draw(self.offset_spread).to(images)[:, None, None, None]
        mean = warped.mean(dim=(1, 2, 3), keepdim=True)
        changed = ((warped - mean) * gain + mean + offset).clamp(0, 1)
        return torch.where(chosen.to(images.device)[:, None, None, None], changed, images)


def fit_lighting(images: torch.Tensor) -> tuple[float, float]:
    """(std of log contrast, std of mean intensity) over normal images (N, C, H, W): the lighting variation good
    parts show among themselves."""
    flat = images.flatten(1).double()
    return float(flat.std(dim=1).clamp_min(1e-6).log().std()), float(flat.mean(dim=1).std())
