"""Inspection as the scheduler runs it: a CLI process killed with SIGKILL mid-run and resumed, an
overlapping run, and a real `mlflow server` that is unreachable for a while."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.inspection.run import EXIT_LOCKED, EXIT_OK
from tests.conftest import tiny_overrides
from tests.inspection_helpers import add_dark, add_parts, inspect_overrides, ledger_rows, make_detector, results

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
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "inspect", *overrides, "inspect.pause_before_commit=0.6"],
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    store = tmp_path / "server"
    store.mkdir()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=open(store / "server.log", "w"), start_new_session=True)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False
    try:
        _wait_for(lambda: up() or proc.poll() is not None, 120, "mlflow server")
        assert proc.poll() is None, (store / "server.log").read_text()[-2000:]
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # uvicorn waits for idle keep-alive connections: don't
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_mlflow_unreachable_then_reachable_loses_nothing(tmp_path, tiny_dataset, mlflow_server, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")  # a loaded CI machine is slow; a closed port fails at once
    server = [o for o in tiny_overrides(tmp_path, f"data.root={tiny_dataset}") if not o.startswith("tracking.uri=")]
    assert main(["train", *server, f"tracking.uri={mlflow_server}"]) == 0  # registers tiny-vae v1 @champion
    capsys.readouterr()
    inbox, out = tmp_path / "inbox", tmp_path / "out"

    def inspect(uri: str) -> tuple[int, dict]:
        code = main(["inspect", *server, f"tracking.uri={uri}", f"inspect.inbox={inbox}", f"inspect.output_dir={out}",
                     "inspect.min_age_seconds=0", "inspect.max_batch_images=4"])
        return code, json.loads(capsys.readouterr().out)

    add_parts(inbox, ["a.png", "b.png"])
    add_dark(inbox, "dark.png")
    code, first = inspect(mlflow_server)
    assert code == EXIT_OK and first["model_version"] == "tiny-vae/v1" and first["mlflow_pending_batches"] == 0

    add_parts(inbox, ["c.png", "d.png"], seed=1)
    code, offline = inspect(f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    assert code == EXIT_OK and offline["n_scored"] == 2 and offline["mlflow_pending_batches"] == 1
    assert offline["model_version"] == "tiny-vae/v1"  # judged with the cached champion
    assert len(results(out)) == 5

    code, back = inspect(mlflow_server)
    assert code == EXIT_OK and back["n_scored"] == 0 and back["mlflow_pending_batches"] == 0
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("inspection").experiment_id])
    by_batch = {r.data.tags["batch_id"]: r for r in runs}
    assert len(runs) == 2 and set(by_batch) == {b["batch_id"] for b in first["batches"] + offline["batches"]}
    late = by_batch[offline["batches"][0]["batch_id"]]
    assert late.data.metrics["n_scored"] == 2 and late.data.tags["model_from_cache"] == "true"
    assert late.data.params["model_version"] == "tiny-vae/v1" and "drift" in late.data.tags
    early = by_batch[first["batches"][0]["batch_id"]]
    assert early.data.metrics["n_flagged"] >= 1
    logged = {a.path for a in client.list_artifacts(early.info.run_id)}
    assert {"scores.csv", "errors.csv", "summary.json", "panels", "flagged.json"} <= logged
    assert client.get_metric_history(early.info.run_id, "n_scored")  # metrics, not only files
