"""Inspection as the scheduler runs it: a CLI process killed with SIGKILL mid-run and resumed, an
overlapping run, and a real `mlflow server` (tests/served.py) that is unreachable for a while."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.inspection.run import EXIT_LOCKED, EXIT_OK
from pipeline.report.review_set import RECORDS
from tests.inspection_helpers import add_dark, add_parts, inspect_overrides, ledger_rows, make_detector, results
from tests.mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_kill_9_mid_run_then_resume_gives_every_image_exactly_once(tmp_path, capsys):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    detector = make_detector(tmp_path / "detector")
    names = [f"cam{i % 2}/{i:03d}.png" for i in range(14)]
    add_parts(inbox, names)
    overrides = inspect_overrides(tmp_path, inbox, out, detector, "tracking.enabled=false", "inspect.max_batch_images=3")
    # A pause of 0.6 s before every batch's commit, injected from outside the product (tests/fault_runner.py),
    # so the kill below can land anywhere: scoring, staging, the pause, the commit.
    proc = subprocess.Popen([sys.executable, "-m", "tests.fault_runner", "pipeline.inspection.run:commit", "before",
                             "pause=0.6", "1", "--", "inspect", *overrides],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        batches = out / "batches"
        _wait_for(lambda: batches.is_dir() and any(not p.name.startswith(".") for p in batches.iterdir()), 90,
                  "the first committed batch folder")
        # While it runs, a second inspection must refuse to start and change nothing.
        assert main(["inspect", *overrides]) == EXIT_LOCKED
        time.sleep(random.uniform(0.0, 1.2))  # somewhere in the next batch: scoring, staging, pause, commit
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    committed = len(ledger_rows(out))  # files whose batch reached the commit point before the kill
    assert committed < len(names)  # it really was killed before the end
    capsys.readouterr()

    assert main(["inspect", *overrides]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    frame = results(out)
    assert sorted(frame["image_path"]) == sorted(names) and frame["image_path"].is_unique
    assert sorted(r["path"] for r in ledger_rows(out)) == sorted(names)
    assert not list(batches.glob(".staging-*"))
    # Images of a batch rolled forward were not scored again: the rerun scored only what no batch held.
    rolled = sum(len(results(out).query("batch_id == @b")) for b in summary["recovered_batches"])
    assert summary["n_scored"] == len(names) - committed - rolled
    assert set(frame["batch_id"]) == {b.name for b in batches.iterdir()}  # every batch folder is in the results


def test_mlflow_unreachable_then_reachable_loses_nothing(served, tmp_path, monkeypatch, capsys):
    """The champion of the served registry (version 2) judges; MLflow goes away (a closed port) and comes back."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")  # a loaded CI machine is slow; a closed port fails at once
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    experiment = "inspection-outage"  # this test's batches only, whatever else the shared server holds

    def inspect(*uri: str) -> tuple[int, dict]:
        code = main(["inspect", *served["overrides"](*uri, f"inspect.inbox={inbox}", f"inspect.output_dir={out}",
                                                     "inspect.min_age_seconds=0", "inspect.max_batch_images=4",
                                                     f"inspect.experiment={experiment}")])
        return code, json.loads(capsys.readouterr().out)

    add_parts(inbox, ["a.png", "b.png"])
    add_dark(inbox, "dark.png")
    code, first = inspect()
    assert code == EXIT_OK and first["model_version"] == "tiny-vae/v2" and first["mlflow_pending_batches"] == 0

    add_parts(inbox, ["c.png", "d.png"], seed=1)
    code, offline = inspect(f"tracking.uri=http://127.0.0.1:{free_port()}")  # nothing listens there
    assert code == EXIT_OK and offline["n_scored"] == 2 and offline["mlflow_pending_batches"] == 1
    assert offline["model_version"] == "tiny-vae/v2"  # judged with the cached champion
    assert len(results(out)) == 5

    code, back = inspect()
    assert code == EXIT_OK and back["n_scored"] == 0 and back["mlflow_pending_batches"] == 0
    client = MlflowClient(served["url"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    by_batch = {r.data.tags["batch_id"]: r for r in runs}
    assert len(runs) == 2 and set(by_batch) == {b["batch_id"] for b in first["batches"] + offline["batches"]}
    late = by_batch[offline["batches"][0]["batch_id"]]
    assert late.data.metrics["n_scored"] == 2 and late.data.tags["model_from_cache"] == "true"
    assert (late.data.tags["model_name"], late.data.tags["model_version"]) == ("tiny-vae", "2")
    assert late.data.tags["detection.status"] == "ok" and late.data.tags["stage"] == "inspect"
    early = by_batch[first["batches"][0]["batch_id"]]
    assert early.data.metrics["n_flagged"] >= 1 and "model_from_cache" not in early.data.tags
    logged = {a.path for a in client.list_artifacts(early.info.run_id)}
    assert {"scores.csv", "errors.csv", "summary.json", "review"} <= logged
    assert {a.path for a in client.list_artifacts(early.info.run_id, "review")} >= {RECORDS, "review/index.html",
                                                                                    "review/panels"}
    assert client.get_metric_history(early.info.run_id, "n_scored")  # metrics, not only files
