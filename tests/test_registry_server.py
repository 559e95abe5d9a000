"""Registry, aliases, scoring provenance, the review set in the run, verdicts (CLI and hand-set tags) and
recalibration from the audit sample, all through a real `mlflow server` process (see tests/served.py)."""

import json
import subprocess
import sys
import tempfile

from urllib.parse import urlparse

import numpy as np
import pandas as pd
import psutil
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.report.review_set import AUDIT, FLAGGED, RECORDS
from tests.served import cli

NAME = "tiny-vae"


def _records(served, folder="scored-newest") -> list[dict]:
    return json.loads((served["folder"] / folder / RECORDS).read_text())


def _artifact_table(client, run_id, path) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_json(client.download_artifacts(run_id, path, tmp), orient="split", dtype=False)


def test_the_test_server_listens_on_127_0_0_1_only(served):
    port = urlparse(served["url"]).port
    listening = [c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening and set(listening) == {"127.0.0.1"}, listening


def test_every_training_run_is_a_version_and_only_promotion_moves_the_champion(served):
    client = MlflowClient(served["url"])
    versions = sorted(client.search_model_versions(f"name='{NAME}'"), key=lambda v: int(v.version))
    assert [v.version for v in versions[:2]] == ["1", "2"]
    assert [v.run_id for v in versions[:2]] == [t["run_id"] for t in served["train"]]
    assert all(v.current_stage in (None, "None") for v in versions)  # no deprecated stages
    assert [str(t["version"]) for t in served["train"]] == ["1", "2"]
    assert served["promoted"] == {"registered_model": NAME, "alias": "champion", "version": "2",
                                  "previous_champion": "1", "model_uri": f"models:/{NAME}@champion"}
    assert client.get_model_version_by_alias(NAME, "champion").version == "2"
    assert "promoted_at" in client.get_model_version(NAME, "2").tags
    assert "split conformal" in client.get_model_version(NAME, "2").description  # what its threshold promises


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


def test_scoring_run_holds_the_review_set_and_a_gallery_sorted_by_rank(served):
    client = MlflowClient(served["url"])
    run_id = served["score_newest"]["run_id"]
    run = client.get_run(run_id)
    scores = pd.read_csv(served["folder"] / "scored-newest" / "scores.csv")
    flagged = scores.loc[scores["is_anomaly"] == 1].sort_values("score", ascending=False)["image_path"].tolist()
    assert flagged and run.data.metrics["n_flagged"] == len(flagged)
    records = _records(served)
    assert [r["image_path"] for r in records if r["status"] == FLAGGED] == flagged  # by rank
    assert sum(r["audit"] for r in records) == 4 and {r["status"] for r in records} <= {FLAGGED, AUDIT}
    assert run.data.tags["review.status"] == "pending" and run.data.tags["detection.status"] == "ok"
    assert "verdict.<sample id>" in run.data.tags["mlflow.note.content"]  # the description says how to review
    # the thumbnails are in the run as the gallery's card images (images/), not again under review/
    logged = {a.path for a in client.list_artifacts(run_id, "review")}
    assert logged >= {RECORDS, "review/index.html", "review/panels"} and "review/thumbnails" not in logged
    panels = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(run_id, "review/panels")}
    assert panels == {f"{r['key']}.png" for r in records}
    # log_image with a key writes the image and a compressed copy per record, under '<status>~<rank>_<id>'
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    for r in records:
        prefix = "flagged" if r["status"] == FLAGGED else "audit"
        assert any(f"{prefix}~{r['key']}" in p for p in images), r["key"]


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
    np.testing.assert_allclose(got["fused"], scores["fused"], rtol=1e-5)
    np.testing.assert_allclose(got["p_value"], scores["p_value"])
    np.testing.assert_array_equal(got["is_anomaly"], scores["is_anomaly"])


def test_verdicts_are_tags_from_the_cli_or_by_hand_and_calibrate_takes_only_the_audit_sample(served, tmp_path, capsys):
    client = MlflowClient(served["url"])
    run_id = served["score_newest"]["run_id"]
    records = _records(served)
    flagged = [r for r in records if r["status"] == FLAGGED]
    outside = [r for r in flagged if not r["audit"]]  # flagged, not drawn for the audit
    audited_good = [r for r in records if r["audit"] and r["image_path"].startswith("test/good/")]
    assert len(flagged) >= 2 and outside and audited_good, "alpha=0.5 flags several images, audit_size=4 some goods"
    ignored, normal = outside[0], audited_good[0]
    defect = next(r for r in flagged if r["sample_id"] not in (ignored["sample_id"], normal["sample_id"]))

    # 1. The CLI: a flagged defect and a flagged false alarm outside the audit sample.
    args = ["review", run_id, *served["overrides"](f"review.set=[{defect['sample_id']}:true_defect,"
                                                   f"{ignored['sample_id']}:f]", "review.interactive=false")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert defect["sample_id"] in out and "panel_path" in out and ".png" in out  # the table, with local panel files
    tags = client.get_run(run_id).data.tags
    assert (tags[f"verdict.{defect['sample_id']}"], tags[f"verdict.{ignored['sample_id']}"]) == ("true_defect",
                                                                                                  "false_alarm")
    assert (tags["review.n_true_defect"], tags["review.n_false_alarm"]) == ("1", "1")
    assert tags["review.n_pending"] == str(len(records) - 2) and tags["review.status"] == "partial"
    assert tags["review.flag_precision"] == "0.5000" and client.get_run(run_id).data.metrics["review.flag_precision"] == 0.5

    # 2. By hand in the MLflow UI: a tag on the run is a verdict; `review` reads it and counts it.
    client.set_tag(run_id, f"verdict.{normal['sample_id']}", "false_alarm")
    assert main(["review", run_id, *served["overrides"]("review.interactive=false")]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rfind("\n{") + 1:])
    assert summary["recorded"] == 0 and summary["n_false_alarm"] == 2 and summary["n_reviewed"] == 3
    line = next(x for x in out.splitlines() if normal["sample_id"] in x)
    assert "false_alarm" in line
    assert client.get_run(run_id).data.tags["review.n_false_alarm"] == "2"

    # 3. The rest from a CSV; the CLI's verdicts accumulate in review/verdicts.json.
    reviewed = {defect["sample_id"], ignored["sample_id"], normal["sample_id"]}
    rest = [r["sample_id"] for r in records if r["sample_id"] not in reviewed]
    csv = tmp_path / "verdicts.csv"
    pd.DataFrame({"sample_id": rest, "verdict": "unsure"}).to_csv(csv, index=False)
    assert main(["review", run_id, *served["overrides"](f"review.verdicts={csv}")]) == 0
    history = _artifact_table(client, run_id, "review/verdicts.json")
    assert sorted(history["sample_id"]) == sorted([defect["sample_id"], ignored["sample_id"], *rest])
    assert client.get_run(run_id).data.tags["review.status"] == "complete"

    # 4. A verdict for a sample that was not shown is an error naming it; nothing is recorded.
    assert main(["review", run_id, *served["overrides"]("review.set=[no_such_sample:d]")]) == 1
    assert "no_such_sample" in capsys.readouterr().err
    assert len(_artifact_table(client, run_id, "review/verdicts.json")) == len(history)

    # 5. calibrate: the audited image confirmed normal joins the calibration set of a new version; the flagged
    #    false alarm outside the audit sample does not (it is not exchangeable with new normal images).
    summary = cli("calibrate", *served["overrides"]())
    assert summary["added"] == [f"{served['root']}/{normal['image_path']}"] and summary["n_added"] == 1
    assert summary["n_ignored_not_audited"] == 1
    assert str(summary["version"]) == "3" and summary["threshold"] >= summary["previous_threshold"]
    assert summary["n_calibration"] == served["train"][1]["sizes"]["n_calibration"] + 1
    assert client.get_model_version_by_alias(NAME, "champion").version == "2"  # not promoted
    run = client.get_run(summary["run_id"])
    assert run.data.tags["stage"] == "calibrate" and run.data.tags["calibrated_from"] == f"models:/{NAME}/2"
    assert run.data.metrics["n_calibration"] == summary["n_calibration"]
    # Calibrating again finds nothing new (the image is already in version 3's calibration set).
    assert main(["calibrate", *served["overrides"]()]) == 1
    assert "no new reviewed normal image of an audit sample" in capsys.readouterr().err
