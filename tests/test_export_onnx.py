"""ONNX export: ONNX Runtime alone (OnnxDetector) gives the fused scores, every base score, the anomaly maps,
p-values and decisions of the PyTorch detector."""

import json

import numpy as np

from pipeline.__main__ import main
from pipeline.data.datasets import load_images
from pipeline.data.layout import scan_test
from pipeline.detector import AnomalyDetector
from pipeline.export.onnx import OnnxDetector
from pipeline.scoring.scores import BASE_SCORES, FUSED, LEVEL_SCORES


def test_exported_onnx_model_scores_like_the_torch_detector(trained, tmp_path, capsys):
    overrides = trained.with_("tracking.enabled=false", f"detector={trained.detector_dir}",
                              f"export.output_dir={tmp_path / 'onnx'}")
    assert main(["export", *overrides]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_abs_score_diff"] < 1e-2 and summary["max_abs_map_diff"] < 1e-4  # its own check on random images
    torch_detector = AnomalyDetector.load(trained.detector_dir)
    restorer = ["restorer.onnx"] if torch_detector.spec.reconstruction == "local" else []  # the two-level VAE's
    linear = ["linear.onnx"] if torch_detector.spec.linear else []  # where the fit kept the linear level
    nearest = ["nearest.onnx"] if torch_detector.spec.nearest else []  # and the nearest-parts level
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted(
        ["decoder.onnx", "detector.json", "encoder.onnx", "head.onnx", *restorer, *linear, *nearest])

    exported = OnnxDetector(tmp_path / "onnx")
    assert exported.spec.calibration_scores == torch_detector.spec.calibration_scores
    images, _, _ = load_images(scan_test(trained.root), 32, torch_detector.spec.read_options)  # (12, 1, 32, 32)
    expected = torch_detector.score(images, keep=("map", "reconstruction"))
    got = exported.score(images.numpy())
    np.testing.assert_allclose(got["reconstruction"], expected["reconstruction"], rtol=1e-4, atol=1e-5)
    for name in (*BASE_SCORES, *LEVEL_SCORES):
        assert (name in got) == (name in expected), name
        if name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # The fused score standardizes logit(map_max) by its spread on 4 selection images: float rounding of a
    # probability near 0 is magnified there, so it agrees to a few thousandths (of a range of about 30).
    np.testing.assert_allclose(got[FUSED], expected[FUSED], rtol=1e-4, atol=5e-3)
    np.testing.assert_allclose(got["map"], expected["map"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got["is_anomaly"], torch_detector.predict(images))
    np.testing.assert_allclose(got["p_value"], torch_detector.p_values(expected[FUSED]))
    assert got["is_anomaly"].sum() > 0  # the comparison covers flagged images too (alpha=0.2 on this test split)
