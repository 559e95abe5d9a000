"""Input corruption for the denoising option: the network sees a corrupted image and is asked to
reconstruct the clean one, so it cannot simply copy local detail it was shown (Vincent et al., 2008)."""

from __future__ import annotations

import torch

CORRUPTIONS = ("none", "gaussian", "mask")


def corrupt(x: torch.Tensor, kind: str, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A corrupted copy of x (B, C, H, W) in [0, 1]; x itself is left unchanged.

    gaussian: add N(0, level^2) noise per pixel, clipped back to [0, 1];
    mask: set a random share `level` of pixel positions (the same across channels) to 0.
    """
    if kind == "none" or level <= 0:
        return x
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + level * noise).clamp(0.0, 1.0)
    if kind == "mask":
        if not 0.0 < level < 1.0:
            raise ValueError(f"model.denoise.level must be in (0, 1) for kind=mask, got {level}")
        keep = torch.rand((x.shape[0], 1, *x.shape[2:]), generator=generator, device=x.device) >= level  # (B, 1, H, W)
        return x * keep.to(x.dtype)
    raise ValueError(f"model.denoise.kind must be one of {CORRUPTIONS}, got {kind!r}")
