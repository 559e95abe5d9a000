"""The benchmark harness: baselines on hand-made arrays, and one tiny real bench run end to end."""

import json

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.bench import report
from pipeline.bench.baselines import PCAReconstruction, PixelIsolationForest
from pipeline.scoring.scores import SCORE_NAMES
from tests.conftest import TINY


def _images(rng, n, defect=False):
    x = np.full((n, 1, 16, 16), 0.3, np.float32) + rng.normal(0, 0.02, (n, 1, 16, 16)).astype(np.float32)
    if defect:
        x[:, :, 4:8, 4:8] = 1.0  # a bright square where normal images are flat
    return x


def test_baselines_rank_a_defect_above_normal_and_pca_maps_find_it():
    rng = np.random.default_rng(0)
    train, normal, defect = _images(rng, 64), _images(rng, 8), _images(rng, 8, defect=True)
    pca = PCAReconstruction(variance=0.9, map_sigma=1.0).fit(train)
    assert pca.score_samples(defect).min() > pca.score_samples(normal).max()
    maps = pca.anomaly_maps(defect)  # (N, S, S), smoothed residual
    assert maps.shape == (8, 16, 16)
    assert maps[:, 4:8, 4:8].mean() > 10 * maps[:, 12:, 12:].mean()
    by_map = PCAReconstruction(variance=0.9, map_sigma=1.0, image_score="map_max").fit(train)
    np.testing.assert_allclose(by_map.score_samples(defect), maps.reshape(8, -1).max(axis=1), rtol=1e-6)
    forest = PixelIsolationForest(n_estimators=50).fit(train)
    assert forest.score_samples(defect).mean() > forest.score_samples(normal).mean()  # higher = more anomalous


def test_bench_command_writes_every_section(tmp_path, tiny_dataset):
    # every product config the bench composes points at the tiny set (bench.overrides), drift included
    product = [*TINY, f"data.root={tiny_dataset}", "inspect.drift_min_images=4"]
    md, js = tmp_path / "B.md", tmp_path / "B.json"
    overrides = ["bench.quick=true", f"bench.overrides=[{','.join(repr(o) for o in product)}]",
                 "bench.families=[tiny]", "bench.workers=1",
                 "bench.sizes.quick.digits_one_vs_rest=[]", "bench.sizes.quick.digits_leave_one_out=[]",
                 "bench.sizes.quick.quality_overrides=[]", "bench.sizes.quick.seeds=[0,1]",
                 "bench.sizes.quick.train_epochs=2", "bench.sizes.quick.memory_n=3", "bench.sizes.quick.score_images=0",
                 "bench.iforest_trees=20", "bench.alpha_sizes=0.2", "bench.alphas=[0.2]",
                 "bench.drift.n_reference=7", "bench.drift.batch_size=4", "bench.drift.n_batches=5",
                 "bench.drift.sets.set_size=6", "bench.drift.sets.n_sets=5", "bench.drift.sets.pool=4",
                 "bench.sizes.quick.small_sets=true", "bench.small_sets.categories=[]",
                 "bench.small_sets.digits_one_vs_rest=[]", f"+bench.small_sets.roots.tiny={tiny_dataset}",
                 "bench.small_sets.members=3", "bench.small_sets.alpha=0.2",
                 f"bench.markdown={md}", f"bench.json={js}", f"bench.work_dir={tmp_path / 'work'}"]
    assert main(["bench", *overrides]) == 0
    data = json.loads(js.read_text())
    assert not data["context"]["partial"] and data["wall_time"] == {"skipped": "not run in quick mode"}
    speed = data["speed"]
    assert speed["training"]["efficiency"] > 0 and speed["scoring"]["ratio_same_work"] > 0
    assert set(speed["scoring"]["stages"]) == {"decode", "forward", "maps", "write"}
    assert speed["scoring"]["repeats"] == 3 and len(speed["scoring"]["end_to_end"]["runs_seconds"]) == 3
    reference = speed["scoring"]["references"]["learned_map_v1"]  # the dd9051f default, timed in the same loop
    assert len(reference["runs_seconds"]) == 3 and reference["ratio"] == pytest.approx(
        speed["scoring"]["end_to_end"]["images_per_second"] / reference["images_per_second"])
    step = speed["training"]["head_step"]  # the learned map's step against the same head on a ready batch
    assert step["ready_step_seconds"] > 0 and step["synthesis_seconds"] > 0 and 0 < step["ratio"] < 5
    assert [m["n_images"] for m in speed["memory"]] == [3, 30] and all(m["n_errors"] == 0 for m in speed["memory"])
    tiny = data["quality"]["tiny"]
    assert tiny["n_test"] == 12 and tiny["n_anomalous"] == 6 and tiny["has_masks"]
    assert [row["seed"] for row in tiny["new_default"]] == [0, 1]  # the new default at each seed
    assert [row["seed"] for row in tiny["previous_default"]] == [0] and [row["seed"] for row in tiny["plain_ae"]] == [0]
    first = tiny["new_default"][0]
    assert set(first["scores"]) <= set(SCORE_NAMES) and first["score"] in first["scores"]
    assert set(first["maps"]) == {"map.balanced"} and "maps" not in tiny["new_default"][1]
    assert 0 <= first["pixel_auroc"] <= 1 and 0 <= first["aupro"] <= 1 and first["n_train"] == 13
    assert tiny["previous_default"][0]["map"] == "balanced" and tiny["previous_default"][0]["score"] == "map_max"
    assert 0 <= tiny["baselines"]["pca"]["aupro"] <= 1 and tiny["baselines"]["iforest"]["pixel_auroc"] is None
    assert "thresholds" in data and data["drift"]["tiny"]["n_batches"] == 5
    assert data["drift"]["tiny"]["root"] == str(tiny_dataset.resolve())  # never a generated built-in family
    sets = data["drift"]["tiny"]["sets"]  # whole test sets, with the promise of each detector quality trained
    assert sets["n_pool"] == 4 and sets["detector"] and sets["n_calibration"] == 7
    assert sets["seed"] == [0, 1] and [d["seed"] for d in sets["by_detector"]] == [0, 1]  # one per seed, added up
    assert list(sets["conditions"]) == ["unshifted", "scale_x1.2", "scale_x1/1.2", "scale_x1.4", "scale_x1/1.4",
                                        "texture_x0.75", "texture_x1.33"]
    assert all(c["promise"]["sets"] == 10 and c["either"]["rate"] >= c["drift"]["rate"]
               for c in sets["conditions"].values())
    unshifted = [d["conditions"]["unshifted"]["either"]["hits"] for d in sets["by_detector"]]
    assert sets["conditions"]["unshifted"]["either"]["hits"] == sum(unshifted)
    text = md.read_text()
    for heading in ("## 2. Training", "## 3. Scoring", "## 4. Peak memory", "## 5. Detection quality",
                    "## 6. Thresholds", "## 7. Drift", "Whole test sets of 6 good images", "on a ready batch"):
        assert heading in text
    assert "Quick run" in text and "end to end with the `learned_map_v1` detector" in text
    spent = data["context"]["section_seconds"]  # where the minutes went; a quick run is not judged by the budget
    assert list(spent) == ["wall_time", "quality", "thresholds", "small_sets", "drift", "speed"]
    assert all(seconds >= 0 for seconds in spent.values()) and not data["context"]["full_run"]
    assert "Minutes per section of this run: wall_time" in text and "must fit in" not in text
    small = data["small_sets"]["tasks"]["tiny"]  # the same 24 images: one detector, then three cross-conformal ones
    assert (small["split"]["n_members"], small["cross"]["n_members"]) == (1, 3)
    assert (small["split"]["n_calibration"], small["cross"]["n_calibration"]) == (7, 24)
    assert data["small_sets"]["pooled"]["cross"]["pooled"]["0.2"]["n"] == 6
    assert "## Small normal sets" in text and "| tiny | cross | 12 x 3 / 24 |" in text

    # Re-measure one section alone: the others are kept from the file, with where they came from.
    before = json.loads(js.read_text())
    assert main(["bench", *overrides, "bench.sections=[wall_time]"]) == 0
    after = json.loads(js.read_text())
    assert after["speed"] == before["speed"] and after["quality"] == before["quality"]
    assert after["drift"] == before["drift"]
    assert after["context"]["sections_from"]["speed"]["date"] == before["context"]["date"]
    cpu = before["context"]["cpu"]  # each kept section names the machine it was measured on
    assert after["context"]["sections_from"]["speed"]["cpu"] == cpu
    assert "Sections kept from earlier runs" in md.read_text() and f"commit {before['context']['commit']}, on {cpu}" in md.read_text()
    assert main(["bench", *overrides, "bench.sections=[]"]) == 1  # nothing to measure: a clear error

    # Measure one row of the quality section again: every other row, the baselines and the section's origin are kept.
    assert main(["bench", *overrides, "bench.sections=[quality]", "bench.quality_rows=[plain_ae]"]) == 0
    rows = json.loads(js.read_text())
    kept, again = before["quality"]["tiny"], rows["quality"]["tiny"]
    assert again["new_default"] == kept["new_default"] and again["baselines"] == kept["baselines"]
    assert again["previous_default"] == kept["previous_default"] and again["plain_ae"][0]["seed"] == 0
    assert again["rows_from"]["plain_ae"]["date"] == rows["context"]["date"] != before["context"]["date"]
    assert rows["context"]["sections_from"]["quality"]["date"] == before["context"]["date"]
    assert f"Rows measured in a later run than the rest of this section (`bench.quality_rows`; {rows['context']['date']}" \
        in md.read_text() and "plain autoencoder on tiny." in md.read_text()
    assert main(["bench", *overrides, "bench.sections=[quality]", "bench.quality_rows=[plain_aee]"]) == 1  # a typo


def test_quality_budget_leaves_out_what_it_cannot_start_and_names_it(tmp_path, tiny_dataset):
    from pipeline.bench.run import measure_quality
    from pipeline.config import compose

    product = [*TINY, f"data.root={tiny_dataset}"]
    cfg = compose([f"bench.overrides=[{','.join(repr(o) for o in product)}]", "bench.families=[tiny]",
                   "bench.sizes.full.digits_one_vs_rest=[]", "bench.sizes.full.digits_leave_one_out=[]"])
    left_out: list[str] = []
    results = measure_quality(cfg.bench, cfg.bench.sizes.full, tmp_path, minutes=0, left_out=left_out)
    assert results == {}  # nothing started: no row is made up
    assert left_out == ["tiny new_default seed 0, tiny learned_map_v1 seed 0, tiny previous_default seed 0, "
                        "tiny plain_ae seed 0, tiny vqvae seed 0", "tiny new_default seed 1"]


def test_further_seeds_join_their_task_whichever_finished_first():
    from pipeline.bench.run import merged

    first = {"fabric": {"family": "fabric", "new_default": [{"seed": 0}], "plain_ae": [{"seed": 0}]},
             "digit_1": {"family": "digits", "refused": "too few"}}
    out = merged(first, {"fabric": [{"seed": 2}, {"seed": 1}], "digit_1": [{"seed": 1}]})
    assert [r["seed"] for r in out["fabric"]["new_default"]] == [0, 1, 2]
    assert out["digit_1"] == first["digit_1"] and [r["seed"] for r in first["fabric"]["new_default"]] == [0]
    assert list(merged(first, {}, ["digit_1", "fabric"])) == ["digit_1", "fabric"]  # the jobs' order, not the finish


def test_rows_measured_again_replace_only_themselves_and_say_which_run_measured_them():
    from pipeline.bench.run import merge_rows

    kept = {"fabric": {"family": "fabric", "new_default": [{"seed": 0, "image_auroc": 0.99}], "vqvae": [],
                       "baselines": {"pca": {}}},
            "digit_1": {"family": "digits one-vs-rest", "refused": "too few"}}
    stamp = {"date": "later", "commit": "abc", "cpu": "AMD"}
    measured = {"fabric": {"family": "fabric", "vqvae": [{"seed": 0, "image_auroc": 0.9}]},
                "digit_1": {"family": "digits one-vs-rest", "new_default": [{"seed": 0}], "baselines": {"pca": {}}},
                "loco_2": {"family": "digits leave-one-out", "new_default": [{"seed": 0}], "baselines": {}}}
    out = merge_rows(kept, measured, ["vqvae", "new_default"], stamp)
    assert out["fabric"]["new_default"] == kept["fabric"]["new_default"]  # not measured by this run: kept
    assert out["fabric"]["vqvae"] == [{"seed": 0, "image_auroc": 0.9}] and out["fabric"]["rows_from"] == {"vqvae": stamp}
    assert out["fabric"]["baselines"] == {"pca": {}} and kept["fabric"]["vqvae"] == []  # the kept dict is not changed
    assert out["digit_1"]["new_default"] == [{"seed": 0}] and "refused" not in out["digit_1"]  # refused before: replaced
    assert out["loco_2"]["rows_from"] == {"new_default": stamp}  # a task the kept section lacked joins as measured


def test_small_sets_measure_the_cross_members_the_quality_section_trained_instead_of_training_them_again(tmp_path):
    from pipeline.bench.small_sets import quality_cross_detector

    output = tmp_path / "quality-digit_3-new_default-0"
    spec = output / "train" / "digit_3" / "run1" / "detector" / "detector.json"
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps({"scheme": "cross", "members": [{}, {}, {}]}))
    assert quality_cross_detector(tmp_path, "digit_3", 0, 3) == output
    assert quality_cross_detector(tmp_path, "digit_3", 0, 5) is None  # other members: trained again
    assert quality_cross_detector(tmp_path, "digit_3", 1, 3) is None and quality_cross_detector(tmp_path, "digit_4", 0, 3) is None
    spec.write_text(json.dumps({"scheme": "split", "members": []}))
    assert quality_cross_detector(tmp_path, "digit_3", 0, 3) is None


def test_the_report_says_whether_a_full_run_fit_its_budget():
    context = {"section_seconds": {"quality": 3000.0, "drift": 60.0}, "bench_seconds": 3100.0, "budget_minutes": 90.0,
               "full_run": True}
    assert report._time_per_section(context) == [
        "Minutes per section of this run: quality 50.0, drift 1.0. A full run must fit in 90 min: within the budget.", ""]
    assert "**over** the budget" in report._time_per_section({**context, "bench_seconds": 5500.0})[0]
    assert "must fit" not in report._time_per_section({**context, "full_run": False})[0]
    resumed = report._time_per_section({**context, "full_run": False, "reused": True})[0]
    assert "must fit" not in resumed and "not a whole run's" in resumed


def test_the_quality_section_measures_the_detectors_the_wall_time_section_trained_and_runs_the_longest_jobs_first(
        tmp_path, monkeypatch):
    from pipeline.bench import quality
    from pipeline.bench.run import quality_jobs
    from pipeline.config import compose

    monkeypatch.setattr(quality, "ensure_dataset", lambda data, seed: None)  # plans the jobs only: no data needed
    cfg = compose(["bench.families=[fabric,bracket]", "bench.sizes.full.digits_one_vs_rest=[0]",
                   "bench.sizes.full.digits_leave_one_out=[1]"])
    wall = {"fabric": {"detector_dir": "/wall/fabric/detector", "train_seconds": 170.0, "trained_by": "wall_time",
                       "seed": 0}}
    jobs = quality_jobs(cfg.bench, cfg.bench.sizes.full, tmp_path, trained=wall, longest_first=True)
    assert [(j.task, j.first_seed) for j in jobs] == [("fabric", True), ("bracket", True), ("fabric", False),
                                                      ("bracket", False), ("digit_0", True), ("loco_1", True)]
    assert jobs[0].trained == {str(tmp_path / "quality-fabric-new_default-0"): wall["fabric"]}
    assert all(j.trained == {} for j in jobs[1:])  # bracket was not trained there; further seeds differ
    assert [j.task for j in quality_jobs(cfg.bench, cfg.bench.sizes.full, tmp_path)][:3] == ["fabric", "bracket", "digit_0"]
    # other settings than the README's (bench.overrides, quick sizes): the wall-time run is not this row's
    changed = compose(["bench.families=[fabric]", "bench.overrides=['model.latent_dim=8']"])
    assert quality_jobs(changed.bench, changed.bench.sizes.full, tmp_path, trained=wall)[0].trained == {}
    assert quality_jobs(cfg.bench, cfg.bench.sizes.quick, tmp_path, trained=wall)[0].trained == {}


def test_a_row_another_section_trained_is_measured_without_training_again(trained, tmp_path):
    from pipeline.bench.quality import load_test_split, product_row
    from pipeline.config import compose
    from pipeline.data.images import ReadOptions

    cfg = compose(trained.with_(f"output_root={tmp_path / 'fresh'}", "tracking.enabled=false"))
    split = load_test_split(trained.root, cfg.data.image_size, ReadOptions.from_config(cfg.data))
    row = product_row(cfg, split, [0.5], trained={"detector_dir": str(trained.detector_dir), "train_seconds": 12.0,
                                                   "trained_by": "wall_time"})
    assert row["detector_dir"] == str(trained.detector_dir) and row["train_seconds"] == 12.0
    assert row["trained_by"] == "wall_time" and row["image_auroc"] is not None
    assert not (tmp_path / "fresh").exists()  # nothing trained


def test_a_kept_work_folder_gives_the_newest_detector_of_a_row_not_the_first_run_id(tmp_path):
    import os

    from pipeline.bench.quality import newest_detector

    older, newer = (tmp_path / "train" / "fabric" / run / "detector" / "detector.json" for run in ("ffff", "0000"))
    for spec, when in ((older, 1_000_000), (newer, 2_000_000)):
        spec.parent.mkdir(parents=True)
        spec.write_text("{}")
        os.utime(spec, (when, when))
    assert newest_detector(tmp_path / "train", "*/*/detector/detector.json") == newer.parent
    assert newest_detector(tmp_path / "nothing", "*/*/detector/detector.json") is None
