"""LightningDataModule: normal training images (cached in memory), a held-out normal validation split,
and the streaming test split."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.data.datasets import ImageDataset, load_images, reference_size
from pipeline.data.images import ImageReadError, ReadOptions
from pipeline.data.layout import Sample, scan_test, scan_train

log = logging.getLogger(__name__)


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic permutation split of range(n) into (train_idx, val_idx); both non-empty when n >= 2."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    if n < 2:
        raise ValueError(f"need at least 2 normal training images to hold out a validation split, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return order[n_val:].sort().values, order[:n_val].sort().values


class InspectionDataModule(pl.LightningDataModule):
    def __init__(self, root: str | Path, image_size: int, read_options: ReadOptions, val_fraction: float,
                 batch_size: int, num_workers: int = 0, seed: int = 0, strict_size: bool = True):
        super().__init__()
        self.root = Path(root)
        self.image_size = image_size
        self.read_options = read_options
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.strict_size = strict_size
        self.train_images: torch.Tensor | None = None  # (N_train, C, S, S)
        self.val_images: torch.Tensor | None = None    # (N_val, C, S, S)
        self.val_samples: list[Sample] = []
        self.train_samples: list[Sample] = []
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
        train_idx, val_idx = split_train_val(len(kept), self.val_fraction, self.seed)
        self.train_images, self.val_images = images[train_idx], images[val_idx]
        self.train_samples = [kept[i] for i in train_idx.tolist()]
        self.val_samples = [kept[i] for i in val_idx.tolist()]

    @staticmethod
    def _indexed(images: torch.Tensor) -> TensorDataset:
        # The sample index travels with each image so that distributed validation can de-duplicate.
        return TensorDataset(images, torch.arange(len(images)))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._indexed(self.train_images), batch_size=self.batch_size, shuffle=True,
                          drop_last=len(self.train_images) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._indexed(self.val_images), batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_dataset, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=False)

    predict_dataloader = test_dataloader
