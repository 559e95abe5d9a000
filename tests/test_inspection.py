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
from tests.conftest import snapshot
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


def test_the_same_image_under_two_names_is_scored_once(setup, capsys):
    inbox, out, run = setup
    (original,) = add_parts(inbox, ["cam1/part.png"])
    (inbox / "cam1" / "copy in the same batch.png").write_bytes(original.read_bytes())
    assert run() == EXIT_OK
    first = _summary(capsys)
    assert first["n_scored"] == 1 and first["already_judged"] == 1
    # Delivered again later under another name, in another folder: recognised by its content.
    (inbox / "cam2").mkdir()
    (inbox / "cam2" / "part-again.png").write_bytes(original.read_bytes())
    assert run() == EXIT_OK
    second = _summary(capsys)
    assert second["n_scored"] == 0 and second["already_judged"] == 3
    (row,) = ledger_rows(out)  # whichever of the first two the scan met first
    assert row["path"] in ("cam1/part.png", "cam1/copy in the same batch.png") and len(results(out)) == 1


def test_a_replaced_file_with_its_size_and_timestamps_preserved_is_scored_again(setup, capsys):
    inbox, out, run = setup
    (image,) = add_parts(inbox, ["a.png"])
    assert run() == EXIT_OK
    assert _summary(capsys)["n_scored"] == 1
    before = image.stat()
    replaced = bytearray(image.read_bytes())
    replaced[-20:-12] = bytes(8)  # new bytes, same size (the PNG's last chunk: a corrupt CRC)
    image.write_bytes(bytes(replaced))
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p`, `touch -r` or rsync -t leave it
    assert image.stat().st_size == before.st_size and image.stat().st_mtime_ns == before.st_mtime_ns
    assert run() == EXIT_FILE_ERRORS  # judged again: the new bytes are a corrupt PNG
    summary = _summary(capsys)
    assert summary["n_seen"] == 1 and summary["already_judged"] == 0
    assert [(r["path"], r["status"]) for r in ledger_rows(out)] == [("a.png", "scored"), ("a.png", "error")]
    assert run() == EXIT_OK and _summary(capsys)["n_seen"] == 0  # and once only


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
    add_parts(inbox, ["truncated.png"], seed=5)  # delivered again, whole
    assert run() == EXIT_OK
    assert _summary(capsys)["n_scored"] == 1 and sorted(results(out)["image_path"]) == ["good.png", "truncated.png"]


def test_a_hostile_inbox_scores_only_the_images_inside_and_names_the_escapes(setup, tmp_path, capsys):
    inbox, out, run = setup
    (secret,) = add_parts(tmp_path / "outside", ["secret.png"], seed=9)
    add_parts(tmp_path / "outside", ["folder/also-secret.png"], seed=10)
    odd = ["ünïcødé 部品.png", "semi;colon $(rm -rf x) `q`.png", "-dash.png", "sub/deep/x.png", "a.png.npy.png"]
    add_parts(inbox, ["ok.png", *odd], seed=1)
    (inbox / "escape.png").symlink_to(secret)                                    # a file out
    (inbox / "sub" / "up.png").symlink_to("../../outside/secret.png")           # a relative link out
    (inbox / "escape-dir").symlink_to(secret.parent / "folder", target_is_directory=True)  # a folder out
    (inbox / "loop").symlink_to(inbox, target_is_directory=True)                 # a folder inside: not descended
    (inbox / "alias.png").symlink_to(inbox / "ok.png")                           # inside: the same image, judged once
    from tests.test_hostile_images import _bomb_png
    (inbox / "bomb.png").write_bytes(_bomb_png(100_000, 100_000))
    before = snapshot(tmp_path / "outside"), snapshot(inbox)

    assert run() == EXIT_FILE_ERRORS
    summary = _summary(capsys)
    reasons = {os.path.relpath(e["path"], inbox): e["reason"] for e in summary["errors"]}
    assert set(reasons) == {"escape.png", "sub/up.png", "escape-dir", "bomb.png"}
    assert reasons["escape.png"] == f"links outside the inbox (to {secret}): not read"
    assert reasons["sub/up.png"] == f"links outside the inbox (to {secret}): not read"
    assert reasons["escape-dir"] == f"links outside the inbox (to {secret.parent / 'folder'}): not read"
    assert "decompression bomb" in reasons["bomb.png"]
    scored = sorted(results(out)["image_path"])
    assert sorted(set(scored) - {"ok.png", "alias.png"}) == sorted(odd) and len(scored) == len(odd) + 1
    escapes = {r["path"]: r["sha256"] for r in ledger_rows(out) if r["path"] in reasons and r["path"] != "bomb.png"}
    assert escapes == {"escape.png": None, "sub/up.png": None, "escape-dir": None}  # never read, so never hashed
    # Outputs are named after the paths inside the inbox, all under the output folder; nothing else moved.
    batch = out / "batches" / summary["batches"][0]["batch_id"]
    assert sorted(p.relative_to(batch / "maps").as_posix() for p in (batch / "maps").rglob("*.npy")) == \
        sorted(f"{name}.npy" for name in scored)
    assert (snapshot(tmp_path / "outside"), snapshot(inbox)) == before
    assert run() == EXIT_OK and _summary(capsys)["n_seen"] == 0  # the escapes are reported once


def test_an_output_folder_inside_the_inbox_is_refused(setup, tmp_path, capsys):
    inbox, out, run = setup
    add_parts(inbox, ["a.png"])
    (tmp_path / "linked-out").symlink_to(inbox / "sub", target_is_directory=True)  # resolves into the inbox
    before = snapshot(inbox)
    for inside in (inbox, inbox / "results", tmp_path / "linked-out"):
        assert run(f"inspect.output_dir={inside}") == EXIT_CANNOT_RUN
        assert f"is inside the inbox {inbox}" in capsys.readouterr().err
    assert snapshot(inbox) == before and not out.exists()


def test_a_held_lock_refuses_a_second_run_and_a_stale_one_is_taken_over(setup, capsys, caplog):
    inbox, out, run = setup
    add_parts(inbox, ["a.png"])
    with InspectionLock(out / "inspect.lock"):
        assert run() == EXIT_LOCKED
    assert "another inspection holds" in capsys.readouterr().err
    assert not (out / "results").exists()
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
    table = results(out)
    part = out / "results" / f"{batches[1]}.parquet"
    import sqlite3
    db = sqlite3.connect(out / "ledger.sqlite")
    db.execute("DELETE FROM files WHERE batch_id = ?", (batches[1],))
    db.execute("DELETE FROM batches WHERE batch_id = ?", (batches[1],))
    db.commit(), db.close()
    # killed during step 3: the last batch's part half-written, under its temporary name
    part.with_name(f".{part.name}.tmp").write_bytes(part.read_bytes()[:150])
    part.unlink()
    assert len(results(out)) == 3  # a reader sees the first batch only, never a cut part
    # killed during step 1 of a following batch: a staging folder
    (out / "batches" / ".staging-20990101T000000-abcdef" / "maps").mkdir(parents=True)
    assert run("inspect.max_batch_images=3") == EXIT_OK
    summary = _summary(capsys)
    assert summary["recovered_batches"] == [batches[1]] and summary["n_scored"] == 0
    assert results(out).equals(table)  # exactly the uninterrupted result
    assert not list((out / "batches").glob(".staging-*")) and not list((out / "results").glob(".*"))
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
    assert "inspect.control" in capsys.readouterr().err and not (out / "results").exists()


def test_bh_in_a_batch_of_defects_and_it_drifted(setup, capsys):
    inbox, out, run = setup
    for i in range(25):
        add_dark(inbox, f"dark{i:02d}.png", mark=i)  # 25 different images
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
