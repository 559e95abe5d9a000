"""ONNX export: ONNX Runtime gives the same recon_error scores and anomaly maps as the PyTorch detector."""

import json

import numpy as np

from pipeline.__main__ import main
from pipeline.data.layout import scan_test
from pipeline.data.datasets import load_images
from pipeline.export.onnx import onnx_score_batch, onnx_session
from pipeline.scoring.detector import AnomalyDetector
from tests.conftest import tiny_overrides


def test_exported_onnx_model_scores_like_the_torch_detector(tmp_path, tiny_dataset, capsys):
    overrides = tiny_overrides(tmp_path, f"data.root={tiny_dataset}", "tracking.enabled=false")
    assert main(["train", *overrides]) == 0
    detector_dir = json.loads(capsys.readouterr().out)["detector_dir"]
    assert main(["export", *overrides, f"export.model={detector_dir}", f"export.output_dir={tmp_path / 'onnx'}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_abs_score_diff"] < 1e-5

    detector_json = json.loads((tmp_path / "onnx" / "detector.json").read_text())
    torch_detector = AnomalyDetector.load(detector_dir)
    assert detector_json["threshold"] == torch_detector.spec.threshold
    images, _, _ = load_images(scan_test(tiny_dataset), 32, torch_detector.spec.read_options)  # (12, 1, 32, 32)
    expected = torch_detector.score_batch(images)
    got = onnx_score_batch(onnx_session(tmp_path / "onnx" / "model.onnx"), images.numpy(), detector_json)
    np.testing.assert_allclose(got["recon_error"], expected["recon_error"].numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got["map"], expected["map"].numpy(), rtol=1e-4, atol=1e-4)  # z-maps amplify rounding
    flagged_torch = expected["recon_error"].numpy() > torch_detector.threshold_
    np.testing.assert_array_equal(got["recon_error"] > torch_detector.threshold_, flagged_torch)
