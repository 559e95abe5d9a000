"""How the normal images of train/good are shared out: training, selection, calibration.

    training      the networks learn from these (the VAE and the learned anomaly map)
    selection     everything that *chooses* looks here and nowhere else: the checkpoint (early stopping),
                  the score standardization of the fusion, the label-free validation
    calibration   touched once, after every choice is made, to set the threshold: so the calibration
                  images stay exchangeable with new normal images and the conformal promise holds

The calibration share is sized to the requested false-alarm rate alpha: a conformal threshold needs at
least ceil(1/alpha) - 1 calibration images to be finite. When the normal images cannot give that, the
split still trains, and `SplitSizes.shortfall()` says which alpha they can support and how many more
images the requested one needs; with too few images to train at all, `TooFewNormalImages`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class TooFewNormalImages(ValueError):
    """Too few normal images to train, select and calibrate at all; the message says how many are needed."""


def min_calibration_images(alpha: float) -> int:
    """The fewest calibration images with which a conformal threshold at `alpha` is finite: n + 1 >= 1/alpha."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return max(1, math.ceil(1.0 / alpha - 1e-9) - 1)


def smallest_alpha(n_calibration: int) -> float:
    """The smallest alpha a conformal threshold from n calibration images can promise: 1 / (n + 1)."""
    return 1.0 / (n_calibration + 1)


@dataclass(frozen=True)
class SplitSizes:
    n_train: int
    n_selection: int
    n_calibration: int
    alpha: float                 # the false-alarm rate the calibration share was sized for
    images_for_alpha: int        # normal images in all that alpha needs (>= n when it is supported)

    @property
    def supports_alpha(self) -> bool:
        return self.n_calibration >= min_calibration_images(self.alpha)

    def shortfall(self) -> str:
        """Why the threshold cannot fire at alpha and what would fix it ('' when it can)."""
        if self.supports_alpha:
            return ""
        n = self.n_train + self.n_selection + self.n_calibration
        return (f"{n} normal images cannot support alpha={self.alpha:g}: a conformal threshold at that rate needs "
                f"{min_calibration_images(self.alpha)} calibration images and these images give "
                f"{self.n_calibration}. The smallest alpha they can promise is {smallest_alpha(self.n_calibration):.3g} "
                f"(set score.alpha to at least that); alpha={self.alpha:g} needs {self.images_for_alpha} normal "
                f"images ({self.images_for_alpha - n} more).")


def split_sizes(n: int, alpha: float, calibration_fraction: float, selection_fraction: float,
                min_selection: int, min_train: int, max_calibration_share: float) -> SplitSizes:
    """Sizes of the three parts for n normal images.

    calibration: max(calibration_fraction * n, the minimum for alpha) when that is at most
    max_calibration_share * n; otherwise the threshold cannot fire at alpha whatever the split, so the
    calibration share stays calibration_fraction * n and the training images are not given up for nothing
    (`supports_alpha` is False and `shortfall()` says why); selection: selection_fraction * n, at least min_selection; training: the rest, at least
    min_train, else TooFewNormalImages.
    """
    for name, value in (("calibration_fraction", calibration_fraction), ("selection_fraction", selection_fraction),
                        ("max_calibration_share", max_calibration_share)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"data.split.{name} must be in (0, 1), got {value}")
    needed = min_calibration_images(alpha)
    n_calibration = max(1, round(calibration_fraction * n))
    if needed <= math.floor(max_calibration_share * n):
        n_calibration = max(needed, n_calibration)
    n_selection = max(min_selection, round(selection_fraction * n))
    n_train = n - n_calibration - n_selection
    images_for_alpha = max(math.ceil(needed / max_calibration_share), needed + n_selection + min_train)
    if n_train < min_train:
        raise TooFewNormalImages(
            f"{n} normal images are too few: training needs at least {min_train}, selection {n_selection} and "
            f"calibration {n_calibration} (data.split.*); alpha={alpha:g} needs {images_for_alpha} normal images in all "
            f"({images_for_alpha - n} more). Add normal images to train/good.")
    return SplitSizes(n_train, n_selection, n_calibration, alpha, images_for_alpha)


def split_indices(n: int, sizes: SplitSizes, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded permutation of range(n) cut into (training, selection, calibration) indices, each sorted."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cuts = (sizes.n_calibration, sizes.n_calibration + sizes.n_selection)
    calibration, selection, train = order[:cuts[0]], order[cuts[0]:cuts[1]], order[cuts[1]:]
    return train.sort().values, selection.sort().values, calibration.sort().values
