"""The threshold's promise checked where labels allow it: the beta-binomial test of the false alarms on good
images against hand-computed values and by simulation, and `score` on a test set whose good parts are seen from
farther away reporting the broken promise (status, review page banner, the run's Description), while the same
detector on unshifted parts reports nothing."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import binomtest

from pipeline.bench.drift import zoom
from pipeline.bench.promise import pooled
from pipeline.scoring.promise import false_alarm_law, false_alarm_test, promise_test
from pipeline.scoring.threshold import conformal_threshold
from tests.conftest import _part, cli, tiny_overrides, write_png
from tests.detectors import make_detector


def test_the_false_alarm_count_law_hand_computed():
    """n = 7 calibration images at alpha = 0.2: k = ceil(8 x 0.8) = 7, the largest calibration score; the count
    among m = 6 normal images is BetaBinomial(6, 1, 7): P(X = x) = C(6, x) B(x + 1, 13 - x) / B(1, 7)."""
    def p(x: int) -> float:
        return math.comb(6, x) * 7 * math.factorial(x) * math.factorial(12 - x) / math.factorial(13)

    assert p(6) == pytest.approx(0.000583, abs=1e-6) and p(5) == pytest.approx(0.004079, abs=1e-6)
    law = false_alarm_law(6, 7, 0.2)
    np.testing.assert_allclose(law.pmf(np.arange(7)), [p(x) for x in range(7)], rtol=1e-9)
    assert law.mean() == pytest.approx(6 / 8)  # (n + 1 - k) / (n + 1) = 1/8 of the images

    five = false_alarm_test(5, 6, 7, 0.2, level=0.01)  # P(X >= 5) = 0.004079 + 0.000583
    assert five["tested"] and five["broken"] and five["p_value"] == pytest.approx(p(5) + p(6), rel=1e-9)
    four = false_alarm_test(4, 6, 7, 0.2, level=0.01)  # P(X >= 4) = 0.0210 > 0.01
    assert not four["broken"] and four["p_value"] == pytest.approx(sum(p(x) for x in (4, 5, 6)), rel=1e-9)
    assert five["max_allowed"] == four["max_allowed"] == 4 and five["expected_rate"] == pytest.approx(1 / 8)


def test_the_bench_adds_up_each_detectors_sets():
    def result(seed: int, hits: int, flagged: float | None) -> dict:
        cell = {"hits": hits, "sets": 10, "rate": hits / 10, "ci95": [0, 1]}
        return {"seed": seed, "n_sets": 10, "detector": None if flagged is None else "fused",
                "conditions": {"unshifted": {"drift": {**cell, "hits": 0, "rate": 0.0}, "either": cell,
                                             "promise": None if flagged is None else cell,
                                             "pool_false_alarm_rate": flagged}}}

    both = pooled([result(0, 3, 0.04), result(1, 0, 0.0)])
    unshifted = both["conditions"]["unshifted"]
    assert (unshifted["either"]["hits"], unshifted["either"]["sets"]) == (3, 20) and unshifted["either"]["rate"] == 0.15
    assert unshifted["promise"]["rate"] == 0.15 and unshifted["pool_false_alarm_rate"] == pytest.approx(0.02)
    assert both["seed"] == [0, 1] and both["n_sets"] == 20 and [r["seed"] for r in both["by_detector"]] == [0, 1]
    alone = pooled([result(0, 2, None)])["conditions"]["unshifted"]  # no detector: the drift test alone
    assert alone["promise"] is None and alone["pool_false_alarm_rate"] is None and alone["either"]["hits"] == 2


def test_one_calibration_image_at_alpha_one_half_gives_a_uniform_count():
    """n = 1, alpha = 0.5: k = 1, BetaBinomial(m, 1, 1) is uniform on 0..m, so P(X >= c) = (m + 1 - c) / (m + 1)."""
    assert false_alarm_test(198, 199, 1, 0.5)["p_value"] == pytest.approx(2 / 200)
    result = false_alarm_test(199, 199, 1, 0.5, level=0.01)
    assert result["p_value"] == pytest.approx(1 / 200) and result["broken"] and result["max_allowed"] == 198
    assert not false_alarm_test(198, 199, 1, 0.5, level=0.01)["broken"]  # p = 0.01 is not below the level


def test_nothing_to_test_without_normal_images_or_a_threshold_that_can_fire():
    assert not false_alarm_test(0, 0, 99, 0.01)["tested"]
    cannot = false_alarm_test(0, 50, 7, 0.05)  # 7 calibration images cannot support alpha = 0.05
    assert not cannot["tested"] and not cannot["broken"] and false_alarm_law(50, 7, 0.05) is None
    with pytest.raises(ValueError):
        false_alarm_test(5, 4, 99, 0.01)


def test_the_test_holds_its_level_where_a_binomial_test_at_alpha_does_not():
    """Exchangeable normal scores: calibration and test drawn alike, a conformal threshold per draw. The beta-
    binomial test fires on at most about `level` of the draws; a binomial test at alpha, which forgets that the
    threshold itself is random, fires far more often."""
    rng = np.random.default_rng(0)
    n, m, alpha, level, draws = 99, 400, 0.01, 0.01, 4000
    thresholds = np.array([conformal_threshold(c, alpha) for c in rng.standard_normal((draws, n))])  # (draws,)
    counts = (rng.standard_normal((draws, m)) > thresholds[:, None]).sum(axis=1)  # (draws,) false alarms
    broken = {c: false_alarm_test(int(c), m, n, alpha, level)["broken"] for c in np.unique(counts)}
    beta_binomial = np.mean([broken[c] for c in counts])
    naive = {c: binomtest(int(c), m, alpha, alternative="greater").pvalue < level for c in np.unique(counts)}
    binomial = np.mean([naive[c] for c in counts])
    assert beta_binomial <= level + 0.005  # about 3 standard errors above the level at most (measured: 0.0095)
    assert binomial > 0.1  # measured: 0.11


def test_groups_are_tested_with_bonferroni_and_the_reason_names_the_broken_one():
    # alone, 15 of 400 at alpha 0.01 with 99 calibration images has p = 0.034 < 0.05; two groups halve the level
    alone = false_alarm_test(15, 400, 99, 0.01, level=0.05)
    assert alone["broken"] and alone["p_value"] > 0.025
    result = promise_test({"fabric": (15, 400, 99), "bracket": (1, 400, 99)}, 0.01, level=0.05)
    assert not result["broken"] and result["groups"]["fabric"]["level"] == 0.025
    broken = promise_test({"fabric": (60, 400, 99), "bracket": (1, 400, 99)}, 0.01, level=0.05)
    assert broken["broken"] and broken["reason"].startswith("fabric: 60 of 400 good images flagged (15.0%)")
    assert "bracket" not in broken["reason"]


def _test_set(root: Path, scale: float, seed: int) -> Path:
    """An MVTec-layout test split: 24 good parts seen `scale` times closer (below 1: farther away) and 4 dark
    images as defects; train/good is not needed to score."""
    rng = np.random.default_rng(seed)
    for i in range(24):
        write_png(root / "test" / "good" / f"{i:03d}.png", zoom(_part(rng, 48)[:, :, None], scale)[:, :, 0])
    for i in range(4):
        write_png(root / "test" / "hole" / f"{i:03d}.png", np.zeros((48, 48), np.uint8))
    return root


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """Random weights calibrated on 30 normal parts at alpha 0.2; its recon_error grows as a part shrinks."""
    return make_detector(tmp_path_factory.mktemp("promise") / "detector", n_calibration=30)


def test_score_reports_a_broken_promise_on_parts_seen_from_farther_away(detector, tmp_path):
    root = _test_set(tmp_path / "farther", 1 / 1.4, seed=5)
    out = tmp_path / "scored"
    summary = cli("score", *tiny_overrides(tmp_path, f"data.root={root}", f"detector={detector}",
                                           f"score.output_dir={out}", "inspect.drift_min_images=20"))
    promise = summary["promise"]
    assert promise["tested"] and promise["broken"]
    group = promise["groups"][""]
    assert group["n_normal"] == 24 and group["n_false_alarms"] > group["max_allowed"]
    assert summary["drift"]["drifted"] and summary["drift"]["images"] == "good" and summary["drift"]["n"] == 24

    page = (out / "review" / "index.html").read_text()
    assert '<p class="banner"><b>PROMISE BROKEN</b>' in page and "good images flagged" in page
    assert "What to do" in page and "also drifted from the calibration images" in page
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").get_run(summary["run_id"])
    tags = run.data.tags
    assert (tags["detection.status"], tags["review.status"]) == ("promise_broken", "blocked")
    assert run.info.run_name.startswith("[PROMISE_BROKEN] ")
    note = tags["mlflow.note.content"]
    assert "**PROMISE BROKEN**" in note and "What to do" in note
    assert "- **promise on labelled good images**: BROKEN" in note
    # every link opens MLflow's "Model training" view: the Description's routes, the printed URLs, the review page's
    routes = re.findall(r"\]\((#/[^)]*)\)", note)
    assert routes and all(r.endswith("?workflowType=machine_learning") or "&workflowType=machine_learning" in r
                          for r in routes), routes
    experiment = run.info.experiment_id
    assert summary["mlflow_run"] == (f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run.info.run_id}"
                                     "?workflowType=machine_learning")
    assert summary["mlflow_experiment"] == (f"http://127.0.0.1:5000/#/experiments/{experiment}"
                                            "?workflowType=machine_learning")
    assert f'href="{summary["mlflow_run"]}"' in page


def test_score_reports_nothing_on_unshifted_parts(detector, tmp_path):
    root = _test_set(tmp_path / "same", 1.0, seed=5)
    summary = cli("score", *tiny_overrides(tmp_path, f"data.root={root}", f"detector={detector}",
                                           f"score.output_dir={tmp_path / 'scored'}", "tracking.enabled=false"))
    assert summary["promise"]["tested"] and not summary["promise"]["broken"]
    assert summary["drift"]["tested"] and not summary["drift"]["drifted"]
    page = (tmp_path / "scored" / "review" / "index.html").read_text()
    assert 'class="banner"' not in page and "promise on labelled good images: kept" in page
    assert "drift (good images): none<" in page


@pytest.mark.filterwarnings("error::UserWarning")  # one class of labels: no metric on it, no library warning
def test_score_on_an_unlabelled_folder_runs_the_drift_test_on_every_image(detector, tmp_path):
    rng = np.random.default_rng(9)
    root = tmp_path / "unlabelled"
    for i in range(24):  # one folder of new images, no test/good: nothing to count false alarms on
        write_png(root / "test" / "new" / f"{i:03d}.png", zoom(_part(rng, 48)[:, :, None], 1 / 1.4)[:, :, 0])
    summary = cli("score", *tiny_overrides(tmp_path, f"data.root={root}", f"detector={detector}",
                                           f"score.output_dir={tmp_path / 'scored'}", "tracking.enabled=false"))
    assert not summary["promise"]["tested"] and "no labelled good images" in summary["promise"]["reason"]
    assert summary["drift"]["images"] == "all" and summary["drift"]["n"] == 24 and summary["drift"]["drifted"]
    page = (tmp_path / "scored" / "review" / "index.html").read_text()
    assert '<p class="banner"><b>DRIFT</b>' in page
