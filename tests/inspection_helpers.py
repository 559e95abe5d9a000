"""Helpers for the inspection tests: an untrained but calibrated detector (inspection does not care
how good the model is, only that it judges every file exactly once) and inbox images."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.data.images import to_model_tensor
from pipeline.models.factory import build_network
from pipeline.scoring.detector import AnomalyDetector, DetectorSpec
from pipeline.scoring.scores import SCORE_NAMES
from tests.conftest import TINY, _part, write_png

SIZE = 48


def make_detector(folder: Path, n_calibration: int = 30) -> Path:
    """A tiny VAE (random weights, seed 0) calibrated on the scores of n normal parts; saved to folder."""
    torch.manual_seed(0)
    rng = np.random.default_rng(123)
    spec = DetectorSpec(model_kind="vae", in_channels=1, image_size=32, latent_dim=4, hidden_channels=[8, 16],
                        recon_loss="bce", mc_samples=2, alpha=0.2, expected_size=[SIZE, SIZE])
    detector = AnomalyDetector(build_network("vae", 1, 32, 4, [8, 16]), spec)
    images = torch.stack([to_model_tensor(_part(rng, SIZE)[:, :, None], 32) for _ in range(n_calibration)])
    out = detector.score_batch(images)
    detector.calibrate({k: out[k].numpy() for k in SCORE_NAMES})
    return detector.save(folder)


def add_parts(inbox: Path, names: list[str], seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    return [write_png(inbox / name, _part(rng, SIZE)) for name in names]


def add_dark(inbox: Path, name: str) -> Path:
    """An all-black image: the untrained detector scores it far above every normal part."""
    return write_png(inbox / name, np.zeros((SIZE, SIZE), np.uint8))


def inspect_overrides(tmp_path: Path, inbox: Path, out: Path, detector: Path | str, *extra: str) -> list[str]:
    return [*TINY, f"output_root={tmp_path / 'outputs'}", f"tracking.store_dir={tmp_path / 'mlruns'}",
            f"inspect.inbox={inbox}", f"inspect.output_dir={out}", f"inspect.model={detector}",
            "inspect.min_age_seconds=0", *extra]


def results(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv")


def ledger_rows(out: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(out / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM files ORDER BY id").fetchall()
    finally:
        db.close()
