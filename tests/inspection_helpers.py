"""Helpers for the inspection tests: an untrained but calibrated detector (tests/detectors.make_detector:
inspection does not care how good the model is, only that it judges every file exactly once) and inbox images."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import TINY, _part, write_png
from tests.detectors import make_detector

__all__ = ["SIZE", "add_dark", "add_parts", "inspect_overrides", "ledger_rows", "make_detector", "results"]

SIZE = 48


def add_parts(inbox: Path, names: list[str], seed: int = 0, gain: float = 1.0) -> list[Path]:
    """Normal parts; `gain` < 1 darkens them (a lighting change: drift, not a defect)."""
    rng = np.random.default_rng(seed)
    return [write_png(inbox / name, np.clip(_part(rng, SIZE) * gain, 0, 255).astype(np.uint8)) for name in names]


def add_dark(inbox: Path, name: str, mark: int = 0) -> Path:
    """An all-black image (its first pixel `mark`, so that several differ): the untrained detector scores it
    far above every normal part."""
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[0, 0] = mark
    return write_png(inbox / name, image)


def inspect_overrides(tmp_path: Path, inbox: Path, out: Path, detector: Path | str, *extra: str) -> list[str]:
    return [*TINY, f"output_root={tmp_path / 'outputs'}", f"tracking.store_dir={tmp_path / 'mlruns'}",
            f"inspect.inbox={inbox}", f"inspect.output_dir={out}", f"detector={detector}",
            "inspect.min_age_seconds=0", *extra]


def results(out: Path) -> pd.DataFrame:
    """The cumulative results table as a user reads it: the union of its parts, one per batch."""
    return pd.read_parquet(out / "results")


def ledger_rows(out: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(out / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM files ORDER BY id").fetchall()
    finally:
        db.close()
