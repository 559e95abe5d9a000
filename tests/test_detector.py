"""The detector API without training: save/load round trip, atomic save, the decision recalibrated from stored
calibration scores, and the three levels of output (scores, decision, label) agreeing with each other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, compose
from pipeline.detector import AnomalyDetector
from pipeline.detector import detector as detector_module
from pipeline.detector import fitting
from pipeline.detector.decision import UnableToFlag, check_and_decide
from pipeline.scoring import scores as S
from pipeline.scoring.threshold import conformal_p_values, conformal_threshold
from tests.detectors import fit_by_hand, parts, small_detector


@pytest.fixture(scope="module")
def fitted() -> AnomalyDetector:
    """A 16 px detector with the learned map (random weights), standardized and calibrated by hand."""
    detector = small_detector(head=True, map="head")
    return fit_by_hand(detector, parts(8, image_size=16, seed=1), parts(30, image_size=16, seed=2))


def test_save_and_load_give_the_same_scores_maps_and_decision(fitted, tmp_path):
    x = parts(6, image_size=16, seed=3)
    extra = (*S.MONTE_CARLO_SCORES, *S.STRUCTURE_SCORES)
    before = fitted.score(x, extra=extra, keep=("map", "reconstruction"))
    loaded = AnomalyDetector.load(fitted.save(tmp_path / "det"))
    after = loaded.score(x, extra=extra, keep=("map", "reconstruction"))
    assert set(after) == set(before) and S.FUSED in after
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert loaded.thresholds_ == fitted.thresholds_ and loaded.spec.to_json() == fitted.spec.to_json()
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == ["detector.json", "weights.pt"]
    np.testing.assert_array_equal(loaded.predict(x), fitted.predict(x))


def assert_level_round_trips(detector: AnomalyDetector, prefix: str, score: str, tmp_path) -> None:
    """A fitted level's weights are in weights.pt ('<prefix>.*'); a loaded copy scores exactly alike and its ONNX
    export (<prefix>.onnx) within float tolerance."""
    from pipeline.export.onnx import OnnxDetector, export_onnx

    folder = detector.save(tmp_path / "det")
    assert any(key.startswith(f"{prefix}.") for key in torch.load(folder / "weights.pt", weights_only=True))
    x = parts(6, image_size=16, seed=3)
    loaded = AnomalyDetector.load(folder)
    expected, got = detector.score(x, keep=()), loaded.score(x, keep=())
    np.testing.assert_array_equal(got[score], expected[score])
    np.testing.assert_array_equal(got["fused"], expected["fused"])
    export_onnx(loaded, tmp_path / "onnx", opset=17)
    assert (tmp_path / "onnx" / f"{prefix}.onnx").is_file()
    onnx = OnnxDetector(tmp_path / "onnx").score(x.numpy())
    np.testing.assert_allclose(onnx[score], expected[score], rtol=1e-4, atol=1e-6)


def test_the_linear_level_is_saved_loaded_and_exported_with_the_detector(tmp_path):
    """A detector whose fused score keeps linear_max: the level's projection is in weights.pt ('linear.*'), a loaded
    copy and the ONNX export (linear.onnx) score exactly alike."""
    detector = small_detector(head=True, map="head", components=["linear_max"])
    fitting.fit_linear_level(detector, parts(40, image_size=16, seed=4), seed=0)
    fit_by_hand(detector, parts(8, image_size=16, seed=1), parts(30, image_size=16, seed=2))
    assert detector.spec.validation["fused_components"] == ["linear_max"] and detector.spec.linear["n_components"] >= 1
    assert_level_round_trips(detector, "linear", "linear_max", tmp_path)


def test_the_nearest_parts_level_measures_the_distance_to_the_closest_training_images():
    """A training image is at distance 0 from itself (k=1); with k=2 its distance is half that to its nearest other
    image; a part unlike all of them is farther than any of them; a coarse copy never upsamples."""
    from pipeline.models.nearest import NearestLevel

    train = parts(20, image_size=16, seed=4)
    level = NearestLevel.fit(train, k=1, side=8)
    assert level.references.shape == (20, 64) and torch.allclose(level(train), torch.zeros(20), atol=1e-3)
    pair = NearestLevel.fit(train, k=2, side=8)
    others = torch.cdist(pair.coarse(train), pair.coarse(train)).fill_diagonal_(float("inf")).min(dim=1).values
    torch.testing.assert_close(pair(train), others / 8 / 2, atol=1e-3, rtol=1e-3)  # RMS over the 64 pixels, mean of 2
    wrong = 1.0 - train[:3]  # the negative of a part: unlike every good part as a whole
    assert pair(wrong).min() > pair(parts(20, image_size=16, seed=5)).max()
    assert NearestLevel.fit(train, k=1, side=32).coarse(train).shape == (20, 256)  # 16 px stays 16 px
    with pytest.raises(ValueError, match="only 20"):
        NearestLevel.fit(train, k=21, side=8)


def test_the_nearest_parts_level_is_saved_loaded_and_exported_with_the_detector(tmp_path):
    """A detector whose fused score keeps nearest_distance: the level's copies are in weights.pt ('nearest.*'), a
    loaded copy and the ONNX export (nearest.onnx) score alike; a texture (the global level draws a blur) gets no
    level at all."""
    detector = small_detector(head=True, map="head", components=["map_max", "nearest_distance"], nearest_k=3,
                              nearest_side=8)
    fitting.fit_nearest_level(detector, parts(40, image_size=16, seed=4))
    fit_by_hand(detector, parts(8, image_size=16, seed=1), parts(30, image_size=16, seed=2))
    assert detector.spec.validation["fused_components"] == ["map_max", "nearest_distance"]
    assert detector.spec.nearest == {"n_references": 40, "n_features": 64, "k": 3, "grid": 8}
    assert_level_round_trips(detector, "nearest", "nearest_distance", tmp_path)
    texture = small_detector(components=["map_max", "nearest_distance"], nearest_k=3, nearest_side=8)
    texture.spec.validation["global_detail_error_ratio"] = 0.9  # the global level misses 90 % of the detail, over
    texture.spec.model["global_detail_limit"] = 0.5  # the limit
    fitting.fit_nearest_level(texture, parts(40, image_size=16, seed=4))
    assert texture.nearest is None and texture.spec.nearest is None


def test_a_nearest_parts_level_without_its_settings_is_refused_before_training():
    with pytest.raises(ValueError, match="nearest_k"):  # AnomalyDetector.from_config checks before any training
        detector_module.check_settings(small_detector(components=["map_max", "nearest_distance"], nearest_k=0).spec)


def test_the_fit_leaves_out_a_linear_level_that_lowers_the_validation():
    """fit_components with a validation draw on which linear_max only adds noise: the level is neither kept nor
    saved, its gain is recorded."""
    detector = small_detector(components=["map_max", "linear_max"])  # the residual map: its maximum varies
    fitting.fit_linear_level(detector, parts(40, image_size=16, seed=4), seed=0)
    selection = detector.score(parts(8, image_size=16, seed=1), keep=())
    rng = np.random.default_rng(0)
    truth = np.r_[np.zeros(40, int), np.ones(40, int)]

    def like_selection(name: str, z: np.ndarray) -> np.ndarray:  # z-scores on the selection images' own scale
        logs = np.log(selection[name])
        return np.exp(logs.mean() + logs.std() * z)

    draw = {"truth": truth, "out": {"map_max": like_selection("map_max", rng.normal(0, 1, 80) + 3 * truth),
                                    "linear_max": like_selection("linear_max", rng.normal(0, 3, 80))}}
    fitting.fit_components(detector, selection, draw)
    assert detector.linear is None and detector.spec.linear is None
    assert detector.spec.validation["fused_components"] == ["map_max"]
    assert detector.spec.validation["gain.linear_max"] < 0
    assert "linear_max" not in detector.score(parts(2, image_size=16, seed=3), keep=())


def test_a_failed_save_leaves_no_partial_folder_and_the_previous_detector_intact(fitted, tmp_path, monkeypatch):
    folder = fitted.save(tmp_path / "det")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the weights are written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(detector_module.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        fitted.save(tmp_path / "new")
    with pytest.raises(OSError, match="No space"):
        fitted.save(folder)  # replacing an existing detector
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det"]  # no 'new', no hidden temporary sibling
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    AnomalyDetector.load(folder)  # still loads, checksum verified


def test_set_decision_recalibrates_from_the_stored_calibration_scores(fitted):
    detector = AnomalyDetector(fitted.spec.__class__(**json.loads(fitted.spec.to_json())), fitted.vae, fitted.head)
    stored = {name: np.asarray(v) for name, v in detector.spec.calibration_scores.items()}
    assert set(S.SCORE_NAMES) - set(S.LEVEL_SCORES) <= set(stored) and all(len(v) == 30 for v in stored.values())
    assert "linear_max" not in stored  # fitted by hand: no linear level, no score of it
    for score, alpha in (("fused", 0.2), ("neg_iwae", 0.1), ("map_topk", 0.05)):
        detector.set_decision(score=score, alpha=alpha)
        assert detector.threshold_ == conformal_threshold(stored[score], alpha)
        np.testing.assert_array_equal(detector.calibration_scores_, stored[score])
    detector.set_decision(alpha=0.01)  # 30 calibration images cannot support 1 %: +inf, nothing flagged
    assert detector.threshold_ == float("inf")
    with pytest.raises(ValueError, match="score 'nope' has no calibration scores"):
        detector.set_decision(score="nope")
    with pytest.raises(ValueError, match=r"score.alpha must be in \(0, 1\)"):
        detector.set_decision(alpha=1.5)
    assert detector.spec.score == "map_topk" and detector.spec.alpha == 0.01  # a refused change changes nothing


def test_scores_decision_function_p_values_and_predict_agree(fitted):
    x = torch.cat([parts(6, image_size=16, seed=4), torch.zeros(2, 1, 16, 16)])  # 6 parts, 2 black images
    detector = AnomalyDetector(fitted.spec.__class__(**json.loads(fitted.spec.to_json())), fitted.vae, fitted.head)
    detector.set_decision(score="recon_error", alpha=0.2)
    scores = detector.decision_function(x)
    np.testing.assert_array_equal(scores, detector.score(x, keep=())["recon_error"])
    p = detector.p_values(scores)
    np.testing.assert_allclose(p, conformal_p_values(detector.calibration_scores_, scores))
    labels = detector.predict(x)
    assert labels.dtype.kind == "i" and set(labels) <= {0, 1}
    np.testing.assert_array_equal(labels, (scores > detector.threshold_).astype(int))
    np.testing.assert_array_equal(labels, (p <= 0.2).astype(int))  # the threshold is the p-value cut
    assert labels[-2:].tolist() == [1, 1]  # higher score = more anomalous, 1 = anomaly


def test_a_setting_fixed_at_training_cannot_be_overridden_at_score_time(fitted):
    stored = fitted.spec.fixed_settings()
    assert stored["detect.map"] == "head" and stored["model.latent_dim"] == 3 and stored["data.image_size"] == 16
    for override, key in (("detect.map_sigma=5", "detect.map_sigma"), ("model.latent_dim=8", "model.latent_dim"),
                          ("head.widths=[8,16]", "head.widths"), ("data.image_size=32", "data.image_size"),
                          ("model=ae", "model.kind")):
        cfg = compose([override])  # only what the command line names is checked
        detector = AnomalyDetector(fitted.spec.__class__(**json.loads(fitted.spec.to_json())), fitted.vae, fitted.head)
        with pytest.raises(ConfigError, match=rf"{override.replace('[', '.').replace(']', '.')}.*{key} is fixed"):
            check_and_decide(detector, cfg, {"model_source": "the test detector"})
    # The decision may change at score time: recalibrated from the stored scores, no error.
    detector = AnomalyDetector(fitted.spec.__class__(**json.loads(fitted.spec.to_json())), fitted.vae, fitted.head)
    cfg = compose(["score.score=neg_elbo", "score.alpha=0.1", f"detect.map={stored['detect.map']}"])  # same value: fine
    check_and_decide(detector, cfg, provenance := {"model_source": "the test detector"})
    assert detector.spec.score == "neg_elbo" and detector.threshold_ == conformal_threshold(
        fitted.spec.calibration_scores["neg_elbo"], 0.1)
    assert provenance["unable_to_flag"] == ""


def test_a_threshold_that_cannot_fire_is_refused_unless_allowed(fitted):
    spec_json = fitted.spec.to_json()
    detector = AnomalyDetector(fitted.spec.__class__(**json.loads(spec_json)), fitted.vae, fitted.head)
    with pytest.raises(UnableToFlag, match=r"30 calibration images and that alpha needs 99.*score.alpha=0.0323"):
        check_and_decide(detector, compose(["score.alpha=0.01"]), {"model_source": "x"})
    provenance = {"model_source": "x"}
    check_and_decide(detector, compose(["score.alpha=0.01", "score.allow_unable_to_flag=true"]), provenance)
    assert "cannot flag anything at alpha=0.01" in provenance["unable_to_flag"]
    assert detector.predict(torch.zeros(2, 1, 16, 16)).tolist() == [0, 0]  # judged, nothing flagged
    # A command that does not judge images (export, report, calibrate) is not refused.
    detector = AnomalyDetector(fitted.spec.__class__(**json.loads(spec_json)), fitted.vae, fitted.head)
    check_and_decide(detector, compose(["score.alpha=0.01"]), provenance := {"model_source": "x"}, judges=False)
    assert provenance["unable_to_flag"]
