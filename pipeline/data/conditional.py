"""Several MVTec roots (one per product category) as one labelled dataset, for the conditional VAE.

Each category is read and split exactly like a single-category dataset (its own InspectionDataModule),
then the splits are stacked; the label of an image is the index of its category in `categories`.
Batches are (images (B, C, S, S), sample indices (B,), labels (B,)).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from pipeline.data.datamodule import InspectionDataModule
from pipeline.data.images import ReadOptions
from pipeline.data.layout import DatasetLayoutError


def category_roots(data_cfg: DictConfig, seed: int) -> list[tuple[str, Path]]:
    """[(category name, root)] from data.categories / data.roots; built-in roots are generated when missing."""
    from pipeline.data.builtin import ensure_dataset

    names, roots = list(data_cfg.categories), list(data_cfg.get("roots") or [])
    if len(names) != len(roots) or not names:
        raise DatasetLayoutError(f"data.categories ({len(names)}) and data.roots ({len(roots)}) must list the same, "
                                 "non-zero number of entries")
    if len(set(names)) != len(names):
        raise DatasetLayoutError(f"data.categories has duplicates: {names}")
    return [(name, ensure_dataset(OmegaConf.merge(data_cfg, {"root": str(root)}), seed))
            for name, root in zip(names, roots)]


class ConditionalDataModule(pl.LightningDataModule):
    def __init__(self, roots: list[tuple[str, Path]], image_size: int, read_options: ReadOptions,
                 val_fraction: float, batch_size: int, num_workers: int = 0, seed: int = 0, strict_size: bool = True):
        super().__init__()
        self.categories = [name for name, _ in roots]
        self.parts = [InspectionDataModule(root, image_size, read_options, val_fraction, batch_size, num_workers,
                                           seed, strict_size) for _, root in roots]
        self.batch_size = batch_size
        self.read_options = read_options
        self.train_images = self.val_images = None  # (N, C, S, S), all categories stacked
        self.train_labels = self.val_labels = None  # (N,) category index of each image
        self.train_samples, self.val_samples, self.skipped = [], [], []

    def setup(self, stage: str | None = None) -> None:
        if self.train_images is not None:
            return
        for part in self.parts:
            part.setup("fit")
        self.read_options = self.parts[0].read_options  # the first category's reference size (strict mode)
        self.train_images = torch.cat([p.train_images for p in self.parts])
        self.val_images = torch.cat([p.val_images for p in self.parts])
        self.train_labels = torch.cat([torch.full((len(p.train_images),), k) for k, p in enumerate(self.parts)])
        self.val_labels = torch.cat([torch.full((len(p.val_images),), k) for k, p in enumerate(self.parts)])
        for part in self.parts:
            self.train_samples += part.train_samples
            self.val_samples += part.val_samples
            self.skipped += part.skipped

    @staticmethod
    def _indexed(images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
        return TensorDataset(images, torch.arange(len(images)), labels)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._indexed(self.train_images, self.train_labels), batch_size=self.batch_size,
                          shuffle=True, drop_last=len(self.train_images) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._indexed(self.val_images, self.val_labels), batch_size=self.batch_size, shuffle=False)
