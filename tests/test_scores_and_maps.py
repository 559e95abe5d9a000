"""Every score and map, the IWAE bound, AUPRO on hand-computed cases, BH, F1 and pixel thresholds."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.data.filters import gaussian_blur
from pipeline.models.vae import ConvVAE
from pipeline.scoring import maps as M
from pipeline.scoring import scores as S
from pipeline.scoring.aupro import aupro
from pipeline.scoring.evaluate import detection_at_alphas, detection_metric_names
from pipeline.models.linear import LinearLevel
from pipeline.scoring.fusion import deciding_component, fit_standardization, fuse, keep_components, keep_if_it_helps
from pipeline.detector import fitting
from pipeline.detector.compute import MAP_KINDS
from pipeline.scoring.threshold import (benjamini_hochberg, conformal_p_values, conformal_threshold,
                                        f1_optimal_threshold, pixel_threshold)
from tests.detectors import small_detector


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ConvVAE(1, 16, 3, [4, 8]).eval()


def test_iwae_bound_is_above_the_elbo_of_the_same_draws(net):
    x = torch.rand(6, 1, 16, 16)
    mu, log_var = net.encode(x)
    eps = torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        iwae = S.neg_iwae(net, x, mu, log_var, eps, "bce")
        elbo = S.neg_elbo_sampled(net, x, mu, log_var, eps, "bce")
    assert torch.all(iwae <= elbo + 1e-4)  # log-mean-exp >= mean-log (Jensen)


def test_iwae_bound_tightens_with_more_samples(net):
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        mu, log_var = net.encode(x)
        log_var = log_var + 1.0  # a wider posterior makes the gap visible
        means = []
        for k in (1, 5, 50):
            draws = [S.neg_iwae(net, x, mu, log_var, torch.randn(k, 3, generator=torch.Generator().manual_seed(s)), "bce")
                     for s in range(40)]
            means.append(torch.stack(draws).mean().item())
    assert means[0] > means[1] > means[2]


def test_likelihood_scores_share_one_pass(net):
    x = torch.rand(3, 1, 16, 16)
    eps = torch.randn(4, 3)
    with torch.no_grad():
        mu, log_var = net.encode(x)
        both = S.likelihood_scores(net, x, mu, log_var, eps, "mse")
        torch.testing.assert_close(both["neg_elbo"], S.neg_elbo(net, x, mu, log_var, eps, "mse"))
        torch.testing.assert_close(both["kl"], S.kl_score(mu, log_var))


def test_map_scores():
    maps = torch.zeros(2, 10, 10)
    maps[0, 0, :5] = torch.arange(1.0, 6.0)
    assert S.map_max(maps).tolist() == [5.0, 0.0]
    assert S.map_topk(maps, 0.02).tolist() == [4.5, 0.0]  # top 2 of 100 pixels: (5 + 4) / 2


def test_msgms_map_is_zero_for_identical_images_and_high_on_a_missing_edge():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 8:24] = 1.0
    assert torch.allclose(M.msgms_map(x, x), torch.zeros(1, 32, 32), atol=1e-5)
    blank = torch.zeros_like(x)
    m = M.msgms_map(x, blank)
    assert m[0, 8, 16] > 0.5 and m[0, 16, 16] < m[0, 8, 16]  # the edge, not the flat inside


@pytest.mark.parametrize("kind", MAP_KINDS)
def test_every_map_kind_has_the_input_shape_and_is_finite(net, kind):
    detector = small_detector(net, head=kind == "head", map=kind,
                              projection={"steps": 2, "step_size": 0.05, "l1_weight": 1.0})
    fitting.fit_map_statistics(detector, torch.rand(10, 1, 16, 16), None, batch_size=4)  # the z-maps need them
    out = detector.score_batch(torch.rand(3, 1, 16, 16), extra=(*S.MONTE_CARLO_SCORES, *S.STRUCTURE_SCORES))
    assert out["map"].shape == (3, 16, 16) and torch.isfinite(out["map"]).all()
    assert S.FUSED not in out  # no fused score before the fit has standardized its components
    for name in (*S.BASE_SCORES, *S.MONTE_CARLO_SCORES, *S.STRUCTURE_SCORES):
        assert out[name].shape == (3,) and torch.isfinite(out[name]).all(), name
    if kind == "head":  # the learned map is a smoothed probability
        assert out["map"].min() >= 0 and out["map"].max() <= 1


def test_a_batch_computes_only_what_is_asked_for(net):
    detector = small_detector(net)
    x = torch.rand(3, 1, 16, 16)
    plain = detector.score_batch(x)
    assert set(S.BASE_SCORES) <= set(plain) and not set(plain) & {*S.MONTE_CARLO_SCORES, *S.STRUCTURE_SCORES}
    both = detector.score_batch(x, extra=("neg_iwae", "map.msgms"))
    assert both["map.msgms"].shape == (3, 16, 16) and {"neg_elbo", "neg_iwae"} <= set(both)
    for name in S.BASE_SCORES:  # extras never change what the base scores are
        torch.testing.assert_close(both[name], plain[name])
    with pytest.raises(ValueError, match="unknown score 'nonsense'"):
        detector.score_batch(x, extra=("nonsense",))


def test_standardized_maps_by_hand():
    maps = torch.tensor([[[1.0, 10.0]], [[3.0, 30.0]]])  # two normal (1, 2) maps
    mean, std = M.pixel_statistics(maps)
    assert torch.allclose(mean, torch.tensor([[2.0, 20.0]])) and torch.allclose(std, torch.tensor([[2 ** 0.5, 200 ** 0.5]]))
    z = M.standardize_map(torch.tensor([[[2.0 + 2 ** 0.5, 20.0]]]), mean, std, floor_fraction=0.0)
    assert torch.allclose(z, torch.tensor([[[1.0, 0.0]]]))  # one std above the mean; exactly the mean
    floored = M.standardize_map(torch.tensor([[[2.0 + 2 ** 0.5, 20.0]]]), mean, std, floor_fraction=1.0)
    assert floored[0, 0, 0] < 1.0  # the floor only ever shrinks the z-value


def test_z_map_evens_out_pixels_that_vary_among_normal_images(net):
    """A pixel that is noisy on every normal image lights up the plain map, not the z-map; a
    detector trained before the statistics existed says so instead of scoring."""
    torch.manual_seed(0)
    normal = torch.full((40, 1, 16, 16), 0.5)
    normal[:, :, 2, 2] = torch.rand(40, 1)            # a pixel that varies among normal parts
    test = torch.full((1, 1, 16, 16), 0.5)
    test[:, :, 2, 2] = 1.0                             # normal variation
    test[:, :, 12, 12] = 0.9                           # a real defect
    detector = small_detector(net, map="residual_z", map_sigma=0.0)
    with pytest.raises(RuntimeError, match="statistics"):
        detector.score_batch(test)
    fitting.fit_map_statistics(detector, normal, None, batch_size=16)
    out = detector.score_batch(test, extra=("map.residual", "map.combined", "map.msgms_z"))
    plain, z = out["map.residual"][0], out["map"][0]
    assert z[12, 12] > z[2, 2]
    assert plain[2, 2] > plain[12, 12] * 0.5  # the plain map cannot tell them apart as clearly
    assert torch.allclose(out["map.combined"][0], z + out["map.msgms_z"][0])


def test_balanced_map_calms_varying_pixels_partly_and_sums_both_scaled_maps(net):
    """scale_map's power moves between the plain map (0) and division by the pixel's own spread (1); the
    'balanced' map is the sum of the residual and MSGMS maps scaled with the detector's powers."""
    maps = torch.tensor([[[4.0, 4.0], [1.0, 1.0]]])
    std = torch.tensor([[4.0, 1.0], [1.0, 1.0]])   # mean std 1.75; no floor below
    plain, half, full = (M.scale_map(maps, std, power, 0.0)[0] for power in (0.0, 0.5, 1.0))
    assert torch.allclose(plain, maps[0] / 1.75)
    assert torch.allclose(full, maps[0] / std)
    assert torch.allclose(half, maps[0] / (std * 1.75).sqrt())
    # the noisy pixel (0, 0) vs the quiet one (0, 1) with the same error: fully calmed < partly < not at all
    assert full[0, 0] / full[0, 1] < half[0, 0] / half[0, 1] < plain[0, 0] / plain[0, 1]

    torch.manual_seed(0)
    normal = torch.rand(30, 1, 16, 16) * 0.2 + 0.4
    detector = small_detector(net, map="balanced", map_sigma=1.0, balanced_powers={"residual": 0.5, "msgms": 1.0})
    with pytest.raises(RuntimeError, match="statistics"):
        detector.score_batch(normal[:2])
    fitting.fit_map_statistics(detector, normal, None, batch_size=16)
    test = normal[:3].clone()
    test[:, :, 5:9, 5:9] = 1.0
    out = detector.score_batch(test, extra=("map.residual", "map.msgms"))
    detect, stats = detector.spec.detect, M.statistics_tensors(detector.spec.map_statistics)
    expected = sum(M.scale_map(out[f"map.{kind}"], stats[kind][1], detect["balanced_powers"][kind],
                               detect["map_std_floor"]) for kind in ("residual", "msgms"))
    balanced = out["map"]
    assert torch.allclose(balanced, expected, atol=1e-5)
    assert balanced[:, 5:9, 5:9].mean() > balanced[:, 12:, 12:].mean()


def test_gradient_maps_light_up_where_the_input_was_changed():
    torch.manual_seed(0)
    net = ConvVAE(1, 16, 3, [4, 8]).eval()
    x = torch.full((1, 1, 16, 16), 0.5)
    x[..., 4:7, 4:7] = 0.9  # not 1.0: the projection clamps to [0, 1] and could not move it
    for kind in ("elbo_grad", "projection"):
        m = small_detector(net, map=kind, map_sigma=0.0).score_batch(x)["map"][0]
        assert m[4:7, 4:7].mean() > m[10:, 10:].mean(), kind


def test_aupro_hand_computed_cases():
    rng = np.random.default_rng(0)
    normal = rng.random((50, 50))
    mask = np.zeros((50, 50), bool)
    mask[:5, :5] = True    # region A: always found
    mask[-5:, -5:] = True  # region B: never found before every normal pixel is
    anomaly_map = normal.copy()
    anomaly_map[:5, :5] = 2.0
    anomaly_map[-5:, -5:] = -1.0
    assert aupro([mask], [anomaly_map], 0.3, num_thresholds=500) == pytest.approx(0.5, abs=1e-6)
    # A region scored like the normal pixels: PRO(fpr) = fpr, area up to 0.3 = 0.045, normalized 0.15.
    big = rng.random((400, 400))
    region = np.zeros_like(big, bool)
    region[:200] = True
    assert aupro([region], [big], 0.3, num_thresholds=2000) == pytest.approx(0.15, abs=0.01)
    assert aupro([np.zeros((4, 4), bool)], [np.zeros((4, 4))]) is None


def test_conformal_p_values_are_uniform_on_exchangeable_normals():
    from scipy.stats import kstest

    rng = np.random.default_rng(3)
    p = np.array([conformal_p_values(rng.normal(size=199), rng.normal(size=1))[0] for _ in range(2000)])
    # Discrete uniform on {1/200, ..., 1}: compare with the continuous uniform (continuity-corrected).
    assert kstest(p - 0.5 / 200, "uniform").pvalue > 0.01
    assert abs(np.mean(p <= 0.05) - 0.05) < 0.015


def test_benjamini_hochberg_by_hand():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205])
    # BH at q=0.05 with m=8: largest k with p_(k) <= k/8*0.05 is k=2 (0.008 <= 0.0125; 0.039 > 0.01875).
    flags, q = benjamini_hochberg(p, 0.05)
    assert flags.tolist() == [True, True] + [False] * 6
    # q-values: p_(k) * m / k, then the running minimum from the largest p down
    np.testing.assert_allclose(q[:3], [0.008, 0.032, 0.0672])
    assert all((q <= 0.05) == flags) and all(q >= p)
    empty_flags, empty_q = benjamini_hochberg(np.array([]), 0.1)
    assert empty_flags.size == 0 and empty_q.size == 0


def test_f1_optimal_threshold_separates_perfectly_separable_scores():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    t = f1_optimal_threshold(labels, scores)
    assert ((scores > t) == labels.astype(bool)).all()
    with pytest.raises(ValueError, match="labelled anomalies"):
        f1_optimal_threshold(np.zeros(3), scores[:3])


def test_pixel_threshold_is_the_quantile_of_normal_pixels():
    maps = np.arange(1000, dtype=float).reshape(10, 10, 10)
    assert pixel_threshold(maps, 0.5) == pytest.approx(499.5)


def test_manual_threshold_and_back_to_conformal(net):
    detector = small_detector(net)
    detector.spec.calibration_scores = {name: list(np.arange(10.0)) for name in S.SCORE_NAMES}
    detector.set_decision(score="recon_error", method="manual", manual_threshold=0.3)
    assert detector.threshold_ == 0.3
    detector.set_decision(method="conformal", alpha=0.1)
    assert detector.threshold_ == 9.0  # k = ceil(11 * 0.9) = 10 -> the largest of 0..9
    assert detector.threshold_ == conformal_threshold(np.arange(10.0), 0.1)


def test_a_fused_component_that_does_not_vary_is_warned_about(caplog):
    rng = np.random.default_rng(0)
    varied = {"map_max": rng.uniform(0.05, 0.6, 20), "neg_elbo_mean": rng.uniform(200, 300, 20)}
    transforms = {"map_max": "logit", "neg_elbo_mean": "log"}
    with caplog.at_level(logging.WARNING, logger="pipeline.scoring.fusion"):
        fit_standardization(varied, transforms)
    assert not caplog.records
    flat = {**varied, "map_max": np.full(20, 0.3774) + rng.normal(0, 1e-6, 20)}  # a map that learned nothing
    with caplog.at_level(logging.WARNING, logger="pipeline.scoring.fusion"):
        fit_standardization(flat, transforms)
    assert len(caplog.records) == 1 and "'map_max' barely varies" in caplog.records[0].getMessage()


def test_the_deciding_component_is_the_one_whose_standardized_score_is_the_fused_score():
    rng = np.random.default_rng(1)
    selection = {"map_max": rng.uniform(0.05, 0.3, 50), "neg_elbo_mean": rng.uniform(200, 300, 50)}
    params = fit_standardization(selection, {"map_max": "logit", "neg_elbo_mean": "log"})
    scored = {"map_max": np.array([0.95, 0.1, 0.2]), "neg_elbo_mean": np.array([250.0, 900.0, 240.0])}
    decided = deciding_component(scored, params)
    assert decided[:2].tolist() == ["map_max", "neg_elbo_mean"]  # a sure local defect; a wrong part as a whole
    z_map = (np.log(0.2 / 0.8) - params["map_max"]["center"]) / params["map_max"]["scale"]
    z_elbo = (np.log(240.0) - params["neg_elbo_mean"]["center"]) / params["neg_elbo_mean"]["scale"]
    assert decided[2] == ("map_max" if z_map > z_elbo else "neg_elbo_mean")  # a normal image: the larger z
    assert fuse(scored, params)[2] == pytest.approx(max(z_map, z_elbo))


def test_the_elbo_and_the_whole_part_levels_are_kept_only_where_the_global_level_draws_the_part():
    both = ["map_max", "neg_elbo_mean"]
    assert keep_components(both, 0.15, 0.5) == both           # the part is drawn: the ELBO describes it
    assert keep_components(both, 0.87, 0.5) == ["map_max"]    # a flat blur: the ELBO measures brightness
    assert keep_components(both, 0.87, None) == both          # the rule switched off
    assert keep_components(["neg_elbo_mean"], 0.9, 0.5) == ["neg_elbo_mean"]  # never the last component
    three = [*both, "linear_max"]  # the linear level models the whole part too: a texture leaves it out as well
    assert keep_components(three, 0.15, 0.5) == three and keep_components(three, 0.87, 0.5) == ["map_max"]
    four = [*three, "nearest_distance"]  # so does the distance to the nearest training images
    assert keep_components(four, 0.15, 0.5) == four and keep_components(four, 0.87, 0.5) == ["map_max"]


def test_a_candidate_component_joins_the_fused_score_only_where_the_validation_shows_it_helps():
    """keep_if_it_helps: the map sees half of the validation anomalies; a candidate that sees the other half raises
    the fused AUROC and is kept, one that is noise lowers it and is left out; with no base it is kept as it is."""
    rng = np.random.default_rng(0)
    truth = np.r_[np.zeros(100, int), np.ones(100, int)]
    seen_by_map = np.r_[np.zeros(100, bool), np.ones(50, bool), np.zeros(50, bool)]
    scores = {"map_max": rng.normal(0, 1, 200) + 4 * seen_by_map,
              "linear_max": rng.normal(0, 1, 200) + 4 * (truth.astype(bool) & ~seen_by_map),
              "noise": rng.normal(0, 1, 200)}
    params = {name: {"transform": "log", "center": 0.0, "scale": 1.0} for name in scores}
    positive = {name: np.exp(values) for name, values in scores.items()}  # the log transform gives them back
    kept, gains = keep_if_it_helps(["map_max"], ["linear_max"], params, positive, truth, 0.01)
    assert kept == ["map_max", "linear_max"] and gains["linear_max"] > 0.1
    kept, gains = keep_if_it_helps(["map_max"], ["noise"], params, positive, truth, 0.01)
    assert kept == ["map_max"] and gains["noise"] < 0.01
    assert keep_if_it_helps([], ["noise"], params, positive, truth, 0.01)[0] == ["noise"]
    one_class = {name: values[:100] for name, values in positive.items()}  # no anomaly drawn: nothing to measure
    assert keep_if_it_helps(["map_max"], ["linear_max"], params, one_class, truth[:100], 0.0) == (["map_max"], {})
    # gains measured elsewhere decide (a cross-conformal member's shared gain); its own gain is still reported
    kept, gains = keep_if_it_helps(["map_max"], ["noise"], params, positive, truth, 0.01, decided={"noise": 0.05})
    assert kept == ["map_max", "noise"] and gains["noise"] < 0.01
    kept, _ = keep_if_it_helps(["map_max"], ["linear_max"], params, positive, truth, 0.01, decided={"linear_max": 0.0})
    assert kept == ["map_max"]
    kept, gains = keep_if_it_helps(["map_max"], ["linear_max"], params, one_class, truth[:100], 0.01,
                                   decided={"linear_max": 0.05})  # its own images show nothing: the others decide
    assert kept == ["map_max", "linear_max"] and gains == {}


def test_the_linear_level_keeps_the_normal_subspace_and_leaves_a_defect_in_the_residual():
    """Normal images that are mixtures of three patterns: the level keeps about three components, projects each normal
    image back onto itself, and leaves a bright spot (not in their span) in the residual; its maximum is linear_max."""
    rng = np.random.default_rng(0)
    patterns = torch.from_numpy(rng.uniform(0, 1, (3, 1, 16, 16)).astype(np.float32))
    weights = torch.from_numpy(rng.dirichlet(np.ones(3), 60).astype(np.float32))
    normal = torch.einsum("nk,kchw->nchw", weights, patterns)
    level = LinearLevel.fit(normal, 0.99)
    assert level.n_components <= 3 and level.explained_variance_ >= 0.99
    assert float((level(normal) - normal).abs().max()) < 1e-4
    defect = normal[:1].clone()
    defect[0, 0, 5:8, 5:8] = 1.0
    assert float(M.residual_map(defect, level(defect)).amax()) > 100 * float(M.residual_map(normal, level(normal)).amax())
    with pytest.raises(ValueError, match="at least 2 normal images that differ"):
        LinearLevel.fit(normal[:1].expand(5, -1, -1, -1), 0.95)


def test_the_image_score_takes_the_learned_maps_maximum_at_its_own_scale(net):
    """score_sigma 0: a one-pixel peak counts whole; the displayed map (map_sigma) stays smoothed. A score_sigma equal
    to map_sigma scores the displayed map, as detectors did before score_sigma existed."""
    x = torch.rand(3, 1, 16, 16)
    detector = small_detector(net, head=True, map="head", score_sigma=0.0)
    with torch.no_grad():
        out = detector.score(x, keep=("map", "reconstruction"))
        raw = torch.sigmoid(detector.head(x, torch.from_numpy(out["reconstruction"])))[:, 0]
    np.testing.assert_allclose(out["map_max"], raw.flatten(1).amax(dim=1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["map"], gaussian_blur(raw, detector.spec.detect["map_sigma"]).numpy(), rtol=1e-5)
    assert (out["map_max"] > out["map"].reshape(3, -1).max(axis=1)).all()  # smoothing lowers the peaks
    detector.spec.detect = {**detector.spec.detect, "score_sigma": detector.spec.detect["map_sigma"]}
    with torch.no_grad():
        smoothed = detector.score(x, keep=("map",))
    np.testing.assert_allclose(smoothed["map_max"], smoothed["map"].reshape(3, -1).max(axis=1), rtol=1e-6)


def test_detection_rate_at_each_alpha_per_defect_type():
    frame = pd.DataFrame({"label": [0, 0, 0, 0, 1, 1, 1, 1],
                          "defect_type": ["good"] * 4 + ["crack", "crack", "stain", "stain"],
                          "p_value": [0.5, 0.2, 0.04, 0.008, 0.009, 0.03, 0.2, 0.001]})
    result = detection_at_alphas(frame, (0.01, 0.05))
    assert result["0.01"] == {"detection_rate": 0.5, "false_alarm_rate": 0.25,
                              "per_defect_type": {"crack": 0.5, "stain": 0.5}}
    assert result["0.05"] == {"detection_rate": 0.75, "false_alarm_rate": 0.5,
                              "per_defect_type": {"crack": 1.0, "stain": 0.5}}
    flat = detection_metric_names(result)
    assert flat["detection_rate_at_0.01"] == 0.5 and flat["crack.detection_rate_at_0.05"] == 1.0
    assert detection_at_alphas(frame.drop(columns="p_value"), (0.01,)) == {}
