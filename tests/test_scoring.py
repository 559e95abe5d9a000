import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from pipeline.__main__ import main
from pipeline.data.filters import gaussian_blur
from pipeline.detector import AnomalyDetector, TamperedModelError, file_sha256
from pipeline.models.vae import ConvAutoencoder, ConvVAE
from pipeline.scoring.maps import residual_map, resize_map
from pipeline.scoring.metrics import false_alarm_rate, image_auroc, pixel_auroc
from pipeline.scoring.scores import neg_elbo, posterior_mean, recon_error
from pipeline.scoring.threshold import (binomial_interval, conformal_p_values, conformal_rank, conformal_threshold,
                                        guarantee)
from tests.conftest import tiny_overrides, write_png
from tests.detectors import small_detector


def test_conformal_threshold_is_the_ceil_rank_score():
    scores = np.arange(1, 20, dtype=float)[::-1]  # 19 scores: 1..19, shuffled order
    # n=19, alpha=0.1: k = ceil(20 * 0.9) = 18 -> 18th smallest = 18
    assert conformal_rank(19, 0.1) == 18
    assert conformal_threshold(scores, 0.1) == 18.0
    # n=99, alpha=0.01: k = ceil(100 * 0.99) = 99 (no floating-point round-up to 100)
    assert conformal_rank(99, 0.01) == 99


def test_too_few_calibration_scores_give_an_infinite_threshold_and_the_guarantee_says_so():
    # Silent here (a pure function); the commands refuse to judge with it (test_commands.py).
    assert conformal_threshold(np.arange(10.0), 0.01) == math.inf
    with pytest.raises(ValueError):
        conformal_threshold(np.array([]), 0.1)
    short, enough = guarantee(10, 0.01), guarantee(99, 0.01)
    assert not short["can_flag"] and short["false_alarm_bound"] == 0.0 and short["smallest_alpha"] == 1 / 11
    assert enough["can_flag"] and enough["false_alarm_bound"] == 0.01
    assert enough["false_alarm_expected"] == pytest.approx(1 / 100)  # k = 99 of 99: (n + 1 - k) / (n + 1)


def test_binomial_interval_is_clopper_pearson():
    low, high = binomial_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 20))  # exact for k = 0
    low, high = binomial_interval(5, 100)
    assert low < 0.05 < high and binomial_interval(0, 0) is None


def test_p_values_hand_computed_and_consistent_with_threshold():
    calibration = np.array([1.0, 2.0, 3.0, 4.0])
    p = conformal_p_values(calibration, np.array([0.5, 2.0, 4.5]))
    np.testing.assert_allclose(p, [5 / 5, 4 / 5, 1 / 5])
    rng = np.random.default_rng(0)
    cal, new = rng.normal(size=199), rng.normal(size=1000)
    alpha = 0.05
    flagged_by_threshold = new > conformal_threshold(cal, alpha)
    flagged_by_p = conformal_p_values(cal, new) <= alpha
    assert np.array_equal(flagged_by_threshold, flagged_by_p)


def test_conformal_false_alarm_rate_is_controlled_on_exchangeable_normals():
    rng = np.random.default_rng(1)
    rates = []
    for _ in range(200):
        cal, new = rng.normal(size=99), rng.normal(size=200)
        rates.append(np.mean(new > conformal_threshold(cal, 0.1)))
    assert np.mean(rates) <= 0.1 + 0.01  # marginal guarantee: E[FAR] <= alpha
    assert np.mean(rates) > 0.08       # and not wastefully conservative


def test_gaussian_blur_matches_scipy_away_from_borders():
    rng = np.random.default_rng(2)
    maps = rng.random((2, 40, 40)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(maps), 2.0).numpy()
    ref = np.stack([gaussian_filter(m, 2.0, mode="mirror", truncate=4.0) for m in maps])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert gaussian_blur(torch.from_numpy(maps), 0).shape == (2, 40, 40)


def test_residual_map_and_resize_shapes():
    x, x_hat = torch.zeros(3, 3, 16, 16), torch.ones(3, 3, 16, 16) * 0.5
    m = residual_map(x, x_hat)
    assert m.shape == (3, 16, 16) and torch.allclose(m, torch.full_like(m, 0.25))
    assert resize_map(m[0], (40, 30)).shape == (40, 30)
    first = m[0]
    assert resize_map(first, (16, 16)) is first  # no needless copy at the same size


def test_recon_error_and_neg_elbo_behave():
    torch.manual_seed(0)
    net = ConvVAE(1, 16, 3, [4, 8]).eval()
    x = torch.rand(4, 1, 16, 16)
    logits, mu, log_var = posterior_mean(net, x)
    assert recon_error(x, torch.sigmoid(logits)).shape == (4,)
    eps = torch.randn(5, 3)
    a = neg_elbo(net, x, mu, log_var, eps, "bce")
    # The score of an image does not depend on the batch it is in (shared Monte Carlo draws).
    b = neg_elbo(net, x[:2], mu[:2], log_var[:2], eps, "bce")
    torch.testing.assert_close(a[:2], b)
    ae = ConvAutoencoder(1, 16, 3, [4, 8]).eval()
    mu_ae, lv_ae = ae.encode(x)
    assert lv_ae is None and neg_elbo(ae, x, mu_ae, None, eps, "mse").shape == (4,)


def test_metrics():
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert image_auroc(np.array([0, 0]), np.array([0.1, 0.2])) is None
    assert image_auroc(np.array([1, 1]), np.array([0.1, 0.2])) is None  # defects only: one class too
    masks = [np.array([[True, False]]), np.array([[False, False]])]
    maps = [np.array([[0.9, 0.1]]), np.array([[0.2, 0.3]])]
    assert pixel_auroc(masks, maps) == 1.0
    assert false_alarm_rate(np.array([0, 0, 0, 1]), np.array([1, 0, 0, 1])) == pytest.approx(1 / 3)


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_pixel_auroc_is_sklearns_number_with_and_without_ties(decimals):
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(3)
    maps = [rng.normal(size=(16, 16)).astype(np.float32) for _ in range(6)]
    masks = [rng.random((16, 16)) < share for share in (0, 0, 0.05, 0.2, 0.5, 0.9)]
    for m, a in zip(masks, maps):
        a[m] += 0.8  # a defect raises the map: the ranking is informative, not 0.5
        if decimals is not None:
            a[...] = np.round(a, decimals)  # many ties: each must count half
    expected = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps]))
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert 0.6 < expected < 1.0


def test_a_tampered_weights_file_is_refused(tmp_path):
    folder = small_detector().save(tmp_path / "det")
    good_sha = file_sha256(folder / "weights.pt")
    AnomalyDetector.load(folder, expected_sha256=good_sha)  # intact: loads
    state = torch.load(folder / "weights.pt", weights_only=True)
    state["vae.fc_mu.1.weight"] += 1.0  # dense head: Flatten, Linear
    torch.save(state, folder / "weights.pt")
    with pytest.raises(TamperedModelError, match="does not match the one recorded in detector.json"):
        AnomalyDetector.load(folder)
    # Rewriting detector.json to match does not help when the registry's checksum is given.
    meta = json.loads((folder / "detector.json").read_text())
    meta["weights_sha256"] = file_sha256(folder / "weights.pt")
    (folder / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(TamperedModelError, match="recorded in the registry"):
        AnomalyDetector.load(folder, expected_sha256=good_sha)


def test_score_refuses_a_registered_model_whose_files_were_swapped_in_the_store(tmp_path, tiny_dataset, capsys):
    """Someone with write access to the artifact store replaces the weights of version 1 and rewrites
    detector.json's checksum to match: the checksum the registry recorded at training time catches it."""
    overrides = tiny_overrides(tmp_path, f"data.root={tiny_dataset}", f"score.output_dir={tmp_path / 'scored'}")
    assert main(["train", *overrides]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert main(["score", *overrides, "detector=1"]) == 0  # intact: scores
    capsys.readouterr()
    swapped = 0
    for weights in (tmp_path / "mlruns").rglob("weights.pt"):
        state = torch.load(weights, weights_only=True)
        torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, weights)
        meta = json.loads((weights.parent / "detector.json").read_text())
        meta["weights_sha256"] = file_sha256(weights)
        (weights.parent / "detector.json").write_text(json.dumps(meta))
        swapped += 1
    assert swapped >= 1
    for command in ("score", "export", "calibrate", "report"):
        assert main([command, *overrides, "detector=1", f"score.output_dir={tmp_path / 'scored-2'}",
                     f"export.output_dir={tmp_path / 'onnx'}", f"report.output_dir={tmp_path / 'report'}"]) == 1
        assert "recorded in the registry" in capsys.readouterr().err, command
    assert not (tmp_path / "scored-2" / "scores.csv").exists() and not (tmp_path / "onnx").exists()
    # Named by its training run (its id or a runs:/ URI), a registered detector is held to the registry's checksum too.
    for spec in (run_id, f"runs:/{run_id}/detector"):
        assert main(["score", *overrides, f"detector={spec}", f"score.output_dir={tmp_path / 'scored-2'}"]) == 1
        assert "recorded in the registry" in capsys.readouterr().err, spec
    # inspect refuses it too, and never falls back to a cached copy (exit 4: cannot run)
    (tmp_path / "inbox").mkdir()
    write_png(tmp_path / "inbox" / "a.png", np.full((48, 48), 40, np.uint8))
    assert main(["inspect", *overrides, "detector=1", f"inspect.inbox={tmp_path / 'inbox'}",
                 f"inspect.output_dir={tmp_path / 'inspection'}", "inspect.min_age_seconds=0"]) == 4
    assert "recorded in the registry" in capsys.readouterr().err
