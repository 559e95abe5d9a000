"""Making a batch durable, exactly once, whatever moment the process is killed at.

The order of a batch's commit, and what a run killed between two steps leaves behind:

  1. write everything into batches/.staging-<id>/ and fsync it   killed: staging folder, deleted on the next run
  2. rename it to batches/<id>/ (atomic) and fsync the parent     killed: a complete batch folder the ledger
                                                                   does not know: rolled forward on the next run
  3. write its rows as results/<id>.parquet (aside, fsynced,      killed: a hidden temporary file, rewritten by
     then renamed into place)                                      the roll-forward
  4. one ledger transaction: all its files + the batch row        the commit point: from here on its files are
                                                                   never judged again

The cumulative results table is the union of results/*.parquet, one part per batch with scored images:
`pd.read_parquet("<output_dir>/results")` (hidden temporary files are not part of it). A part appears
whole or not at all, and a roll-forward rewrites the same part, so every image is in the table exactly
once: before step 4 its batch is finished from the folder (never rescored). Only one process writes at a
time (the lock), so at most one batch can be half-committed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.data.fs import atomic_write
from pipeline.inspection.ledger import Ledger

log = logging.getLogger(__name__)

RESULTS = "results"
BATCHES = "batches"
STAGING_PREFIX = ".staging-"
SUMMARY = "summary.json"
SCORES = "scores.parquet"


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


def publish(staging: Path, final: Path) -> None:
    """Steps 1-2: make the staged batch durable, then visible under its final name in one rename."""
    fsync_tree(staging)
    os.rename(staging, final)
    fsync_path(final.parent)


def results_part(out_dir: Path, batch_id: str) -> Path:
    return out_dir / RESULTS / f"{batch_id}.parquet"


def write_results(out_dir: Path, batch_dir: Path, batch_id: str) -> Path | None:
    """Step 3: the batch's scored rows as its own part of the results table, whole or not at all
    (None when the batch scored no image: an empty part would carry no column types)."""
    scores = batch_dir / SCORES
    if not scores.exists() or pq.read_metadata(scores).num_rows == 0:
        return None
    part = atomic_write(results_part(out_dir, batch_id), lambda handle: handle.write(scores.read_bytes()), fsync=True)
    fsync_path(part.parent)
    return part


def _nullable(value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def ledger_rows(batch_dir: Path, summary: dict) -> list[dict]:
    """The ledger's file rows of a batch, read back from its folder (the same code path for a fresh
    commit and for a roll-forward after a crash)."""
    rows = []
    for name, status in ((SCORES, "scored"), ("errors.parquet", "error")):
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
    write_results(out_dir, batch_dir, summary["batch_id"])
    batch = {k: summary[k] for k in ("batch_id", "model_version", "n_seen", "n_scored", "n_flagged", "n_errors")}
    batch["folder"] = str(batch_dir)
    ledger.commit_batch(batch, ledger_rows(batch_dir, summary), mlflow_state)
    return summary


def recover(out_dir: Path, ledger: Ledger, mlflow_state: str) -> list[str]:
    """Clean up after a run that was killed: drop staging folders and temporary parts, roll forward published
    batches the ledger does not know. Returns the ids of the batches rolled forward."""
    batches = out_dir / BATCHES
    if not batches.is_dir():
        return []
    for staging in batches.glob(f"{STAGING_PREFIX}*"):
        log.warning("removing %s, left by an inspection that was killed before finishing it", staging)
        shutil.rmtree(staging, ignore_errors=True)
    for tmp in (out_dir / RESULTS).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
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
