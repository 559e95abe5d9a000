"""How the normal images of train/good are shared out: training, selection, calibration.

    training      the networks learn from these (the VAE and the learned anomaly map)
    selection     everything that *chooses* looks here and nowhere else: the checkpoint (early stopping),
                  the score standardization of the fusion, the label-free validation
    calibration   touched once, after every choice is made, to set the threshold: so the calibration
                  images stay exchangeable with new normal images and the conformal promise holds

On a small set, or with too few normal images for the split to flag at alpha (`data.split.scheme`: `cross`, which
`auto` chooses then: choose_scheme), the images are cut into K folds instead and K detectors are trained
(scoring/cross_conformal.py): member k calibrates on fold k, selects on part of the next fold and trains on the
rest, so every image calibrates one member and trains most of the others (`cross_fold_indices`).

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
    scheme: str = "split"        # split: one detector; cross: n_members detectors, each image calibrating one
    n_members: int = 1           # (cross: n_train and n_selection are each member's, n_calibration all images)

    @property
    def supports_alpha(self) -> bool:
        return self.n_calibration >= min_calibration_images(self.alpha)  # cross: all n images count

    def shortfall(self) -> str:
        """Why the threshold cannot fire at alpha and what would fix it ('' when it can)."""
        if self.supports_alpha:
            return ""
        if self.scheme == "cross":
            return (f"{self.n_calibration} normal images cannot support alpha={self.alpha:g}: cross-conformal "
                    f"calibration over all of them can promise {smallest_alpha(self.n_calibration):.3g} at the smallest "
                    f"(set score.alpha to more than that); alpha={self.alpha:g} needs "
                    f"{self.images_for_alpha} normal images ({self.images_for_alpha - self.n_calibration} more).")
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


SCHEMES = ("auto", "split", "cross")


def choose_scheme(scheme: str, split_supports_alpha: bool, small_set: bool = False) -> str:
    """split or cross: `auto` = cross on a small set (fewer normal images than data.split.cross_below) or where one
    detector's split cannot flag at alpha (the cross scheme needs n + 1 >= 1 / alpha normal images in all, the split
    about twice that); the split otherwise. On a small set one detector trains on about 60 % of the images, chooses
    its fused components on a tenth of them and calibrates on the 30 % left: on the dev sets of 125 normal images the
    members ranked and caught defects better (docs/defaults.md, "Small normal sets")."""
    if scheme not in SCHEMES:
        raise ValueError(f"data.split.scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "auto":
        return "cross" if small_set or not split_supports_alpha else "split"
    return scheme


def cross_sizes(n: int, alpha: float, n_members: int, selection_fraction: float, min_selection: int,
                min_train: int) -> SplitSizes:
    """Sizes of the cross scheme: each member trains on n minus its calibration fold minus its selection images
    (the smallest member's count), selects on selection_fraction * n (at least min_selection), and all n images
    calibrate."""
    if n_members < 2:
        raise ValueError(f"data.split.members must be at least 2 for the cross scheme, got {n_members}")
    if n < n_members:
        raise TooFewNormalImages(f"{n} normal images are too few for {n_members} cross-conformal folds: add normal "
                                 "images to train/good")
    n_selection = max(min_selection, round(selection_fraction * n))
    largest_fold = math.ceil(n / n_members)
    n_train = n - largest_fold - n_selection
    smallest_next_fold = n // n_members
    if n_train < min_train or n_selection > smallest_next_fold:
        raise TooFewNormalImages(
            f"{n} normal images are too few for {n_members} cross-conformal members: each needs at least {min_train} "
            f"training and {n_selection} selection images from the other folds (data.split.*). Add normal images to "
            "train/good or lower data.split.members.")
    images_for_alpha = min_calibration_images(alpha)  # n + 1 >= 1 / alpha, as for one detector's calibration share
    return SplitSizes(n_train, n_selection, n, alpha, images_for_alpha, "cross", n_members)


def cross_fold_indices(n: int, sizes: SplitSizes, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per member k, (training, selection, calibration) indices, each sorted: a seeded permutation cut into K
    folds; member k calibrates on fold k, selects on the first n_selection images of fold k + 1 and trains on
    everything else. Every image calibrates exactly one member and trains all but at most two."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    folds = list(torch.tensor_split(order, sizes.n_members))
    members = []
    for k, fold in enumerate(folds):
        selection = folds[(k + 1) % len(folds)][:sizes.n_selection]
        held = torch.zeros(n, dtype=torch.bool)
        held[fold] = True
        held[selection] = True
        train = torch.nonzero(~held).flatten()
        members.append((train.sort().values, selection.sort().values, fold.sort().values))
    return members
