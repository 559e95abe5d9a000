"""Making a batch durable, exactly once, whatever moment the process is killed at.

The order of a batch's commit, and what a run killed between two steps leaves behind:

  1. write everything into batches/.staging-<id>/ and fsync it   killed: staging folder, deleted on the next run
  2. rename it to batches/<id>/ (atomic) and fsync the parent     killed: a complete batch folder the ledger
                                                                   does not know: rolled forward on the next run
  3. append its rows to results.csv (from the byte offset          killed: a partial append, cut back to the offset
     recorded in its summary.json) and fsync                       and redone by the roll-forward
  4. one ledger transaction: all its files + the batch row        the commit point: from here on its files are
                                                                   never judged again

Every image therefore lands in results.csv exactly once: before step 4 its batch is finished from the
folder (never rescored), and a partial append is cut back to the recorded offset before it is redone.
Only one process writes at a time (the lock), so at most one batch can be half-committed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.inspection.ledger import Ledger

log = logging.getLogger(__name__)

RESULTS_CSV = "results.csv"
BATCHES = "batches"
STAGING_PREFIX = ".staging-"
SUMMARY = "summary.json"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (a batch holds at most inspect.max_batch_images maps)."""
    for current, _, files in os.walk(folder):
        for name in files:
            fsync_path(Path(current) / name)
        fsync_path(Path(current))


def results_size(out_dir: Path) -> int:
    path = out_dir / RESULTS_CSV
    return path.stat().st_size if path.exists() else 0


def publish(staging: Path, final: Path) -> None:
    """Steps 1-2: make the staged batch durable, then visible under its final name in one rename."""
    fsync_tree(staging)
    os.rename(staging, final)
    fsync_path(final.parent)


def append_results(csv_path: Path, frame: pd.DataFrame, offset: int) -> None:
    """Step 3: append `frame` to the cumulative CSV starting exactly at byte `offset`."""
    size = csv_path.stat().st_size if csv_path.exists() else 0
    if size > offset:
        log.warning("%s: cutting an interrupted append back from %d to %d bytes", csv_path, size, offset)
        os.truncate(csv_path, offset)
    elif size < offset:
        log.warning("%s is shorter (%d bytes) than when batch was staged (%d): it was edited; appending at the end",
                    csv_path, size, offset)
    if frame.empty:
        return
    with open(csv_path, "a", newline="") as handle:
        frame.to_csv(handle, header=handle.tell() == 0, index=False)
        handle.flush()
        os.fsync(handle.fileno())


def _nullable(value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def ledger_rows(batch_dir: Path, summary: dict) -> list[dict]:
    """The ledger's file rows of a batch, read back from its folder (the same code path for a fresh
    commit and for a roll-forward after a crash)."""
    rows = []
    for name, status in (("scores.parquet", "scored"), ("errors.parquet", "error")):
        path = batch_dir / name
        if not path.exists():
            continue
        for rec in pd.read_parquet(path).to_dict("records"):
            rows.append({"path": rec["image_path"], "size": int(rec["file_size"]), "mtime_ns": int(rec["file_mtime_ns"]),
                         "sha256": _nullable(rec["sha256"]), "status": status, "batch_id": summary["batch_id"],
                         "model_version": summary.get("model_version"), "reason": _nullable(rec.get("reason"))})
    return rows


def commit(out_dir: Path, ledger: Ledger, batch_dir: Path, mlflow_state: str) -> dict:
    """Steps 3-4 for a published batch folder; returns its summary."""
    summary = json.loads((batch_dir / SUMMARY).read_text())
    scores = pd.read_parquet(batch_dir / "scores.parquet") if (batch_dir / "scores.parquet").exists() else pd.DataFrame()
    append_results(out_dir / RESULTS_CSV, scores, int(summary["csv_offset"]))
    batch = {k: summary[k] for k in ("batch_id", "model_version", "n_seen", "n_scored", "n_flagged", "n_errors")}
    batch["folder"] = str(batch_dir)
    ledger.commit_batch(batch, ledger_rows(batch_dir, summary), mlflow_state)
    return summary


def recover(out_dir: Path, ledger: Ledger, mlflow_state: str) -> list[str]:
    """Clean up after a run that was killed: drop staging folders, roll forward published batches the
    ledger does not know. Returns the ids of the batches rolled forward."""
    batches = out_dir / BATCHES
    if not batches.is_dir():
        return []
    for staging in batches.glob(f"{STAGING_PREFIX}*"):
        log.warning("removing %s, left by an inspection that was killed before finishing it", staging)
        shutil.rmtree(staging, ignore_errors=True)
    committed = ledger.committed_batch_ids()
    rolled = []
    for folder in sorted(p for p in batches.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name in committed:
            continue
        if not (folder / SUMMARY).is_file():  # not ours, or damaged by hand: leave it alone
            log.warning("%s has no %s: not a batch folder, left alone", folder, SUMMARY)
            continue
        log.warning("finishing the commit of batch %s, interrupted by a killed inspection", folder.name)
        commit(out_dir, ledger, folder, mlflow_state)
        rolled.append(folder.name)
    return rolled
