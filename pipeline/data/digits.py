"""scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped inside scikit-learn) written as one-class
datasets in the MVTec AD layout (no masks), in two protocols:

* one vs rest, `data/digits/digit_<d>/`: normal = digit d (train/good, test/good), anomalies = the other
  nine digits (test/digit_<k>/, `n_test_anomaly_per_digit` images of each);
* leave one class out, `data/digits/loco_<d>/`: normal = the other nine digits, anomaly = digit d
  (test/digit_<d>/: all of its images, or `n_test_heldout` of them).

Every digit's images are shuffled once (from the seed) and cut into a test share (the first
`test_good_fraction`) and a training share (the rest). A task trains only on training shares of its normal
digits and tests its normal class on their test shares, so no task ever trains on one of its own test
images; both protocols use the same cut.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS = tuple(range(10))
TASKS = tuple([f"digit_{d}" for d in DIGITS] + [f"loco_{d}" for d in DIGITS])  # every task folder name


def task_splits(task: str, order: dict[int, np.ndarray], test_good_fraction: float,
                n_test_anomaly_per_digit: int, n_test_heldout: int | None) -> dict[str, np.ndarray]:
    """{folder ("train/good", "test/good", "test/digit_<k>"): image indices} of one task.

    `order[d]` is digit d's image indices in their shuffled order."""
    protocol, digit = task.rsplit("_", 1)
    digit = int(digit)
    n_test = {d: int(round(len(order[d]) * test_good_fraction)) for d in DIGITS}
    if protocol == "digit":
        splits = {"train/good": order[digit][n_test[digit]:], "test/good": order[digit][:n_test[digit]]}
        for other in DIGITS:
            if other != digit:
                # The anomalies for a task are the last images of each other digit, so that they do not
                # coincide with the images another task trains on first.
                splits[f"test/digit_{other}"] = order[other][-n_test_anomaly_per_digit:]
        return splits
    if protocol == "loco":
        normal = [d for d in DIGITS if d != digit]
        held_out = order[digit] if n_test_heldout is None else order[digit][:int(n_test_heldout)]
        return {"train/good": np.concatenate([order[d][n_test[d]:] for d in normal]),
                "test/good": np.concatenate([order[d][:n_test[d]] for d in normal]),
                f"test/digit_{digit}": held_out}
    raise ValueError(f"unknown digits task {task!r}; known: digit_<d> (one vs rest), loco_<d> (leave one out)")


def _write_task(final: Path, splits: dict[str, np.ndarray], images: np.ndarray) -> None:
    partial = final.with_name(f"{final.name}.partial")
    for folder, indices in splits.items():
        target = partial / folder
        target.mkdir(parents=True, exist_ok=True)
        for index in indices:
            Image.fromarray(images[index], mode="L").save(target / f"{index:04d}.png")
    os.replace(partial, final)  # a killed run leaves only a *.partial folder behind


def generate_digits(root: Path | str, *, tasks: tuple[str, ...] | list[str] = TASKS, seed: int = 0,
                    test_good_fraction: float = 0.3, n_test_anomaly_per_digit: int = 20,
                    n_test_heldout: int | None = None, progress=None) -> list[Path]:
    """Write the given task folders (default: all twenty) under `root`; those that exist are left as they are."""
    from sklearn.datasets import load_digits

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown digits tasks {unknown}; known: digit_<d> (one vs rest), loco_<d> (leave one out)")
    root = Path(root)
    digits = load_digits()
    images = np.clip(digits.images / 16.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
    rng = np.random.default_rng(seed)
    order = {d: rng.permutation(np.flatnonzero(digits.target == d)) for d in DIGITS}
    written = []
    for task in tasks:
        final = root / task
        if final.exists():
            continue
        splits = task_splits(task, order, test_good_fraction, n_test_anomaly_per_digit, n_test_heldout)
        _write_task(final, splits, images)
        written.append(final)
        if progress:
            progress(f"digits: wrote {final} ({len(splits['train/good'])} train, {len(splits['test/good'])} good test)")
    return written
