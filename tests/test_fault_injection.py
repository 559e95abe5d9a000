"""Crash tests: a fault at every write point of `inspect` and `score`, by exception and by SIGKILL, and a
SIGKILL in the middle of writing each kind of file they write, then a rerun; the invariants hold after each.

    inspect: every inbox image is in the results table exactly once, the ledger agrees with it, no staging
             folder or temporary file is left, every batch is logged to MLflow exactly once;
    score:   scores.csv has one row per test image, every map is whole, no temporary file is left, and
             the scoring run is logged to MLflow once, finished.

While the process lies dead (before the rerun), every file a reader can see must parse completely:
a crash may leave work undone, never half-written results.

The faults are injected by tests/fault_runner.py, which wraps the write point where the product
looks it up (or, for a kill in the middle of a write, the files it opens); a SIGKILL run is a real child
process (forked from a fork server that imported the product once) killing itself at that point.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.__main__ import main
from pipeline.data.layout import scan_test
from pipeline.report.review_set import RECORDS
from tests import fault_runner
from tests.inspection_helpers import add_dark, add_parts, inspect_overrides, ledger_rows, make_detector, results


# (target, before|after, n-th call). Inspection runs 3 batches (3, 3 and 1 images); the faults hit batch 2.
INSPECT_POINTS = [
    ("pipeline.detector.files:save_map", "after", 4),               # a map of batch 2 written, the rest not
    ("os:replace=.npy", "before", 4),                               # a map's temporary file complete, not renamed
    ("pipeline.inspection.batch:_write_table", "after", 3),         # scores table staged, errors table not
    ("pipeline.inspection.batch:build_review", "before", 2),        # review panels and thumbnails
    ("pipeline.inspection.batch:write_records", "after", 2),        # review records staged, review page not
    ("pipeline.inspection.run:publish", "before", 2),               # staging folder complete, not renamed
    ("pipeline.inspection.run:publish", "after", 2),                # batch folder visible, its results part not
    ("pipeline.inspection.commit:write_results", "after", 2),       # results part visible, ledger not committed
    ("pipeline.inspection.ledger:Ledger.commit_batch", "before", 2),
    ("pipeline.inspection.ledger:Ledger.commit_batch", "after", 2),  # committed, not logged, not moved
    ("pipeline.inspection.run:_move", "after", 4),                  # half of batch 2 moved to processed/
    ("pipeline.tracking.detection_run:_records", "before", 2),      # MLflow run half logged (artifacts, no images)
    ("pipeline.inspection.run:log_batch", "after", 2),              # MLflow run done, outbox not told
    ("pipeline.inspection.ledger:Ledger.mark_logged", "before", 2),
]
# Scoring writes 12 maps, then scores.csv, errors.csv, the review set (panels, records, page), figures,
# metrics.json, then the MLflow run.
SCORE_POINTS = [
    ("pipeline.detector.files:save_map", "after", 3),
    ("os:replace=.npy", "before", 3),
    ("os:replace=scores.csv", "before", 1),
    ("pipeline.commands.score:atomic_write_text", "after", 1),      # scores.csv written, errors.csv not
    ("pipeline.commands.score:build_review", "before", 1),          # review panels
    ("pipeline.commands.score:evaluation_figures", "before", 1),
    ("pipeline.commands.score:write_records", "after", 1),          # review records written, page not
    ("os:replace=metrics.json", "before", 1),
    ("pipeline.tracking.detection_run:_records", "before", 1),      # MLflow run half logged
    ("pipeline.commands.score:log_detection_run", "before", 1),
]
# A SIGKILL in the middle of writing a file (half of its first write on disk), for every kind of file
# each command writes that a reader could see, or that a later step reads back.
INSPECT_MID_WRITES = [
    ("open:.npy", "mid", 4),                 # a map of batch 2 (staged)
    ("open:scores.csv", "mid", 2),           # batch 2's table (staged)
    ("open:records.json", "mid", 2),         # its review records (staged)
    ("open:summary.json", "mid", 2),         # its summary (staged), read back by the commit
    ("open:/results/", "mid", 2),            # batch 2's part of the results table
]
SCORE_MID_WRITES = [
    ("open:.npy", "mid", 3),
    ("open:scores.csv", "mid", 1),
    ("open:errors.csv", "mid", 1),
    ("open:/panels/", "mid", 1),
    ("open:/thumbnails/", "mid", 1),
    ("open:records.json", "mid", 1),
    ("open:index.html", "mid", 1),
    ("open:/figures/", "mid", 1),
    ("open:metrics.json", "mid", 1),
]
MODES = ["raise", "kill"]
INBOX = [f"cam{i % 2}/part {i:02d}.png" for i in range(7)]  # a space in every name, two folders


def _point_id(point) -> str:
    target, when, nth = point
    return f"{target.split(':')[-1].strip('/')}-{when}-{nth}"


def _cases(points: list, mid_writes: list) -> list:
    """Every write point by exception and by SIGKILL, every mid-write point by SIGKILL."""
    return [pytest.param(p, m, id=f"{_point_id(p)}-{m}") for p in points for m in MODES] + \
        [pytest.param(p, "kill", id=f"{_point_id(p)}-kill") for p in mid_writes]


def run_with_fault(point, mode: str, argv: list[str], monkeypatch, log_dir: Path) -> int:
    """Run the CLI with the fault: in this process (raise) or as a child process that SIGKILLs itself."""
    target, when, nth = point
    if mode == "kill":
        log = log_dir / "killed.log"
        code = fault_runner.run_killed(target, when, nth, argv, log)
        assert code == -signal.SIGKILL, f"the fault point was never reached (exit {code}):\n{log.read_text()[-3000:]}"
        return code
    with monkeypatch.context() as patch:
        for owner, attr in fault_runner.patched(target):
            patch.setattr(owner, attr, getattr(owner, attr))  # restored when the context ends
        state = fault_runner.install(target, when, "raise", nth)
        try:
            code = main(argv)  # an injected OSError is a failed run (exit != 0) or, where that is safe,
        except fault_runner.InjectedFault:  # deferred (MLflow logging: the batch stays in the outbox)
            code = -1
    assert state["fired"], "the fault point was never reached"
    return code


def assert_visible_files_whole(folder: Path) -> None:
    """Every file a reader can see (not hidden, not in a staging folder) parses completely."""
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_dir() or any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix == ".csv":
            frame = pd.read_csv(path)
            assert not frame.isna().all(axis=1).any(), f"{rel} has a blank row"
            if "image_path" in frame and "score" in frame:
                assert frame["score"].notna().all(), f"{rel} has a cut row"
        elif path.suffix == ".npy":
            assert np.isfinite(np.load(path).astype(np.float32)).all(), rel
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            pd.read_parquet(path)
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>"), f"{rel} is cut"
    if (folder / "results").is_dir() and any((folder / "results").glob("*.parquet")):
        table = pd.read_parquet(folder / "results")  # the results table as a reader reads it: its parts' union
        assert table["score"].notna().all() and table["image_path"].is_unique


def assert_no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".staging-")]


# ---- inspection ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def judge(tmp_path_factory) -> Path:
    return make_detector(tmp_path_factory.mktemp("judge") / "detector")


def _mlflow_point(point) -> bool:
    return any(name in point[0] for name in ("detection_run", "log_batch", "mark_logged"))


def assert_inspection_invariant(out: Path, tracking_store: Path | None) -> None:
    frame = results(out)
    assert sorted(frame["image_path"]) == sorted(INBOX), "every image exactly once in the results table"
    ledger = ledger_rows(out)
    assert sorted(r["path"] for r in ledger) == sorted(INBOX), "the ledger knows every image exactly once"
    assert {(r["path"], r["batch_id"]) for r in ledger} == set(zip(frame["image_path"], frame["batch_id"]))
    batch_dirs = {p.name for p in (out / "batches").iterdir()}
    assert batch_dirs == set(frame["batch_id"]), "every batch folder is in the results, and only those"
    assert_no_temporaries(out)
    assert_visible_files_whole(out)
    db = sqlite3.connect(out / "ledger.sqlite")
    try:
        batches = {row[0] for row in db.execute("SELECT batch_id FROM batches")}
    finally:
        db.close()
    assert batches == batch_dirs
    if tracking_store is not None:
        client = MlflowClient(f"sqlite:///{tracking_store / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="tags.stage = 'inspect' and attributes.status = 'FINISHED'")
        logged = [r.data.tags["batch_id"] for r in runs]
        assert sorted(logged) == sorted(batch_dirs), "every batch logged to MLflow exactly once"


@pytest.mark.parametrize("point,mode", _cases(INSPECT_POINTS, INSPECT_MID_WRITES))
def test_inspection_survives_a_fault_at_every_write_point(point, mode, judge, tmp_path, monkeypatch, capsys):
    inbox, out, processed = tmp_path / "inbox", tmp_path / "out", tmp_path / "processed"
    add_parts(inbox, INBOX[:-1])
    add_dark(inbox, INBOX[-1])  # flagged (and every image of a 3-image batch is in its audit sample): panels
    tracking = _mlflow_point(point)
    # tracking.uri=null: the local store under tmp_path, whatever MLFLOW_TRACKING_URI other tests left set
    extra = ["tracking.uri=null"] if tracking else ["tracking.enabled=false"]
    if "_move" in point[0]:
        extra += ["inspect.move_processed=true", f"inspect.processed_dir={processed}"]
    # an audit sample of one per batch keeps the panels (and MLflow images) few: every batch still has some
    argv = ["inspect", *inspect_overrides(tmp_path, inbox, out, judge, "inspect.max_batch_images=3",
                                          "review.audit_size=1", *extra)]

    run_with_fault(point, mode, argv, monkeypatch, tmp_path)
    assert_visible_files_whole(out)          # dead or failed: nothing half-written is visible
    assert len(list(inbox.rglob("*.png"))) + len(list(processed.rglob("*.png"))) == len(INBOX)  # no input lost

    capsys.readouterr()
    assert main(argv) == 0                   # the rerun finishes the work
    assert_inspection_invariant(out, tmp_path / "mlruns" if tracking else None)
    if "_move" in point[0]:
        assert not list(inbox.rglob("*.png")) and len(list(processed.rglob("*.png"))) == len(INBOX)
    capsys.readouterr()
    assert main(argv) == 0                   # and a third run finds nothing new
    assert json.loads(capsys.readouterr().out)["n_scored"] == 0
    assert_inspection_invariant(out, tmp_path / "mlruns" if tracking else None)


# ---- scoring ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("point,mode", _cases(SCORE_POINTS, SCORE_MID_WRITES))
def test_scoring_survives_a_fault_at_every_write_point(point, mode, trained, tmp_path, monkeypatch, capsys):
    out = tmp_path / "score"
    tracking = "detection_run" in point[0]
    experiment = f"faults-{tmp_path.name}"  # this test's scoring runs only
    overrides = trained.with_(f"score.output_dir={out}", f"tracking.score_experiment={experiment}",
                              "review.audit_size=2")
    if not tracking:  # without the store, `score` takes the trained detector's folder
        overrides += ["tracking.enabled=false", f"detector={trained.detector_dir}"]
    argv = ["score", *overrides]

    run_with_fault(point, mode, argv, monkeypatch, tmp_path)
    if out.exists():
        assert_visible_files_whole(out)

    capsys.readouterr()
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    n_images = len(scan_test(trained.root))
    frame = pd.read_csv(out / "scores.csv")
    assert len(frame) == n_images and frame["image_path"].is_unique
    assert sorted(p.relative_to(out / "maps").as_posix()[:-len(".npy")] for p in (out / "maps").rglob("*.npy")) \
        == sorted(frame["image_path"])
    assert json.loads((out / "metrics.json").read_text())["n_images"] == n_images
    records = json.loads((out / RECORDS).read_text())
    assert records and all((out / r["panel_file"]).is_file() for r in records)
    assert_no_temporaries(out)
    assert_visible_files_whole(out)
    if tracking:
        client = MlflowClient(f"sqlite:///{trained.base / 'mlruns' / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                  filter_string="attributes.status = 'FINISHED'")
        assert [r.info.run_id for r in runs] == [metrics["run_id"]], "the rerun's run is the one finished run"
