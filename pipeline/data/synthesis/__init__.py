"""Synthetic anomalies made on the fly from normal images, to train and to validate the learned anomaly map.

`AnomalySynthesizer` turns a batch of normal images into a batch where a share of the images carries one
anomaly of a kind drawn from its `kinds` (kinds.py), with the mask of the pixels it really changed.
It knows nothing of the product's built-in datasets or their defects (data/generators/): the anomaly
material is the training images themselves and procedural noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline.data.synthesis.kinds import KINDS, coin, pick


def _closing(mask: torch.Tensor) -> torch.Tensor:
    """3x3 binary closing of (H, W): a texture patch changes most pixels but not all (where the two
    textures happen to agree); the anomaly is the region, not the speckle."""
    grown = F.max_pool2d(mask[None, None].float(), 3, stride=1, padding=1)
    return (-F.max_pool2d(-grown, 3, stride=1, padding=1))[0, 0] > 0.5


@dataclass
class AnomalySynthesizer:
    kinds: tuple[str, ...]                  # which kinds of anomaly to make (keys of KINDS)
    params: dict = field(default_factory=dict)  # kind -> its parameters (conf/head/default.yaml)
    anomaly_share: float = 0.5              # share of the images that get an anomaly; the rest stay normal
    visible_delta: float = 0.03             # a pixel is part of the anomaly when it changed by more than this
    min_pixels: int = 6                     # an anomaly changing fewer pixels is drawn again (it would be invisible)
    max_tries: int = 5                      # draws per image before it is left normal

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"unknown anomaly kinds {unknown}; choose from {sorted(KINDS)}")

    def one(self, x: torch.Tensor, pool: torch.Tensor, generator: torch.Generator,
            kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor, str | None]:
        """One anomalous version of x (C, H, W): (image, mask (H, W) bool, kind), or x unchanged, an empty
        mask and None when no draw changed enough pixels."""
        for _ in range(self.max_tries):
            chosen = kind or self.kinds[pick(generator, len(self.kinds))]
            altered, _ = KINDS[chosen](x, pool, generator, self.params.get(chosen, {}))
            mask = _closing((altered - x).abs().amax(dim=0) > self.visible_delta)  # (H, W)
            if int(mask.sum()) >= self.min_pixels:
                # Pixels changed by less than visible_delta stay as they were: the image changes exactly
                # where the mask says, so a label never marks an invisible change.
                return torch.where(mask[None], altered, x), mask, chosen
        return x, torch.zeros(x.shape[1:], dtype=torch.bool), None

    def __call__(self, images: torch.Tensor, pool: torch.Tensor, generator: torch.Generator,
                 kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
        """images (B, C, H, W) -> (images (B, C, H, W), masks (B, 1, H, W) float, kind of each image or None)."""
        out, masks, kinds = images.clone(), torch.zeros(images.shape[0], 1, *images.shape[2:]), []
        for i in range(images.shape[0]):
            if not coin(generator, self.anomaly_share):
                kinds.append(None)
                continue
            out[i], mask, chosen = self.one(images[i], pool, generator, kind)
            masks[i, 0] = mask.float()
            kinds.append(chosen)
        return out, masks, kinds
