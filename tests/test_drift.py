"""The drift test: statistics against hand-computed values, each process shift detected and named, a batch
with 20 % defects not called drift, and the measurement harness on a small generated dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.bench.drift import blur, gain, main as drift_main, measure_drift, process_shifts, zoom
from pipeline.config import compose
from pipeline.data.datamodule import SplitSettings
from pipeline.data.images import to_model_tensor
from pipeline.detector.checks import DriftSettings
from pipeline.data.generators import DEFECT_TYPES, generate_category, render_sample
from pipeline.scoring.drift import FEATURES, drift_test, image_statistics

ORIGINAL, MODEL = 128, 64  # the built-in data's original side and the model's input side


def column(name: str) -> int:
    return FEATURES.index(name)


@pytest.fixture(scope="module")
def settings() -> dict:
    """The drift settings of the real config, so the tests check the defaults the product ships."""
    inspect = compose([]).inspect
    return {"alpha": inspect.drift_alpha, "trim": inspect.drift_trim, "min_images": inspect.drift_min_images,
            "min_shift": inspect.drift_min_shift, "test": inspect.drift_test}


def statistics(arrays: list[np.ndarray]) -> np.ndarray:
    """Original (H, W) uint8 images -> (N, F), through the model's own resize."""
    return image_statistics(torch.stack([to_model_tensor(a[:, :, None], MODEL) for a in arrays]))


@pytest.fixture(scope="module")
def fabric() -> dict:
    """Generated fabric: 120 reference images, 80 normal and 20 defective batch images (originals)."""
    def render(split: str, indices) -> list[np.ndarray]:
        return [render_sample("fabric", split, i, image_size=ORIGINAL)[0] for i in indices]

    defects = [a for d in DEFECT_TYPES["fabric"] for a in render(f"test/{d}", range(4))]  # 20 images
    return {"reference": statistics(render("train/good", range(120))), "good": render("test/good", range(80)),
            "defects": defects}


def test_statistics_hand_computed_on_a_grating():
    """A vertical sinusoid of period 8 px around 0.5: its mean, its period, half of it bright."""
    x = np.arange(MODEL)
    grating = 0.5 + 0.25 * np.cos(2 * np.pi * x / 8.0)  # (S,)
    images = torch.tensor(np.tile(grating, (MODEL, 1)), dtype=torch.float32)[None, None]  # (1, 1, S, S)
    stats = image_statistics(images)[0]
    assert stats[column("mean_intensity")] == pytest.approx(0.5, abs=1e-6)
    assert stats[column("dominant_period")] == pytest.approx(8.0, rel=0.02)
    assert stats[column("bright_area")] == pytest.approx(0.5, abs=0.05)


def test_statistics_except_the_mean_ignore_a_gain_change(fabric):
    images = torch.stack([to_model_tensor(a[:, :, None], MODEL) for a in fabric["good"][:10]])  # (10, 1, S, S)
    before, after = image_statistics(images), image_statistics(0.8 * images)  # no clipping when darkening
    np.testing.assert_allclose(after[:, column("mean_intensity")], 0.8 * before[:, column("mean_intensity")], rtol=1e-6)
    others = [column(name) for name in FEATURES if name != "mean_intensity"]
    np.testing.assert_allclose(after[:, others], before[:, others], rtol=1e-5)


@pytest.mark.parametrize("shift, feature, words", [
    (lambda a: zoom(a, 1.15), "dominant_period", "larger repeating structures"),
    (lambda a: gain(a, 0.85), "mean_intensity", "darker"),
    (lambda a: gain(a, 1.15), "mean_intensity", "brighter"),
    (lambda a: blur(a, 1.0), "sharpness", "blurrier"),
], ids=["zoom", "darker", "brighter", "blur"])
def test_each_process_shift_is_drift_and_the_reason_names_it(fabric, settings, shift, feature, words):
    batch = statistics([shift(a[:, :, None])[:, :, 0] for a in fabric["good"]])
    result = drift_test(fabric["reference"], batch, **settings)
    assert result["tested"] and result["drifted"], result["reason"]
    assert feature in result["moved"] and words in result["reason"], result["reason"]


def test_a_batch_with_20_percent_defects_is_not_drift(fabric, settings):
    batch = statistics(fabric["good"] + fabric["defects"])  # 100 images, 20 defective
    result = drift_test(fabric["reference"], batch, **settings)
    assert result["tested"] and not result["drifted"], result["reason"]
    assert result["reason"] == "" and result["moved"] == []


def test_trimming_keeps_a_minority_of_outliers_from_looking_like_drift():
    """Hand-made statistics: 80 of 400 batch images far off in one feature; only the untrimmed test fires
    (once min_shift is off: the median of the whole batch moves by only about 0.3 standard deviations)."""
    reference = np.random.default_rng(0).normal(1.0, 0.1, (300, len(FEATURES)))
    batch = np.quantile(reference, (np.arange(400) + 0.5) / 400, axis=0)  # (400, F): spread like the reference
    batch[::5, column("contrast")] = 3.0
    assert not drift_test(reference, batch, alpha=0.01, trim=0.2)["drifted"]
    untrimmed = drift_test(reference, batch, alpha=0.01, trim=0.0, min_shift=0.0)
    assert untrimmed["moved"] == ["contrast"] and "higher-contrast" in untrimmed["reason"]


def test_a_small_but_significant_move_is_not_drift_below_min_shift():
    rng = np.random.default_rng(1)
    reference, batch = rng.normal(1.0, 0.1, (300, len(FEATURES))), rng.normal(1.0, 0.1, (2000, len(FEATURES)))
    batch[:, column("sharpness")] += 0.03  # 0.3 standard deviations: p is tiny with 2000 images
    result = drift_test(reference, batch, alpha=0.01, min_shift=0.5)
    assert result["features"]["sharpness"]["q_value"] < 1e-6 and not result["drifted"]
    assert drift_test(reference, batch, alpha=0.01, min_shift=0.0)["moved"] == ["sharpness"]


def test_the_reason_reports_direction_and_size():
    reference = np.ones((50, len(FEATURES))) + np.linspace(-0.01, 0.01, 50)[:, None]  # medians 1.0
    batch = reference[::-2].copy()  # 25 images spread like the reference
    batch[:, column("mean_intensity")] *= 0.85
    result = drift_test(reference, batch, alpha=0.01, min_images=20)
    assert result["moved"] == ["mean_intensity"]
    assert result["reason"] == "images darker than calibration (mean intensity -15 %)"


def test_no_test_below_the_minimum_batch(fabric, settings):
    result = drift_test(fabric["reference"], fabric["reference"][:5] * 2.0, **{**settings, "min_images": 20})
    assert not result["tested"] and not result["drifted"] and "below the minimum of 20" in result["reason"]


def test_measure_drift_on_a_small_generated_dataset(tmp_path):
    root = generate_category(tmp_path, "bracket", image_size=64, n_train=60, n_test_good=30, n_test_defect_per_type=2)
    # The reference is the detector's calibration share of train/good: 19 of 60 images at alpha=0.05.
    split = SplitSettings(alpha=0.05, min_selection=8, min_train=8)
    kwargs = dict(image_size=32, n_reference=18, batch_size=30, n_batches=20, seed=0,
                  drift=DriftSettings(min_images=20),
                  shifts=process_shifts(1.15, (0.85,), 1.0), defect_shares=(0.0, 0.2), split=split)
    result = measure_drift(root, **kwargs)
    assert set(result["shifts"]) == {"zoom_x1.15", "gain_x0.85", "blur_sigma1"}
    assert set(result["defect_shares"]) == {"0%", "20%"}
    assert result["n_reference"] == 18 and result["n_defective"] == 12
    for rate in [*result["shifts"].values(), *result["defect_shares"].values()]:
        assert rate["batches"] == 20 and rate["ci95"][0] <= rate["rate"] <= rate["ci95"][1]
    assert result["shifts"]["gain_x0.85"]["rate"] == 1.0 and result["defect_shares"]["0%"]["rate"] <= 0.1
    assert measure_drift(root, **kwargs) == result  # deterministic for a seed

    # The command line composes the real config (data.split, score.alpha, inspect.drift_*) into the same call.
    assert drift_main(["--root", str(root), "--json", str(tmp_path / "drift.json"), "data.image_size=32",
                       "data.split.min_selection=8", "data.split.min_train=8", "score.alpha=0.05",
                       "bench.drift.n_batches=3", "bench.drift.batch_size=20", "bench.drift.defect_shares=[0.0]"]) == 0
    written = json.loads((tmp_path / "drift.json").read_text())
    # 60 normal images are a small set (data.split.cross_below): the cross-conformal members calibrate on all of them
    assert written["n_reference"] == 60 and written["shifts"]["gain_x0.85"]["batches"] == 3
