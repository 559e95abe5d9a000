"""LightningDataModule: the normal images of train/good, cached in memory and shared out into training,
selection and calibration images (splits.py), and the streaming test split."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.data.datasets import ImageDataset, load_images, reference_size
from pipeline.data.images import ImageReadError, ReadOptions
from pipeline.data.layout import Sample, scan_test, scan_train
from pipeline.data.splits import (SplitSizes, TooFewNormalImages, choose_scheme, cross_fold_indices, cross_sizes,
                                  split_indices, split_sizes)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitSettings:
    """`data.split` of the config, and the alpha the calibration share is sized for (`score.alpha`)."""

    alpha: float = 0.01
    calibration_fraction: float = 0.3
    selection_fraction: float = 0.1
    min_selection: int = 16
    min_train: int = 32
    max_calibration_share: float = 0.5
    scheme: str = "split"        # auto | split | cross (splits.choose_scheme)
    members: int = 5             # cross: detectors trained, one calibration fold each
    cross_below: int = 0         # auto: the members on fewer normal images than this (0: only where the split cannot flag)

    def sizes(self, n: int) -> SplitSizes:
        """One detector's shares, or K members' folds: asked for by name, or (`auto`) on a small set or where only the
        folds let the threshold flag at alpha (splits.choose_scheme); `auto` falls back to one detector where the set
        is too small for K members' folds."""
        if choose_scheme(self.scheme, True) == "cross":  # also: a clear error for a mistyped scheme
            return self.cross_sizes(n)
        split = split_sizes(n, self.alpha, self.calibration_fraction, self.selection_fraction, self.min_selection,
                            self.min_train, self.max_calibration_share)
        if choose_scheme(self.scheme, split.supports_alpha, self.small_set(n)) == "split":
            return split
        try:
            return self.cross_sizes(n)  # where neither can flag, its shortfall names the fewer images missing
        except TooFewNormalImages:
            return split  # too few for K members' folds: one detector, and train says which alpha it supports

    def small_set(self, n: int) -> bool:
        """Whether n normal images are a small set, on which `auto` takes the members (`cross_below`)."""
        return n < self.cross_below

    def cross_sizes(self, n: int) -> SplitSizes:
        return cross_sizes(n, self.alpha, self.members, self.selection_fraction, self.min_selection, self.min_train)


def drop_last(n_images: int, batch_size: int, trainer: pl.Trainer | None) -> bool:
    """Drop a last partial training batch only when every rank still has a full one: under DDP each rank
    gets 1/world_size of the images, and dropping would otherwise leave a small shard with no batch at all."""
    world_size = trainer.world_size if trainer is not None else 1
    return n_images // world_size > batch_size


class InspectionDataModule(pl.LightningDataModule):
    def __init__(self, root: str | Path, image_size: int, read_options: ReadOptions, split: SplitSettings,
                 batch_size: int, num_workers: int = 0, seed: int = 0, strict_size: bool = True):
        super().__init__()
        self.root, self.image_size, self.read_options, self.split = Path(root), image_size, read_options, split
        self.batch_size, self.num_workers, self.seed, self.strict_size = batch_size, num_workers, seed, strict_size
        self.train_images: torch.Tensor | None = None        # (N_train, C, S, S)
        self.selection_images: torch.Tensor | None = None    # (N_selection, C, S, S)
        self.calibration_images: torch.Tensor | None = None  # (N_calibration, C, S, S)
        self.train_samples: list[Sample] = []
        self.selection_samples: list[Sample] = []
        self.calibration_samples: list[Sample] = []
        self.sizes: SplitSizes | None = None
        self.skipped: list[ImageReadError] = []
        self.test_dataset: ImageDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_images is None:
            self._setup_normal()
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = ImageDataset(scan_test(self.root), self.image_size, self.read_options)

    def _setup_normal(self) -> None:
        samples = scan_train(self.root)
        if self.strict_size and self.read_options.expected_size is None:
            self.read_options = replace(self.read_options, expected_size=reference_size(samples, self.read_options))
        images, kept, self.skipped = load_images(samples, self.image_size, self.read_options)
        if self.skipped:
            log.warning("%d of %d training images were skipped (see the messages above)", len(self.skipped), len(samples))
        self.sizes = self.split.sizes(len(kept))
        self.images, self.samples = images, kept
        if self.sizes.scheme == "cross":
            self.member_parts = cross_fold_indices(len(kept), self.sizes, self.seed)
            self._use_parts(self.member_parts[0])
        else:
            self.member_parts = []
            self._use_parts(split_indices(len(kept), self.sizes, self.seed))

    def _use_parts(self, parts) -> None:
        self.train_images, self.selection_images, self.calibration_images = (self.images[p] for p in parts)
        self.train_samples, self.selection_samples, self.calibration_samples = (
            [self.samples[i] for i in p.tolist()] for p in parts)

    def member(self, k: int) -> "InspectionDataModule":
        """The cross scheme's member k: the same data module, with member k's training, selection and calibration
        images (splits.cross_fold_indices)."""
        view = copy.copy(self)
        view._use_parts(self.member_parts[k])
        return view

    @staticmethod
    def _indexed(images: torch.Tensor) -> TensorDataset:
        # The sample index travels with each image so that distributed validation can de-duplicate.
        return TensorDataset(images, torch.arange(len(images)))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._indexed(self.train_images), batch_size=self.batch_size, shuffle=True,
                          drop_last=drop_last(len(self.train_images), self.batch_size, self.trainer))

    def val_dataloader(self) -> DataLoader:
        """The selection images: early stopping looks here, never at the calibration images."""
        return DataLoader(self._indexed(self.selection_images), batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_dataset, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=False)

    predict_dataloader = test_dataloader
