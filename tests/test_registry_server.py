"""Registry, aliases, scoring provenance, the review gallery, verdicts and recalibration, all through a
real `mlflow server` process (see tests/served.py for the runs it makes)."""

import json
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from tests.served import cli

NAME = "tiny-vae"


def _flagged(served, folder="scored-newest") -> pd.DataFrame:
    return pd.read_csv(served["folder"] / folder / "review" / "flagged.csv", dtype={"sample_id": str})


def _artifact_json(client, run_id, path) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_json(client.download_artifacts(run_id, path, tmp), orient="split", dtype=False)


def test_every_training_run_is_a_version_and_only_promotion_moves_the_champion(served):
    client = MlflowClient(served["url"])
    versions = sorted(client.search_model_versions(f"name='{NAME}'"), key=lambda v: int(v.version))
    assert [v.version for v in versions[:2]] == ["1", "2"]
    assert [v.run_id for v in versions[:2]] == [t["run_id"] for t in served["train"]]
    assert all(v.current_stage in (None, "None") for v in versions)  # no deprecated stages
    assert served["train"][0]["version"] == "1" and served["train"][1]["version"] == "2"
    assert served["promoted"] == {"registered_model": NAME, "alias": "champion", "version": "2",
                                  "previous_champion": "1", "model_uri": f"models:/{NAME}@champion"}
    assert client.get_model_version_by_alias(NAME, "champion").version == "2"
    assert "promoted_at" in client.get_model_version(NAME, "2").tags


def test_each_scoring_run_records_the_model_name_version_and_weights(served):
    client = MlflowClient(served["url"])
    newest = client.get_run(served["score_newest"]["run_id"]).data.tags
    # `score` defaults to the newest version (2 had no alias yet when it ran).
    assert (newest["model_name"], newest["model_version"]) == (NAME, "2")
    assert newest["weights_sha256"] == served["train"][1]["weights_sha256"]
    assert newest["model_source"] == f"models:/{NAME}/2"
    old = client.get_run(served["score_v1"]["run_id"]).data.tags
    assert (old["model_version"], old["weights_sha256"]) == ("1", served["train"][0]["weights_sha256"])
    assert served["train"][0]["weights_sha256"] != served["train"][1]["weights_sha256"]


def test_scoring_run_logs_a_gallery_and_a_flagged_table_of_every_flagged_image(served):
    client = MlflowClient(served["url"])
    run_id = served["score_newest"]["run_id"]
    scores = pd.read_csv(served["folder"] / "scored-newest" / "scores.csv")
    n_flagged = int(scores["is_anomaly"].sum())
    assert n_flagged > 0
    tags = client.get_run(run_id).data.tags
    assert tags["review.n_flagged"] == tags["review.n_panels"] == str(n_flagged)
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    # log_image with a key writes a full PNG and a compressed copy per image.
    assert len([p for p in images if p.endswith(".png") and "flagged~" in p]) == n_flagged
    table = _artifact_json(client, run_id, "review/flagged_samples.json")
    assert {"sample_id", "image_path", "panel", "score", "p_value", "defect_area", "review_status"} <= set(table.columns)
    assert sorted(table["image_path"]) == sorted(scores.loc[scores["is_anomaly"] == 1, "image_path"])
    assert set(table["review_status"]) == {"pending"}
    assert all(p["type"] == "image" for p in table["panel"])
    assert json.loads(tags["mlflow.loggedArtifacts"]) == [{"path": "review/flagged_samples.json", "type": "table"}]


def test_the_registered_model_scores_alone_in_a_fresh_process(served, tmp_path):
    scores = pd.read_csv(served["folder"] / "scored-newest" / "scores.csv").head(4)
    paths = [str(served["root"] / p) for p in scores["image_path"]]
    code = ("import json, sys, mlflow, pandas as pd\n"
            "model = mlflow.pyfunc.load_model('models:/tiny-vae@champion')\n"
            "print(model.predict(pd.DataFrame({'image_path': json.loads(sys.argv[1])})).to_json(orient='records'))\n")
    # From an unrelated folder, so the model's own bundled code is what scores.
    done = subprocess.run([sys.executable, "-c", code, json.dumps(paths)], cwd=tmp_path, env=served["env"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = pd.DataFrame(json.loads(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got["score"], scores["score"], rtol=1e-5)
    np.testing.assert_allclose(got["p_value"], scores["p_value"])
    np.testing.assert_array_equal(got["is_anomaly"], scores["is_anomaly"])


def test_review_records_verdicts_as_table_and_tags_then_calibrate_feeds_false_alarms_back(served, tmp_path, capsys):
    client = MlflowClient(served["url"])
    run_id = served["score_newest"]["run_id"]
    flagged = _flagged(served)
    assert len(flagged) >= 2, "alpha=0.5 should flag several images"
    # The reviewer calls a flagged good image (else the weakest flag) a false alarm and the top other flag a defect.
    goods = flagged[flagged["image_path"].str.startswith("test/good/")]
    normal = goods.iloc[0] if len(goods) else flagged.iloc[-1]
    normal_id = normal["sample_id"]
    defect_id = flagged.loc[flagged["sample_id"] != normal_id, "sample_id"].iloc[0]

    args = ["review", run_id, *served["overrides"](f"review.set=[{defect_id}:true_defect,{normal_id}:f]",
                                                   "review.interactive=false")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert defect_id in out and "panel_path" in out and ".png" in out  # the table, with local panel files
    tags = client.get_run(run_id).data.tags
    pending = len(flagged) - 2
    assert tags["review.status"] == ("partial" if pending else "complete")
    assert (tags["review.n_true_defect"], tags["review.n_false_alarm"], tags["review.n_pending"]) == \
        ("1", "1", str(pending))
    assert tags["review.flag_precision"] == "0.5000"
    assert client.get_run(run_id).data.metrics["review.flag_precision"] == 0.5
    table = _artifact_json(client, run_id, "review/flagged_samples.json")
    status = dict(zip(table["sample_id"], table["review_status"]))
    assert (status[defect_id], status[normal_id]) == ("true_defect", "false_alarm")

    # The rest from a CSV; verdicts accumulate in review/verdicts.json.
    rest = flagged[~flagged["sample_id"].isin([defect_id, normal_id])]
    csv = tmp_path / "verdicts.csv"
    pd.DataFrame({"sample_id": rest["sample_id"], "verdict": "unsure"}).to_csv(csv, index=False)
    assert main(["review", run_id, *served["overrides"](f"review.verdicts={csv}")]) == 0
    verdicts = _artifact_json(client, run_id, "review/verdicts.json")
    assert len(verdicts) == len(flagged) and set(verdicts["verdict"]) <= {"true_defect", "false_alarm", "unsure"}
    assert client.get_run(run_id).data.tags["review.status"] == "complete"

    # A verdict for a sample that was not flagged is an error naming it; nothing is recorded.
    assert main(["review", run_id, *served["overrides"]("review.set=[no_such_sample:d]")]) == 1
    assert "no_such_sample" in capsys.readouterr().err
    assert len(_artifact_json(client, run_id, "review/verdicts.json")) == len(flagged)

    # Feedback: the confirmed-normal image joins the calibration set of a new version; champion unchanged.
    summary = cli("calibrate", *served["overrides"]())
    assert summary["added"] == [normal["image_path"]] and summary["n_added"] == 1
    assert summary["version"] == "3" and summary["threshold"] >= summary["previous_threshold"]
    assert client.get_model_version_by_alias(NAME, "champion").version == "2"
    run = client.get_run(summary["run_id"])
    assert run.data.tags["stage"] == "calibrate" and run.data.tags["calibrated_from"] == f"models:/{NAME}/2"
    assert run.data.metrics["n_calibration"] == served["train"][1]["n_calibration"] + 1 == summary["n_calibration"]
    # Calibrating again finds nothing new (the image is already in version 3's calibration set).
    assert main(["calibrate", *served["overrides"]()]) == 1
    assert "no new reviewed false alarms" in capsys.readouterr().err
