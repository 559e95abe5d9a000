"""scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped inside scikit-learn) written as ten
one-class datasets in the MVTec AD layout: data/digits/digit_<d>/ with normal = digit d and
anomalies = the other nine digits (test/digit_<k>/), no masks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def generate_digits(root: Path | str, *, seed: int = 0, test_good_fraction: float = 0.3,
                    n_test_anomaly_per_digit: int = 20, progress=None) -> list[Path]:
    """Write digit_0 ... digit_9 under `root`; task folders that exist already are left as they are."""
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    images = np.clip(digits.images / 16.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
    rng = np.random.default_rng(seed)
    order = {d: rng.permutation(np.flatnonzero(digits.target == d)) for d in range(10)}
    written = []
    for normal in range(10):
        final = root / f"digit_{normal}"
        if final.exists():
            continue
        partial = root / f"digit_{normal}.partial"
        own = order[normal]
        n_test = int(round(len(own) * test_good_fraction))
        splits = {"train/good": own[n_test:], "test/good": own[:n_test]}
        for other in range(10):
            if other != normal:
                # The anomalies for a task are the last images of each other digit, so that they do not
                # coincide with the images another task trains on first.
                splits[f"test/digit_{other}"] = order[other][-n_test_anomaly_per_digit:]
        for folder, indices in splits.items():
            target = partial / folder
            target.mkdir(parents=True, exist_ok=True)
            for index in indices:
                Image.fromarray(images[index], mode="L").save(target / f"{index:04d}.png")
        os.replace(partial, final)  # a killed run leaves only a *.partial folder behind
        written.append(final)
        if progress:
            progress(f"digits: wrote {final} ({len(splits['train/good'])} train, {n_test} good test)")
    return written
