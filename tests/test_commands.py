"""The commands around a trained detector (the shared `trained` fixture): `score` and `inspect` judge the same
images identically, settings fixed at training cannot be given again, and a threshold that cannot fire at the
requested alpha is refused unless that is explicitly allowed."""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.scoring.scores import BASE_SCORES, FUSED
from tests.conftest import cli, snapshot, tiny_overrides

DECISION = ["score", "threshold", "p_value", "is_anomaly", "defect_area", "defect_regions", FUSED, *BASE_SCORES]


def test_score_and_inspect_give_the_same_scores_maps_and_decisions(trained, tmp_path):
    common = trained.with_("tracking.enabled=false", f"detector={trained.detector_dir}")
    data_before = snapshot(trained.root)
    scored = cli("score", *common, f"score.output_dir={tmp_path / 'scored'}")
    inbox = tmp_path / "inbox"
    shutil.copytree(trained.root / "test", inbox / "test")  # the same files, under the same relative paths
    inbox_before = snapshot(inbox)
    inspected = cli("inspect", *common, f"inspect.inbox={inbox}", f"inspect.output_dir={tmp_path / 'inspection'}",
                    "inspect.min_age_seconds=0")
    assert scored["n_images"] == inspected["n_scored"] == 12
    assert snapshot(trained.root) == data_before and snapshot(inbox) == inbox_before  # inputs untouched

    by_score = pd.read_csv(tmp_path / "scored" / "scores.csv").set_index("image_path").sort_index()
    by_inspect = pd.read_parquet(tmp_path / "inspection" / "results").set_index("image_path").sort_index()
    assert list(by_score.index) == list(by_inspect.index)
    for column in DECISION:
        np.testing.assert_allclose(by_inspect[column], by_score[column], rtol=1e-6, atol=1e-7, err_msg=column)
    assert (by_inspect["is_anomaly"] == by_score["is_anomaly"]).all() and by_score["is_anomaly"].any()
    batch = tmp_path / "inspection" / "batches" / inspected["batches"][0]["batch_id"]
    for rel in by_score.index:
        np.testing.assert_allclose(np.load(batch / "maps" / f"{rel}.npy").astype(np.float32),
                                   np.load(tmp_path / "scored" / "maps" / f"{rel}.npy").astype(np.float32),
                                   rtol=1e-3, atol=1e-4, err_msg=rel)


def test_score_refuses_an_output_folder_inside_the_data_root(tmp_path, tiny_dataset, capsys):
    (tmp_path / "linked").symlink_to(tiny_dataset / "test", target_is_directory=True)  # resolves into the root
    before = snapshot(tiny_dataset)
    for inside in (tiny_dataset, tiny_dataset / "results", tmp_path / "linked" / "out"):
        assert main(["score", *tiny_overrides(tmp_path, f"data.root={tiny_dataset}", f"score.output_dir={inside}")]) == 1
        assert f"is inside the data root {tiny_dataset}" in capsys.readouterr().err
    assert snapshot(tiny_dataset) == before


def test_a_setting_fixed_at_training_given_at_score_time_is_a_config_error(trained, tmp_path, capsys):
    common = trained.with_("tracking.enabled=false", f"detector={trained.detector_dir}")
    for command, override in (("score", "detect.map_sigma=3"), ("export", "model.latent_dim=8"),
                              ("inspect", "head.widths=[8,16]")):
        extra = [f"score.output_dir={tmp_path / 'scored'}", f"export.output_dir={tmp_path / 'onnx'}",
                 f"inspect.inbox={trained.root / 'test'}", f"inspect.output_dir={tmp_path / 'inspection'}"]
        assert main([command, *common, *extra, override]) == 2, command
        err = capsys.readouterr().err
        key = override.split("=")[0]
        assert f"{key} is fixed when the model is trained" in err and f"train {key}=" in err, err
    assert not (tmp_path / "scored" / "scores.csv").exists() and not (tmp_path / "inspection" / "results").exists()
    # The same value as stored is no change: allowed (scripts may spell out the whole configuration).
    assert main(["score", *common, f"score.output_dir={tmp_path / 'scored'}", "detect.map_sigma=2.0"]) == 0


def test_score_and_inspect_refuse_a_threshold_that_cannot_fire_unless_allowed(trained, tmp_path, capsys):
    """7 calibration images support alpha >= 1/8; at alpha=0.05 the threshold is +inf: nothing could be flagged."""
    scored = tmp_path / "scored"
    assert main(["score", *trained.with_(f"score.output_dir={scored}", "score.alpha=0.05")]) == 1
    err = capsys.readouterr().err
    assert "cannot flag anything at alpha=0.05" in err and "score.allow_unable_to_flag=true" in err
    assert not scored.exists()

    allowed = cli("score", *trained.with_(f"score.output_dir={scored}", "score.alpha=0.05",
                                          "score.allow_unable_to_flag=true"))
    assert not allowed["can_flag"] and allowed["n_flagged"] == 0 and allowed["threshold"] == float("inf")
    assert "cannot flag anything" in allowed["unable_to_flag"]
    tags = MlflowClient(f"sqlite:///{trained.base / 'mlruns' / 'mlflow.db'}").get_run(allowed["run_id"]).data.tags
    assert (tags["detection.status"], tags["review.status"]) == ("unable_to_flag", "blocked")
    assert "cannot flag anything" in tags["review.reason"] and "UNABLE TO FLAG" in tags["mlflow.note.content"]
    page = (scored / "review" / "index.html").read_text()
    assert 'class="banner"><b>UNABLE TO FLAG</b>' in page and "cannot flag anything" in page

    inspect = trained.with_("tracking.enabled=false", f"detector={trained.detector_dir}", "score.alpha=0.05",
                            f"inspect.inbox={trained.root / 'test'}", f"inspect.output_dir={tmp_path / 'inspection'}",
                            "inspect.min_age_seconds=0")
    assert main(["inspect", *inspect]) == 4
    assert "cannot flag anything at alpha=0.05" in capsys.readouterr().err
    assert not (tmp_path / "inspection" / "results").exists()
    result = cli("inspect", *inspect, "score.allow_unable_to_flag=true")
    assert result["n_scored"] == 12 and result["n_flagged"] == 0


def test_scoring_a_registered_detector_leaves_no_copy_of_it_behind(trained, tmp_path, monkeypatch):
    scratch = tmp_path / "system-tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the command's downloads would go
    scored = cli("score", *trained.overrides, f"score.output_dir={tmp_path / 'scored'}")
    assert scored["model_version"] is not None  # the detector came from the registry, so it was downloaded
    assert list(scratch.iterdir()) == []
