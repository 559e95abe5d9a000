"""Shared fixtures: a tiny hand-made dataset in the MVTec AD layout, the real config shrunk, and one tiny
detector trained through the CLI that many tests share (read-only)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import compose

TINY = [
    "data.image_size=32", "data.batch_size=8", "data.generate.image_size=48",
    # 24 normal images: 13 training, 4 selection, 7 calibration (alpha=0.2 needs at least 4); one detector (the
    # cross scheme's K members have their own tests: tests/test_cross_conformal.py)
    "data.split.min_train=8", "data.split.min_selection=4", "data.split.scheme=split",
    "model.hidden_channels=[8,16]", "model.latent_dim=4", "model.kl_warmup_epochs=1",
    "model.local.hidden_channels=[4]", "model.local.latent_dim=2",
    "head.widths=[4,8]", "head.steps=4", "head.validate_every=2", "head.batch_size=4",
    "trainer.max_epochs=2", "trainer.min_epochs=1", "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu", "detect.mc_samples=2", "score.alpha=0.2", "report.enabled=false",
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


def cli(*args: str, expect: int = 0) -> dict:
    """Run `python -m pipeline <args>` in this process; returns its JSON summary (the last stdout block)."""
    from pipeline.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    text = out.getvalue()
    assert code == expect, f"pipeline {' '.join(args)} exited {code}:\n{text[-3000:]}"
    start = text.rfind("\n{") + 1 if "\n{" in text else text.find("{")
    return json.loads(text[start:]) if start >= 0 and text[start:].strip() else {}


def snapshot(folder: Path) -> dict:
    """Every entry under `folder` as it is on disk, links not followed: (is a link, size, mtime, content hash
    or link target). Equal snapshots: nothing there was written, moved, deleted or re-linked."""
    def content(p: Path):
        if p.is_symlink():
            return os.readlink(p)
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return {p.relative_to(folder).as_posix(): (p.is_symlink(), p.lstat().st_size, p.lstat().st_mtime_ns, content(p))
            for p in sorted(folder.rglob("*"))}


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


@dataclass
class Trained:
    """A detector trained by `python -m pipeline train` into a local SQLite store (tiny-vae version 1,
    the champion). Shared by many tests: they may add scoring runs to its store, never change the model."""

    base: Path               # tmp folder holding the dataset, outputs/ and mlruns/
    root: Path               # the dataset
    summary: dict            # train's JSON summary
    overrides: list[str]     # the overrides it was trained with (tracking on, local store)

    @property
    def detector_dir(self) -> Path:
        return Path(self.summary["detector_dir"])

    def with_(self, *extra: str) -> list[str]:
        return [*self.overrides, *extra]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    base = tmp_path_factory.mktemp("trained")
    root = make_tiny_dataset(base / "tiny")
    overrides = tiny_overrides(base, f"data.root={root}")
    return Trained(base, root, cli("train", *overrides), overrides)


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """Train twice, promote and score through a real `mlflow server` (MLFLOW_TRACKING_URI points at it);
    shared by the registry/review tests and the browser test. See tests/served.py."""
    from tests.served import served_pipeline

    with served_pipeline(tmp_path_factory.mktemp("served")) as state:
        yield state
