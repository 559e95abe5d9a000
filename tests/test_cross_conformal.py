"""The cross-conformal scheme for small normal sets: the decision rule (scoring/cross_conformal.py), the folds
(data/splits.py) and a real K-member detector trained, saved, loaded and scored through the product's commands."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.datamodule import SplitSettings
from pipeline.data.splits import TooFewNormalImages, choose_scheme, cross_fold_indices, cross_sizes
from pipeline.detector import AnomalyDetector
from pipeline.detector import calibration as C
from pipeline.detector import ensemble as E
from pipeline.scoring import cross_conformal as X
from tests.conftest import cli, make_tiny_dataset, tiny_overrides


def brute_force_p(member_scores, member_calibration, n):
    counts = sum((np.asarray(c)[None, :] >= np.asarray(s)[:, None]).sum(axis=1)
                 for s, c in zip(member_scores, member_calibration))
    return (1.0 + counts) / (n + 1.0)


@pytest.mark.parametrize("rounding", [None, 1])  # continuous scores, and scores with many ties
def test_rank_score_threshold_flags_exactly_the_cross_conformal_p_values(rounding):
    rng = np.random.default_rng(0)
    k, m, n_test = 5, 25, 400
    for _ in range(30):
        calibration = [rng.standard_t(4, size=m) for _ in range(k)]
        shared = rng.standard_t(4, size=n_test) * 1.5
        scores = [shared + 0.3 * rng.normal(size=n_test) for _ in range(k)]
        if rounding is not None:
            calibration = [np.round(c, rounding) for c in calibration]
            scores = [np.round(s, rounding) for s in scores]
        tables = [X.FoldTable(c) for c in calibration]
        rank = X.rank_scores(scores, tables)
        exact = brute_force_p(scores, calibration, k * m)
        np.testing.assert_allclose(X.p_values(rank, k * m), exact)
        for alpha in (0.2, 0.05, 0.01):
            np.testing.assert_array_equal(rank > X.threshold(k * m, alpha), exact <= alpha)


def test_rank_score_is_monotone_in_every_member_score():
    rng = np.random.default_rng(1)
    calibration = [rng.normal(size=20) for _ in range(3)]
    tables = [X.FoldTable(c) for c in calibration]
    grid = np.linspace(-4, 6, 2001)
    for member in range(3):
        scores = [np.full_like(grid, 0.3) for _ in range(3)]
        scores[member] = grid
        rank = X.rank_scores(scores, tables)
        assert (np.diff(rank) >= -1e-12).all()
        assert rank[-1] > rank[len(grid) // 2]  # beyond every calibration score the fractions still order images


def test_false_alarm_rate_on_exchangeable_normal_scores_is_about_alpha():
    # Members that agree up to noise, as detectors trained on overlapping folds do: the rate stays at or under
    # alpha (cross-conformal is exact-ish here and conservative when members disagree), never above 1.2 alpha.
    rng = np.random.default_rng(2)
    k, m = 5, 25
    flagged = {0.05: 0, 0.01: 0}
    total = 0
    for _ in range(600):
        calibration = [rng.gamma(2.0, size=m) for _ in range(k)]
        shared = rng.gamma(2.0, size=100)
        scores = [shared * np.exp(0.1 * rng.normal(size=100)) for _ in range(k)]
        rank = X.rank_scores(scores, [X.FoldTable(c) for c in calibration])
        for alpha in flagged:
            flagged[alpha] += int((rank > X.threshold(k * m, alpha)).sum())
        total += 100
    assert 0.6 * 0.05 <= flagged[0.05] / total <= 1.2 * 0.05
    assert flagged[0.01] / total <= 1.2 * 0.01


def test_members_outputs_combine_without_a_score_only_some_members_compute():
    """Members whose fits decided differently (one kept the linear level): the combined output ranks what every
    member calibrated, averages the maps, and leaves out linear_max rather than failing."""
    rng = np.random.default_rng(0)
    outputs = [{"fused": torch.tensor(rng.normal(0, 1, 4)), "map": torch.rand(4, 8, 8)} for _ in range(3)]
    outputs[1]["linear_max"] = torch.rand(4)
    tables = {"fused": [X.FoldTable(rng.normal(0, 1, 10)) for _ in range(3)]}
    combined = E.combine_outputs(outputs, tables)
    assert set(combined) == {"fused", "map"}
    torch.testing.assert_close(combined["map"], torch.stack([o["map"] for o in outputs]).mean(dim=0))


def test_members_decide_a_component_by_the_mean_gain_without_the_member_that_selected_on_their_fold():
    """Member k's selection images lie in fold k + 1 (cross_fold_indices): member k + 1 leaves member k's gain out."""
    gains = [{"linear_max": 0.0}, {"linear_max": 0.0}, {"linear_max": 0.08}, {"linear_max": 0.09}, {}]
    shared = E.shared_gains(gains)
    assert shared[0]["linear_max"] == pytest.approx(np.mean([0.0, 0.0, 0.08, 0.09]))  # without member 5: none measured
    assert shared[3]["linear_max"] == pytest.approx(np.mean([0.0, 0.0, 0.09]))  # without member 3
    assert shared[4]["linear_max"] == pytest.approx(np.mean([0.0, 0.0, 0.08]))  # without member 4
    assert all(s["linear_max"] >= 0.01 for s in shared)  # all five keep what two measured and three could not tell
    assert E.shared_gains([{}, {}]) == [{}, {}]
    sizes = cross_sizes(125, 0.05, 5, 0.1, 16, 32)
    folds = cross_fold_indices(125, sizes, seed=3)
    for k, (_, _, calibration) in enumerate(folds):  # no member decides on its own calibration images
        for j in E.deciding_members(k, 5):
            assert not set(folds[j][1].tolist()) & set(calibration.tolist())
        assert len(E.deciding_members(k, 5)) == 4


def test_too_few_images_for_alpha_cannot_flag():
    assert X.can_flag(99, 0.01) and not X.can_flag(98, 0.01)
    assert math.isinf(X.threshold(98, 0.01))
    assert X.guarantee(98, 5, 0.01)["can_flag"] is False


def test_folds_every_image_calibrates_one_member_and_trains_most_others():
    sizes = cross_sizes(125, 0.05, 5, 0.1, 16, 32)
    assert (sizes.scheme, sizes.n_members, sizes.n_calibration, sizes.n_selection) == ("cross", 5, 125, 16)
    members = cross_fold_indices(125, sizes, seed=3)
    calibrated = torch.cat([c for _, _, c in members])
    assert sorted(calibrated.tolist()) == list(range(125))
    trained = torch.zeros(125, dtype=torch.long)
    for train, selection, calibration in members:
        parts = [set(p.tolist()) for p in (train, selection, calibration)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert len(parts[0]) + len(parts[1]) + len(parts[2]) == 125 and len(parts[0]) >= sizes.n_train
        trained[train] += 1
    assert trained.min() >= 3  # trains all but at most two members (its calibration and its selection one)
    assert sizes.supports_alpha and not cross_sizes(90, 0.01, 5, 0.1, 16, 32).supports_alpha
    with pytest.raises(TooFewNormalImages, match="cross-conformal members"):
        cross_sizes(40, 0.05, 5, 0.1, 16, 8)


def test_scheme_auto_chooses_cross_on_a_small_set_or_where_the_split_cannot_flag_and_names_a_mistyped_scheme():
    assert choose_scheme("auto", False) == "cross" and choose_scheme("auto", True) == "split"
    assert choose_scheme("auto", True, small_set=True) == "cross"
    assert choose_scheme("split", False, small_set=True) == "split" and choose_scheme("cross", True) == "cross"
    with pytest.raises(ValueError, match="data.split.scheme"):
        choose_scheme("crossed", True)
    at_01 = SplitSettings(alpha=0.01, scheme="auto")  # the split needs 99 calibration images, at most half of them
    assert [at_01.sizes(n).scheme for n in (70, 80, 125, 197, 198, 1000)] == [
        "split", "cross", "cross", "cross", "split", "split"]
    # by size (conf: data.split.cross_below): below it the members wherever their folds fit, one detector above
    at_05 = SplitSettings(alpha=0.05, scheme="auto", cross_below=250)
    assert [at_05.sizes(n).scheme for n in (70, 80, 125, 249, 250, 1000)] == [
        "split", "cross", "cross", "cross", "split", "split"]
    assert SplitSettings(alpha=0.05, scheme="auto").sizes(125).scheme == "split"  # cross_below 0: never by size
    assert SplitSettings(alpha=0.05, scheme="split", cross_below=250).sizes(125).scheme == "split"
    with pytest.raises(TooFewNormalImages):  # asked for by name: never silently one detector instead
        SplitSettings(alpha=0.05, scheme="cross").sizes(70)


def test_train_says_which_alpha_a_small_set_supports_under_the_cross_scheme():
    sizes = SplitSettings(alpha=0.01, scheme="auto").sizes(90)
    assert sizes.scheme == "cross" and not sizes.supports_alpha
    message = sizes.shortfall()
    assert "cross-conformal" in message and "1/91" not in message and "0.011" in message and "9 more" in message
    assert SplitSettings(alpha=0.01, scheme="auto").sizes(99).supports_alpha


@pytest.fixture(scope="module")
def cross_trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("cross")
    root = make_tiny_dataset(base / "tiny")
    # the detail rule off: the tiny noise images count as a part, so the members fit and decide the linear level;
    # `auto` takes the members because the set is small (cross_below), and train says so
    overrides = tiny_overrides(base, f"data.root={root}", "data.split.scheme=auto", "data.split.cross_below=1000",
                               "data.split.members=3", "model.global_detail_limit=null")
    said, lines = logging.getLogger("pipeline.commands.train"), _Lines()
    said.addHandler(lines)
    previous = said.level
    said.setLevel(logging.INFO)  # a module fixture: pytest's caplog is per test
    try:
        summary = cli("train", *overrides)
    finally:
        said.removeHandler(lines)
        said.setLevel(previous)
    return base, overrides, {**summary, "said": lines.lines}


class _Lines(logging.Handler):
    """The messages a logger wrote."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_cross_detector_trains_members_saves_one_folder_and_scores_like_its_members(cross_trained):
    base, overrides, summary = cross_trained
    folder = Path(summary["detector_dir"])
    assert sorted(p.name for p in folder.iterdir()) == ["detector.json", "weights.pt"]
    stored = json.loads((folder / "detector.json").read_text())
    assert stored["scheme"] == "cross" and len(stored["members"]) == 3
    assert any("24 normal images: fewer than data.split.cross_below=1000, so 3 detectors train" in line
               for line in summary["said"])
    assert summary["guarantee"]["n_calibration"] == 24 and summary["guarantee"]["n_members"] == 3
    detector = AnomalyDetector.load(folder)
    assert len({m.spec.extra["seed"] for m in detector.members}) == 3  # members differ in more than their folds
    gains = [{k[len("gain."):]: v for k, v in m.spec.validation.items() if k.startswith("gain.")}
             for m in detector.members]
    assert any("linear_max" in g for g in gains)  # the members measured the linear level's gain
    for member, shared in zip(detector.members, E.shared_gains(gains)):  # the members decide together
        assert {k: v for k, v in member.spec.validation.items() if k.startswith("shared_gain.")} == pytest.approx(
            {f"shared_gain.{k}": v for k, v in shared.items()}, abs=1e-3)
        for name, gain in shared.items():
            assert (name in member.spec.validation["fused_components"]) == (gain >= member.spec.detect["component_min_gain"])
    calibrated = np.concatenate([np.asarray(m.spec.calibration_scores["fused"]) for m in detector.members])
    assert len(calibrated) == 24 and len(detector.calibration_scores_) == 24
    images = torch.rand(6, 1, 32, 32)
    out = detector.score(images, keep=("map", "reconstruction"))
    member_outs = [m.score(images, keep=("map",)) for m in detector.members]
    expected = X.rank_scores([o["fused"] for o in member_outs], [X.FoldTable(np.asarray(m.spec.calibration_scores["fused"]))
                                                                  for m in detector.members])
    np.testing.assert_allclose(out["fused"], expected, rtol=1e-6)
    np.testing.assert_allclose(out["map"], np.mean([o["map"] for o in member_outs], axis=0), rtol=1e-5, atol=1e-6)
    exact = brute_force_p([o["fused"] for o in member_outs],
                          [m.spec.calibration_scores["fused"] for m in detector.members], 24)
    np.testing.assert_allclose(detector.p_values(out["fused"]), exact)
    np.testing.assert_array_equal(detector.predict(images), (exact <= detector.spec.alpha).astype(int))
    detector.set_decision(alpha=0.5)
    np.testing.assert_array_equal(C.decide(detector.spec, out["fused"])[0], (exact <= 0.5).astype(int))


def test_cross_detector_scores_a_test_split_and_refuses_what_it_cannot_do(cross_trained, capsys):
    base, overrides, _ = cross_trained
    result = cli("score", *overrides)
    assert result["n_images"] == 12 and 0.0 <= result["image_auroc"] <= 1.0
    assert result["threshold"] == pytest.approx(X.threshold(24, 0.2))
    capsys.readouterr()
    cli("calibrate", *overrides, expect=1)
    assert "does not support cross-conformal detectors" in capsys.readouterr().err
    cli("export", *overrides, f"export.output_dir={base / 'onnx'}", expect=1)
    assert "ONNX export of a cross-conformal detector" in capsys.readouterr().err
    checkpoint = next((base / "outputs" / "train").rglob("*.ckpt"))
    cli("train", *overrides, f"train.resume={checkpoint}", expect=1)
    assert "cannot continue a cross-conformal training" in capsys.readouterr().err


def test_the_registered_cross_detector_scores_through_mlflow_like_the_score_command(cross_trained, tmp_path):
    import mlflow
    import pandas as pd

    base, overrides, summary = cross_trained
    cli("score", *overrides)
    scored = pd.read_csv(base / "outputs" / "score" / "tiny" / "scores.csv")
    paths = [str(base / "tiny" / p) for p in scored["image_path"]]
    mlflow.set_tracking_uri(f"sqlite:///{base / 'mlruns' / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model("models:/tiny-vae/1")
        got = model.predict(pd.DataFrame({"image_path": paths}))
    finally:
        mlflow.set_tracking_uri(None)
    np.testing.assert_allclose(got["score"], scored["score"], rtol=1e-5)
    np.testing.assert_allclose(got["p_value"], scored["p_value"])
    np.testing.assert_array_equal(got["is_anomaly"], scored["is_anomaly"])
