"""Batch inspection in-process: exactly-once over repeated runs, changed and bad files, the lock,
recovery from every state a killed run can leave, false-alarm control and the drift check."""

import json
import logging
import os

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.detector import AnomalyDetector
from pipeline.detector import calibration as C
from pipeline.inspection.lock import InspectionLock
from pipeline.inspection.run import EXIT_CANNOT_RUN, EXIT_DRIFT, EXIT_FILE_ERRORS, EXIT_LOCKED, EXIT_OK
from pipeline.report.review_set import FLAGGED, RECORDS
from tests.inspection_helpers import add_dark, add_parts, inspect_overrides, ledger_rows, make_detector, results

NO_MLFLOW = "tracking.enabled=false"


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    return make_detector(tmp_path_factory.mktemp("judge") / "detector")


@pytest.fixture
def setup(tmp_path, judge):
    inbox, out, detector = tmp_path / "inbox", tmp_path / "out", judge

    def run(*extra, capsys=None):
        code = main(["inspect", *inspect_overrides(tmp_path, inbox, out, detector, NO_MLFLOW, *extra)])
        return code
    return inbox, out, run


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_second_run_scores_nothing_and_results_are_complete(setup, capsys):
    inbox, out, run = setup
    add_parts(inbox, [f"line1/{i:02d}.png" for i in range(7)] + ["line2/a.png"])
    add_dark(inbox, "line2/dark.png")
    assert run("inspect.max_batch_images=4") == EXIT_OK
    first = _summary(capsys)
    assert [b["n_seen"] for b in first["batches"]] == [4, 4, 1]
    assert first["n_scored"] == 9 and first["n_errors"] == 0
    frame = results(out)
    assert sorted(frame["image_path"]) == sorted(p.relative_to(inbox).as_posix() for p in inbox.rglob("*.png"))
    dark = frame.set_index("image_path").loc["line2/dark.png"]
    assert dark["is_anomaly"] == 1 and dark["score"] > dark["threshold"]
    assert (frame["is_anomaly"] == (frame["score"] > frame["threshold"])).all()
    batch = out / "batches" / dark["batch_id"]
    records = json.loads((batch / RECORDS).read_text())
    shown = {r["image_path"]: r for r in records}
    assert shown["line2/dark.png"]["status"] == FLAGGED and shown["line2/dark.png"]["rank"] == 1
    assert shown["line2/dark.png"]["key"] == "001_line2_dark"
    assert (batch / "review" / "panels" / "001_line2_dark.png").is_file() and (batch / "review" / "index.html").is_file()
    assert (batch / "maps" / "line2" / "dark.png.npy").is_file() and (batch / "scores.parquet").is_file()
    assert "line2/dark.png" in json.loads((batch / "summary.json").read_text())["flagged"]

    assert run("inspect.max_batch_images=4") == EXIT_OK
    second = _summary(capsys)
    assert second["batches"] == [] and second["already_judged"] == 9
    assert len(results(out)) == 9 and len(ledger_rows(out)) == 9
    assert sorted(p.name for p in inbox.rglob("*")) == sorted(["line1", "line2", *[f"{i:02d}.png" for i in range(7)],
                                                              "a.png", "dark.png"])  # inbox untouched


def test_changed_file_is_scored_again_identical_redelivery_is_not(setup, capsys):
    inbox, out, run = setup
    first, second = add_parts(inbox, ["a.png", "b.png"])
    assert run() == EXIT_OK
    capsys.readouterr()
    content = second.read_bytes()
    second.unlink()
    second.write_bytes(content)  # re-delivered: same bytes, new mtime
    add_dark(inbox, "a.png")     # same path, new content
    assert run() == EXIT_OK
    summary = _summary(capsys)
    assert summary["n_scored"] == 1 and summary["already_judged"] == 1
    frame = results(out)
    a_rows = frame[frame["image_path"] == "a.png"]
    assert len(frame) == 3 and len(a_rows) == 2 and a_rows["sha256"].nunique() == 2
    assert [r["path"] for r in ledger_rows(out)] == ["a.png", "b.png", "a.png"]


def test_bad_files_are_errors_with_reasons_and_do_not_stop_the_batch(setup, capsys):
    inbox, out, run = setup
    (good,) = add_parts(inbox, ["good.png"])
    inbox.joinpath("empty.png").write_bytes(b"")
    inbox.joinpath("truncated.png").write_bytes(good.read_bytes()[:120])
    inbox.joinpath("text.jpg").write_text("not a jpeg")
    inbox.joinpath("notes.gif").write_bytes(b"GIF89a")
    from PIL import Image
    Image.new("RGB", (48, 48), (10, 200, 30)).save(inbox / "colour.png")
    inbox.joinpath(".upload-in-progress.png").write_bytes(b"")  # hidden: not ours yet
    assert run() == EXIT_FILE_ERRORS
    summary = _summary(capsys)
    reasons = {os.path.basename(e["path"]): e["reason"] for e in summary["errors"]}
    assert set(reasons) == {"empty.png", "truncated.png", "text.jpg", "notes.gif", "colour.png"}
    assert "empty" in reasons["empty.png"] and "truncated" in reasons["truncated.png"]
    assert "unsupported format '.gif'" in reasons["notes.gif"] and "not a readable image" in reasons["text.jpg"]
    assert "3 channel" in reasons["colour.png"]
    assert summary["n_scored"] == 1 and list(results(out)["image_path"]) == ["good.png"]
    batch = out / "batches" / summary["batches"][0]["batch_id"]
    assert len(json.loads((batch / "summary.json").read_text())["errors"]) == 5
    statuses = {r["path"]: (r["status"], r["reason"]) for r in ledger_rows(out)}
    assert statuses["good.png"] == ("scored", None) and statuses["empty.png"][0] == "error"
    # Errors are recorded once; unchanged bad files are not re-reported, a repaired one is judged again.
    assert run() == EXIT_OK and _summary(capsys)["n_seen"] == 0
    inbox.joinpath("truncated.png").write_bytes(good.read_bytes())
    assert run() == EXIT_OK
    assert _summary(capsys)["n_scored"] == 1 and sorted(results(out)["image_path"]) == ["good.png", "truncated.png"]


def test_a_held_lock_refuses_a_second_run_and_a_stale_one_is_taken_over(setup, capsys, caplog):
    inbox, out, run = setup
    add_parts(inbox, ["a.png"])
    with InspectionLock(out / "inspect.lock"):
        assert run() == EXIT_LOCKED
    assert "another inspection holds" in capsys.readouterr().err
    assert not (out / "results.csv").exists()
    # What a killed holder leaves: its pid in the file (the kernel already dropped its flock).
    (out / "inspect.lock").write_text(json.dumps({"pid": 999999999, "host": "elsewhere", "started": "earlier"}))
    with caplog.at_level(logging.WARNING):
        assert run() == EXIT_OK
    assert "stale lock" in caplog.text and "999999999" in caplog.text
    assert len(results(out)) == 1 and (out / "inspect.lock").read_text() == ""  # released cleanly


def test_every_state_a_killed_run_leaves_is_recovered_exactly_once(setup, capsys):
    """Re-create, by hand, what a kill between two commit steps leaves, then run again."""
    inbox, out, run = setup
    add_parts(inbox, [f"{i}.png" for i in range(6)])
    assert run("inspect.max_batch_images=3") == EXIT_OK
    batches = [b["batch_id"] for b in _summary(capsys)["batches"]]
    full_csv = (out / "results.csv").read_bytes()
    last = json.loads((out / "batches" / batches[1] / "summary.json").read_text())
    import sqlite3
    db = sqlite3.connect(out / "ledger.sqlite")
    db.execute("DELETE FROM files WHERE batch_id = ?", (batches[1],))
    db.execute("DELETE FROM batches WHERE batch_id = ?", (batches[1],))
    db.commit(), db.close()
    # killed during step 3: half of the last batch's rows appended, the last line cut mid-way
    (out / "results.csv").write_bytes(full_csv[:last["csv_offset"] + 150])
    # killed during step 1 of a following batch: a staging folder
    (out / "batches" / ".staging-20990101T000000-abcdef" / "maps").mkdir(parents=True)
    assert run("inspect.max_batch_images=3") == EXIT_OK
    summary = _summary(capsys)
    assert summary["recovered_batches"] == [batches[1]] and summary["n_scored"] == 0
    assert (out / "results.csv").read_bytes() == full_csv  # exactly the uninterrupted result
    assert not list((out / "batches").glob(".staging-*"))
    assert len(ledger_rows(out)) == 6


def test_move_processed_moves_only_committed_scored_files(setup, capsys):
    inbox, out, run = setup
    add_parts(inbox, ["sub/a.png", "b.png"])
    inbox.joinpath("empty.png").write_bytes(b"")
    assert run("inspect.move_processed=true") == EXIT_FILE_ERRORS
    processed = inbox / "processed"
    assert sorted(p.relative_to(processed).as_posix() for p in processed.rglob("*.png")) == ["b.png", "sub/a.png"]
    assert inbox.joinpath("empty.png").exists()  # errors stay in the inbox for a person to look at
    capsys.readouterr()
    inbox.joinpath("b.png").write_bytes((processed / "b.png").read_bytes())  # delivered again: moved, not rescored
    assert run("inspect.move_processed=true") == EXIT_OK
    assert _summary(capsys)["n_scored"] == 0 and len(list(processed.glob("b*.png"))) == 2
    assert len(results(out)) == 2


def test_benjamini_hochberg_control_hand_computed(judge):
    spec = AnomalyDetector.load(judge).spec
    spec.calibration_scores = {spec.score: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]}  # p = (1 + #>=) / 10
    scores = np.array([9.5, 6.5, 7.5, 0.5])  # p = 0.1, 0.4, 0.3, 1.0
    flags, q = C.decide(spec, scores, fdr_q=0.45)
    # BH: sorted p (0.1, 0.3, 0.4, 1.0) * m / rank = (0.4, 0.6, 0.533, 1.0), then the running minimum from the top
    np.testing.assert_allclose(q, [0.4, 1.6 / 3, 1.6 / 3, 1.0])
    assert flags.tolist() == [1, 0, 0, 0]
    spec.alpha = 0.2  # per image: k = ceil(10 * 0.8) = 8 -> threshold 8.0
    flags, q = C.decide(spec, scores)
    assert flags.tolist() == [1, 0, 0, 0] and q is None and C.thresholds(spec) == {None: 8.0}


def test_an_unknown_control_is_refused(setup, capsys):
    inbox, out, run = setup
    add_parts(inbox, ["a.png"])
    assert run("inspect.control=bonferroni") == EXIT_CANNOT_RUN
    assert "inspect.control" in capsys.readouterr().err and not (out / "results.csv").exists()


def test_bh_in_a_batch_of_defects_and_it_drifted(setup, capsys):
    inbox, out, run = setup
    for i in range(25):
        add_dark(inbox, f"dark{i:02d}.png")
    assert run("inspect.control=bh", "inspect.fdr_q=0.1", "inspect.drift_min_images=20") == EXIT_DRIFT
    summary = _summary(capsys)
    assert [d["batch_id"] for d in summary["drift_batches"]] == [summary["batches"][0]["batch_id"]]
    frame = results(out)
    assert frame["is_anomaly"].all() and (frame["q_value"] <= 0.1).all()


def test_a_drifted_batch_is_judged_but_exits_6_and_says_why(setup, capsys):
    inbox, out, run = setup
    add_parts(inbox, [f"normal/{i:02d}.png" for i in range(20)], seed=1)
    assert run() == EXIT_OK  # a normal batch of 20 is tested and does not drift
    normal = _summary(capsys)
    assert normal["batches"][0]["drift"]["tested"] and not normal["drift_batches"]
    add_parts(inbox, [f"dim/{i:02d}.png" for i in range(20)], seed=2, gain=0.85)  # the lighting went down 15 %
    assert run() == EXIT_DRIFT
    drifted = _summary(capsys)
    assert drifted["n_scored"] == 20 and len(results(out)) == 40  # judged and recorded all the same
    (entry,) = drifted["drift_batches"]
    assert "darker" in entry["reason"] and "mean intensity" in entry["reason"]
    batch = json.loads((out / "batches" / entry["batch_id"] / "summary.json").read_text())
    assert batch["drift"]["drifted"] and "mean_intensity" in batch["drift"]["moved"]
    page = (out / "batches" / entry["batch_id"] / "review" / "index.html").read_text()
    assert '<p class="banner"><b>DRIFT</b>: images darker than calibration' in page
    add_parts(inbox, [f"few/{i:02d}.png" for i in range(5)], seed=3, gain=0.85)
    assert run() == EXIT_OK  # below inspect.drift_min_images: not tested
    assert not _summary(capsys)["batches"][0]["drift"]["tested"]
