"""Torch datasets over samples: an in-memory cache for training, a streaming reader for scoring."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from pipeline.data.images import ImageReadError, ReadOptions, read_image, to_model_tensor
from pipeline.data.layout import Sample

log = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """Decodes one sample per access. A bad file does not raise: it comes back with `error` set
    (and a zero image) so that one corrupt file never stops a batch; callers record it per file."""

    def __init__(self, samples: Sequence[Sample], image_size: int, options: ReadOptions):
        self.samples = list(samples)
        self.image_size = image_size
        self.options = options

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        try:
            array = read_image(sample.path, self.options)  # (H, W, C) uint8
            image = to_model_tensor(array, self.image_size)  # (C, S, S)
            orig_hw = torch.tensor(array.shape[:2])
            error = ""
        except ImageReadError as err:
            image = torch.zeros(self.options.channels, self.image_size, self.image_size)
            orig_hw = torch.tensor([self.image_size, self.image_size])
            error = err.reason
        return {"image": image, "index": index, "orig_hw": orig_hw, "error": error}


def load_images(samples: Sequence[Sample], image_size: int, options: ReadOptions,
                progress: Callable[[int, int], None] | None = None
                ) -> tuple[torch.Tensor, list[Sample], list[ImageReadError]]:
    """Decode every sample into one (N, C, S, S) tensor; bad files are skipped and returned as errors."""
    tensors, kept, errors = [], [], []
    for count, sample in enumerate(samples, start=1):
        try:
            array = read_image(sample.path, options)
            tensors.append(to_model_tensor(array, image_size))
            kept.append(sample)
        except ImageReadError as err:
            log.warning("skipping %s", err)
            errors.append(err)
        if progress is not None:
            progress(count, len(samples))
    if not tensors:
        raise ImageReadError(samples[0].path.parent if samples else "?", "no readable image in this folder")
    return torch.stack(tensors), kept, errors


def reference_size(samples: Sequence[Sample], options: ReadOptions) -> tuple[int, int] | None:
    """(H, W) of the first readable image: the size the others are held to in strict mode."""
    for sample in samples:
        try:
            return tuple(read_image(sample.path, options).shape[:2])
        except ImageReadError:
            continue
    return None
