"""Train for two epochs on a tiny dataset (the shared `trained` fixture: `python -m pipeline train`), score it,
evaluate it, and check the files and the real MLflow store."""

import json

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.detector import AnomalyDetector
from pipeline.report.review_set import FLAGGED, RECORDS
from pipeline.scoring.scores import BASE_SCORES, FUSED


def test_train_then_score_writes_results_and_tracks_runs(trained, tmp_path, capsys):
    train_summary = trained.summary
    overrides = trained.with_(f"score.output_dir={tmp_path / 'scored'}", "score.extra=[neg_elbo]")
    assert main(["score", *overrides]) == 0
    metrics = json.loads(capsys.readouterr().out)

    out = tmp_path / "scored"
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 12 and scores["image_path"].is_unique  # one row per test image
    assert {"image_path", "score", "threshold", "is_anomaly", "p_value", "defect_area", "label", "defect_type",
            FUSED, *BASE_SCORES, "neg_elbo"} <= set(scores.columns)  # every base score, and the extra asked for
    assert (scores["score"] == scores[FUSED]).all()  # the default decision score
    assert (scores["is_anomaly"] == (scores["score"] > scores["threshold"])).all()
    assert (scores["is_anomaly"] == (scores["p_value"] <= 0.2)).all()  # the same decision, as a p-value
    for rel in scores["image_path"]:
        anomaly_map = np.load(out / "maps" / f"{rel}.npy")
        assert anomaly_map.shape == (48, 48)  # the original resolution, not the model's 32
    assert metrics["image_auroc"] is not None and 0 <= metrics["pixel_auroc"] <= 1
    assert json.loads((out / "metrics.json").read_text())["n_images"] == 12
    assert metrics["n_calibration"] == train_summary["sizes"]["n_calibration"] == 7 and metrics["can_flag"]

    # The review set: the flagged images by rank, each with its panel; nothing else under review/panels.
    records = json.loads((out / RECORDS).read_text())
    flagged = scores.sort_values("score", ascending=False)
    flagged = flagged.loc[flagged["is_anomaly"] == 1, "image_path"].tolist()
    assert [r["image_path"] for r in records if r["status"] == FLAGGED] == flagged
    assert sorted(p.name for p in (out / "review" / "panels").iterdir()) == sorted(f"{r['key']}.png" for r in records)
    assert (out / "review" / "index.html").is_file()

    client = MlflowClient(f"sqlite:///{trained.base / 'mlruns' / 'mlflow.db'}")
    train_run = client.get_run(train_summary["run_id"])
    assert train_run.data.params["model.latent_dim"] == "4" and train_run.data.params["head.steps"] == "4"
    assert float(train_run.data.metrics["threshold"]) == train_summary["threshold"]
    assert {"train/loss", "val/loss", "val/kl", "val/recon", "head/train_loss", "n_calibration"} <= set(
        train_run.data.metrics)
    assert train_run.data.tags["threshold.method"].startswith("split conformal")
    assert train_run.data.tags["threshold.status"] == "ok" and train_run.data.tags["has_detector"] == "true"
    artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id, "figures")}
    assert {"figures/loss_curves.png", "figures/reconstructions.png", "figures/calibration_scores.png",
            "figures/synthetic_anomalies.png"} <= artifacts
    versions = client.search_model_versions("name='tiny-vae'")
    assert len(versions) == 1 and str(client.get_model_version_by_alias("tiny-vae", "champion").version) == "1"
    assert versions[0].tags["weights_sha256"] == train_summary["weights_sha256"]

    score_run = client.get_run(metrics["run_id"])
    tags = score_run.data.tags
    assert tags["model_run_id"] == train_summary["run_id"] and tags["stage"] == "score"
    assert tags["weights_sha256"] == train_summary["weights_sha256"]
    assert (tags["model_name"], tags["model_version"]) == ("tiny-vae", "1")  # the default: the newest version
    assert tags["detection.status"] == "ok" and tags["review.status"] == ("pending" if flagged else "nothing_flagged")
    assert score_run.data.metrics["image_auroc"] == metrics["image_auroc"]
    logged = {a.path for a in client.list_artifacts(score_run.info.run_id)}
    assert {"scores.csv", "errors.csv", "metrics.json", "figures", "review"} <= logged
    gallery = {a.path for a in client.list_artifacts(score_run.info.run_id, "images")}
    assert sum(f"flagged~{r['key']}" in p for p in gallery for r in records if r["status"] == FLAGGED) >= len(flagged)

    # `evaluate` recomputes the metrics from the output folder and logs them into the same run.
    assert main(["evaluate", *overrides]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["image_auroc"] == metrics["image_auroc"] and evaluated["run_id"] == metrics["run_id"]
    assert evaluated["aupro"] is not None
    assert set(json.loads((out / "metrics.json").read_text())["per_defect_type"]) == {"scratch"}
    assert "scratch.image_auroc" in client.get_run(metrics["run_id"]).data.metrics  # per defect type, in the run
    assert {"figures/roc.png", "figures/pr.png", "figures/scores_by_defect_type.png"} <= {
        a.path for a in client.list_artifacts(score_run.info.run_id, "figures")}

    # The detector the training run saved carries the threshold it reported.
    detector = AnomalyDetector.load(train_summary["detector_dir"])
    assert detector.threshold_ == train_summary["threshold"] == metrics["threshold"]


def test_the_loss_curves_give_each_training_stage_its_row_and_pair_training_with_validation(tmp_path):
    from PIL import Image

    from pipeline.report.figures import curve_panels, loss_curves

    history = {"train/loss": [(0, 9.0), (1, 8.0)], "val/loss": [(0, 9.5)], "train/recon": [(0, 7.0)],
               "head/train_loss": [(0, 0.3)], "head/val_loss": [(0, 0.4)], "head/anomalous_pixels": [(0, 0.02)],
               "head/val_pixel_auroc": [(0, 0.9)], "local/train_kl": [(0, 1.0)], "local/val_kl": [(0, 1.2)],
               "local/val_recon": []}
    panels = curve_panels(history)
    assert list(panels) == [("", "loss"), ("", "recon"), ("local", "kl"), ("head", "anomalous_pixels"),
                            ("head", "loss"), ("head", "pixel_auroc")]  # the VAE, the local level, the map
    assert panels[("", "loss")] == {"train": history["train/loss"], "val": history["val/loss"]}
    assert panels[("head", "loss")] == {"train": [(0, 0.3)], "val": [(0, 0.4)]}
    assert panels[("local", "kl")] == {"train": [(0, 1.0)], "val": [(0, 1.2)]}
    assert panels[("head", "pixel_auroc")] == {"val": [(0, 0.9)]}
    width, height = Image.open(loss_curves(history, tmp_path / "curves.png")).size
    assert height > width / 3 * 2  # three rows of panels (the VAE, the local level, the map), at most three a row
