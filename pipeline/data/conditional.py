"""Several MVTec roots (one per product category) as one labelled dataset, for the conditional VAE.

Each category is read and split exactly like a single-category dataset (its own InspectionDataModule),
then each part (training, selection, calibration) is stacked; the label of an image is the index of its
category in `categories`. `build_datamodule` picks this or the single-category module from the config.
Batches are (images (B, C, S, S), sample indices (B,), labels (B,)).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from pipeline.data.builtin import category_roots
from pipeline.data.datamodule import InspectionDataModule, SplitSettings, drop_last
from pipeline.data.images import ReadOptions
from pipeline.data.splits import SplitSizes

PARTS = ("train", "selection", "calibration")


class ConditionalDataModule(pl.LightningDataModule):
    def __init__(self, roots: list[tuple[str, Path]], image_size: int, read_options: ReadOptions,
                 split: SplitSettings, batch_size: int, num_workers: int = 0, seed: int = 0, strict_size: bool = True):
        super().__init__()
        self.categories = [name for name, _ in roots]
        self.parts = [InspectionDataModule(root, image_size, read_options, split, batch_size, num_workers, seed,
                                           strict_size) for _, root in roots]
        self.batch_size = batch_size
        self.read_options = read_options
        self.sizes: SplitSizes | None = None
        self.skipped: list = []
        for part in PARTS:  # (N, C, S, S) images of all categories stacked, (N,) category of each, samples
            setattr(self, f"{part}_images", None)
            setattr(self, f"{part}_labels", None)
            setattr(self, f"{part}_samples", [])

    def setup(self, stage: str | None = None) -> None:
        if self.train_images is not None:
            return
        for part in self.parts:
            part.setup("fit")
        self.read_options = self.parts[0].read_options  # the first category's reference size (strict mode)
        for name in PARTS:
            images = [getattr(p, f"{name}_images") for p in self.parts]
            setattr(self, f"{name}_images", torch.cat(images))
            setattr(self, f"{name}_labels", torch.cat([torch.full((len(x),), k) for k, x in enumerate(images)]))
            setattr(self, f"{name}_samples", [s for p in self.parts for s in getattr(p, f"{name}_samples")])
        self.skipped = [e for p in self.parts for e in p.skipped]
        sizes = [p.sizes for p in self.parts]
        # Calibration is per category (one threshold each), so alpha is supported only if every category supports it.
        smallest = min(sizes, key=lambda z: z.n_calibration)
        self.sizes = SplitSizes(sum(z.n_train for z in sizes), sum(z.n_selection for z in sizes),
                                smallest.n_calibration, smallest.alpha, smallest.images_for_alpha)

    @staticmethod
    def _indexed(images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
        return TensorDataset(images, torch.arange(len(images)), labels)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._indexed(self.train_images, self.train_labels), batch_size=self.batch_size,
                          shuffle=True, drop_last=drop_last(len(self.train_images), self.batch_size, self.trainer))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._indexed(self.selection_images, self.selection_labels), batch_size=self.batch_size,
                          shuffle=False)


def build_datamodule(cfg: DictConfig, root: Path) -> pl.LightningDataModule:
    """The datamodule the config describes: one category, or several labelled ones (data.categories)."""
    options = ReadOptions.from_config(cfg.data)
    split = SplitSettings(alpha=float(cfg.score.alpha), **cfg.data.split)
    common = dict(image_size=cfg.data.image_size, read_options=options, split=split, batch_size=cfg.data.batch_size,
                  num_workers=cfg.data.num_workers, seed=cfg.seed, strict_size=cfg.data.strict_size)
    if cfg.data.get("categories"):
        if split.scheme == "cross":
            raise ValueError("data.split.scheme=cross is for one category; a conditional detector (data.categories) "
                             "calibrates each category on its own split: use data.split.scheme=auto or split")
        common["split"] = replace(split, scheme="split")  # auto: a conditional model's categories share one network
        return ConditionalDataModule(category_roots(cfg.data, cfg.seed), **common)
    return InspectionDataModule(root, **common)
