"""Recalibration keeps the false-alarm promise only with exchangeable images: adding the normal images of a random
audit sample keeps the rate on new normal images at alpha; adding only the flagged false alarms (the highest-
scoring normal images) does not. Simulated with the detector's own decision code on a known normal score law."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.commands.calibrate import locate
from pipeline.detector import calibration as C
from pipeline.detector.spec import DetectorSpec
from pipeline.report.review_set import audit_indices
from tests.conftest import write_png

ALPHA, N_CALIBRATION, BATCHES, BATCH = 0.05, 99, 20, 100


def spec_with(calibration: np.ndarray) -> DetectorSpec:
    return DetectorSpec(in_channels=1, image_size=8, calibration_scores={"fused": calibration.tolist()}, alpha=ALPHA)


def false_alarm_rate(calibration: np.ndarray, new_normal: np.ndarray) -> float:
    return float((new_normal > C.thresholds(spec_with(calibration))[None]).mean())


def recalibrated(rng: np.random.Generator, take: str) -> np.ndarray:
    """Calibration scores after a line judged BATCHES batches of normal images and reviewers confirmed either the
    audit sample's images (random) or the flagged ones (score above the current threshold) as normal."""
    calibration = rng.normal(size=N_CALIBRATION)
    threshold = C.thresholds(spec_with(calibration))[None]
    added = []
    for b in range(BATCHES):
        batch = rng.normal(size=BATCH)  # normal images' scores
        if take == "audit":
            added.append(batch[sorted(audit_indices(BATCH, 10, b))])
        else:
            added.append(batch[batch > threshold])
    return np.concatenate([calibration, *added])


@pytest.mark.parametrize("take,low,high", [("audit", 0.035, 0.065), ("flagged", 0.0, 0.02)])
def test_only_a_random_audit_sample_keeps_the_promise(take, low, high):
    rng = np.random.default_rng(0)
    rates = [false_alarm_rate(recalibrated(rng, take), rng.normal(size=20_000)) for _ in range(30)]
    assert low <= np.mean(rates) <= high, f"{take}: mean false-alarm rate {np.mean(rates):.4f} at alpha {ALPHA}"


def test_the_audit_sample_is_random_and_reproducible():
    first, again = audit_indices(500, 10, 7), audit_indices(500, 10, 7)
    assert first == again and len(first) == 10 and all(0 <= i < 500 for i in first)
    picks = np.concatenate([sorted(audit_indices(100, 10, s)) for s in range(2000)])
    counts = np.bincount(picks, minlength=100)
    assert counts.min() > 120 and counts.max() < 290  # each index about 200 times: no index is favoured


def test_a_reviewed_image_is_read_only_inside_the_folder_it_was_judged_in(tmp_path, caplog):
    inbox = tmp_path / "inbox"
    for path in (inbox / "a.png", inbox / "processed" / "b.png", tmp_path / "outside" / "secret.png"):
        write_png(path, np.zeros((8, 8), np.uint8))
    (inbox / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    assert locate(str(inbox), "a.png") == inbox / "a.png"
    assert locate(str(inbox), "b.png") == inbox / "processed" / "b.png"  # moved there after it was judged
    assert locate(str(inbox), "link.png") is None and locate(str(inbox), "../outside/secret.png") is None
    assert f"leads outside {inbox} (to {tmp_path / 'outside' / 'secret.png'})" in caplog.text
