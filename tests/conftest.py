"""Shared fixtures: a tiny hand-made dataset in the MVTec AD layout and the real config, shrunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import compose

TINY = [
    "data.image_size=32", "data.batch_size=8", "data.generate.image_size=48",
    "model.hidden_channels=[8,16]", "model.latent_dim=4", "model.kl_warmup_epochs=1",
    "trainer.max_epochs=2", "trainer.min_epochs=1", "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu", "detect.mc_samples=2", "score.alpha=0.2",
]


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """The real conf/ at a tiny size, writing only under tmp_path."""
    return [*TINY, f"output_root={tmp_path / 'outputs'}", f"tracking.store_dir={tmp_path / 'mlruns'}",
            "tracking.uri=null", *extra]


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*extra: str):
        return compose(tiny_overrides(tmp_path, *extra))
    return make


def _part(rng: np.random.Generator, size: int) -> np.ndarray:
    """A bright disc on a dark background with a little jitter and noise."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size / 2 + rng.normal(0, 1, 2)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < (size / 3) ** 2
    return np.clip(40 + 160 * disc + rng.normal(0, 6, (size, size)), 0, 255).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """<tmp>/tiny: 24 train/good, 6 test/good, 6 test/scratch with masks, size 48x48 grayscale."""
    return make_tiny_dataset(tmp_path / "tiny")


def make_tiny_dataset(root: Path) -> Path:
    size, rng = 48, np.random.default_rng(0)
    for i in range(24):
        write_png(root / "train" / "good" / f"{i:03d}.png", _part(rng, size))
    for i in range(6):
        write_png(root / "test" / "good" / f"{i:03d}.png", _part(rng, size))
        image, mask = _part(rng, size), np.zeros((size, size), np.uint8)
        row = 10 + i * 4
        image[row:row + 2, 8:40] = 255 - image[row:row + 2, 8:40]
        mask[row:row + 2, 8:40] = 255
        write_png(root / "test" / "scratch" / f"{i:03d}.png", image)
        write_png(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """Train twice, promote and score through a real `mlflow server` (MLFLOW_TRACKING_URI points at it);
    shared by the registry/review tests and the browser test. See tests/served.py."""
    from tests.served import served_pipeline

    with served_pipeline(tmp_path_factory.mktemp("served")) as state:
        yield state
