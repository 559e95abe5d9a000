"""Train for two epochs on a tiny dataset, score it, and check the files and the real MLflow store."""

import json

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.scoring.detector import AnomalyDetector
from tests.conftest import tiny_overrides


def test_train_then_score_writes_results_and_tracks_runs(tmp_path, tiny_dataset, capsys):
    overrides = tiny_overrides(tmp_path, f"data.root={tiny_dataset}", f"score.output_dir={tmp_path / 'scored'}")
    assert main(["train", *overrides]) == 0
    train_summary = json.loads(capsys.readouterr().out)
    assert main(["score", *overrides]) == 0
    metrics = json.loads(capsys.readouterr().out)

    out = tmp_path / "scored"
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 12 and scores["image_path"].is_unique  # one row per test image
    assert {"image_path", "score", "threshold", "is_anomaly", "recon_error", "neg_elbo", "label",
            "defect_type"} <= set(scores.columns)
    assert (scores["is_anomaly"] == (scores["score"] > scores["threshold"])).all()
    for rel in scores["image_path"]:
        anomaly_map = np.load(out / "maps" / f"{rel}.npy")
        assert anomaly_map.shape == (48, 48)  # the original resolution, not the model's 32
    assert metrics["image_auroc"] is not None and 0 <= metrics["pixel_auroc"] <= 1
    assert json.loads((out / "metrics.json").read_text())["n_images"] == 12
    assert len(list((out / "overlays").rglob("*.png"))) == int(scores["is_anomaly"].sum())

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    train_run = client.get_run(train_summary["run_id"])
    assert train_run.data.params["model.latent_dim"] == "4"
    assert float(train_run.data.metrics["threshold"]) == train_summary["threshold"]
    assert {"train/loss", "val/loss", "val/kl", "val/recon"} <= set(train_run.data.metrics)
    assert train_run.data.tags["threshold.method"].startswith("conformal")
    artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id, "figures")}
    assert {"figures/loss_curves.png", "figures/reconstructions.png"} <= artifacts
    versions = client.search_model_versions("name='tiny-vae'")
    assert len(versions) == 1 and str(client.get_model_version_by_alias("tiny-vae", "champion").version) == "1"

    score_run = client.get_run(metrics["run_id"])
    assert score_run.data.tags["model_run_id"] == train_summary["run_id"]
    assert score_run.data.tags["weights_sha256"] == train_summary["weights_sha256"]
    assert score_run.data.metrics["image_auroc"] == metrics["image_auroc"]
    logged = {a.path for a in client.list_artifacts(score_run.info.run_id)}
    assert {"scores.csv", "metrics.json", "figures"} <= logged

    # `evaluate` recomputes the metrics from the output folder and logs them into the same run.
    assert main(["evaluate", *overrides]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["image_auroc"] == metrics["image_auroc"]
    assert evaluated["aupro"] is not None and set(evaluated["per_defect_type"]) == {"scratch"}
    assert {"figures/roc.png", "figures/pr.png", "figures/scores_by_defect_type.png"} <= {
        a.path for a in client.list_artifacts(score_run.info.run_id, "figures")}

    # The detector downloaded from the run scores like the one that was trained.
    detector = AnomalyDetector.load(train_summary["detector_dir"])
    assert detector.threshold_ == train_summary["threshold"]
