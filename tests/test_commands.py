"""The commands around a trained detector (the shared `trained` fixture): `score` and `inspect` judge the same
images identically and leave their inputs untouched, output folders inside an input are refused, settings
fixed at training cannot be given again, a threshold that cannot fire at the requested alpha is refused
unless that is explicitly allowed, and inspection's cached model is held to the registry's checksum."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.detector import file_sha256
from pipeline.scoring.scores import BASE_SCORES, FUSED
from tests.conftest import cli, snapshot, tiny_overrides
from tests.mlflow_server import free_port

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
    assert set(by_score["decided_by"]) <= {"map_max", "neg_elbo_mean", "linear_max"}  # what set each fused score
    reviewed = json.loads((batch / "review" / "records.json").read_text())
    assert reviewed and all(r["decided_by"] == by_score.loc[r["image_path"], "decided_by"] for r in reviewed)
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


def _tamper(weights) -> None:
    """Rewrite weights.pt and detector.json's checksum to match: only the registry's checksum can tell."""
    state = torch.load(weights, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, weights)
    meta = json.loads((weights.parent / "detector.json").read_text())
    meta["weights_sha256"] = file_sha256(weights)
    (weights.parent / "detector.json").write_text(json.dumps(meta))


def test_inspect_refuses_a_tampered_cached_champion_and_fetches_it_again(trained, tmp_path, capsys, caplog):
    inbox, out = tmp_path / "inbox", tmp_path / "inspection"
    base = trained.with_(f"inspect.inbox={inbox}", f"inspect.output_dir={out}", "inspect.min_age_seconds=0",
                         "detector=champion")
    registered = MlflowClient(f"sqlite:///{trained.base / 'mlruns' / 'mlflow.db'}").get_model_version(
        "tiny-vae", "1").tags["weights_sha256"]
    shutil.copytree(trained.root / "test" / "good", inbox / "first")
    assert cli("inspect", *base)["model_version"] == "tiny-vae/v1"
    cached = out / "models" / "tiny-vae" / "v1" / "weights.pt"
    assert file_sha256(cached) == registered

    _tamper(cached)
    shutil.copytree(trained.root / "test" / "scratch", inbox / "second")
    with caplog.at_level(logging.WARNING):
        second = cli("inspect", *base)
    assert second["n_scored"] == 6 and second["model_version"] == "tiny-vae/v1"
    assert f"refusing the cached model: {cached}" in caplog.text and "recorded in the registry" in caplog.text
    assert file_sha256(cached) == registered  # fetched again from the registry, verified

    _tamper(cached)
    (inbox / "third").mkdir()
    shutil.copy(trained.root / "train" / "good" / "000.png", inbox / "third" / "a.png")
    unreachable = [*base, f"tracking.uri=http://127.0.0.1:{free_port()}"]  # nothing listens there
    assert main(["inspect", *unreachable]) == 4
    err = capsys.readouterr().err
    assert f"{cached}: checksum" in err and "recorded in the registry" in err and "cannot be fetched again" in err
    assert len(pd.read_parquet(out / "results")) == 12  # nothing judged with the modified model
