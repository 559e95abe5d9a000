"""The ledger: a SQLite file recording every inbox file judged and every committed batch.

    files    one row per judged file content: path (relative to the inbox), size, mtime_ns, sha256,
             status ('scored' | 'error'), batch_id, model_version, reason (errors), recorded_at.
             Content is what counts: the newest row with a file's SHA-256 says whether those bytes were
             judged, under whatever name; a file that could not be read (no hash) is known by its path.
    batches  one row per committed batch, with its counts and its MLflow state: 'pending' (the
             outbox: not yet logged), 'logged' (with run id) or 'disabled' (tracking off).
    hashes   a cache of each inbox path's SHA-256 with the file's identity when it was hashed (size,
             mtime, ctime, inode, device): an unchanged file is not read again on every run. ctime is
             set by the kernel on every write and cannot be set back (touch, cp -p, rsync -t and utime
             all leave it at the time of the change), so preserved timestamps never hide new bytes.

A batch's file rows and its batch row are written in one transaction, after the batch's results are
durable on disk: that transaction is the commit point of a batch.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    sha256 TEXT,
    status TEXT NOT NULL CHECK (status IN ('scored', 'error')),
    batch_id TEXT NOT NULL,
    model_version TEXT,
    reason TEXT,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_path ON files (path, id);
CREATE INDEX IF NOT EXISTS files_by_sha256 ON files (sha256, id);
CREATE TABLE IF NOT EXISTS hashes (
    path TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    folder TEXT NOT NULL,
    committed_at TEXT NOT NULL,
    model_version TEXT,
    n_seen INTEGER, n_scored INTEGER, n_flagged INTEGER, n_errors INTEGER,
    mlflow_state TEXT NOT NULL CHECK (mlflow_state IN ('pending', 'logged', 'disabled')),
    mlflow_run_id TEXT,
    mlflow_attempts INTEGER NOT NULL DEFAULT 0,
    mlflow_last_error TEXT
);
"""

FILE_FIELDS = ("path", "size", "mtime_ns", "sha256", "status", "batch_id", "model_version", "reason")
HASH_FLUSH = 1000  # cached hashes written in one transaction (a lost cache only costs reading files again)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Ledger:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE ... COMMIT).
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a COMMIT is on disk when it returns
        self.db.executescript(SCHEMA)
        self._hashes: list[tuple[str, str, str]] = []  # cached hashes not yet written
        self.commits = 0  # batches committed through this connection

    def close(self) -> None:
        try:
            self.flush_hashes()
        finally:
            self.db.close()

    def last_record(self, rel_path: str) -> sqlite3.Row | None:
        """The newest row for `rel_path`, or None if the file was never seen."""
        return self.db.execute("SELECT * FROM files WHERE path = ? ORDER BY id DESC LIMIT 1", (rel_path,)).fetchone()

    def last_judgment(self, sha256: str) -> sqlite3.Row | None:
        """The newest row for content `sha256`, under whatever path it was judged, or None."""
        return self.db.execute("SELECT * FROM files WHERE sha256 = ? ORDER BY id DESC LIMIT 1", (sha256,)).fetchone()

    def cached_hash(self, rel_path: str, identity: str) -> str | None:
        """The SHA-256 hashed for `rel_path` when the file had this identity, if it still has it."""
        row = self.db.execute("SELECT identity, sha256 FROM hashes WHERE path = ?", (rel_path,)).fetchone()
        return row["sha256"] if row is not None and row["identity"] == identity else None

    def cache_hash(self, rel_path: str, identity: str, sha256: str) -> None:
        self._hashes.append((rel_path, identity, sha256))
        if len(self._hashes) >= HASH_FLUSH:
            self.flush_hashes()

    def flush_hashes(self) -> None:
        if self._hashes:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO hashes (path, identity, sha256) VALUES (?, ?, ?)", self._hashes)
            self.db.execute("COMMIT")
            self._hashes = []

    def committed_batch_ids(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT batch_id FROM batches")}

    def commit_batch(self, batch: dict, files: list[dict], mlflow_state: str) -> None:
        """Record a batch and all its files atomically (the batch's commit point)."""
        now = _now()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                f"INSERT INTO files ({', '.join(FILE_FIELDS)}, recorded_at) VALUES ({', '.join('?' * len(FILE_FIELDS))}, ?)",
                [tuple(f.get(k) for k in FILE_FIELDS) + (now,) for f in files])
            self.db.execute(
                "INSERT INTO batches (batch_id, folder, committed_at, model_version, n_seen, n_scored, n_flagged, "
                "n_errors, mlflow_state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch["batch_id"], batch["folder"], now, batch.get("model_version"), batch["n_seen"],
                 batch["n_scored"], batch["n_flagged"], batch["n_errors"], mlflow_state))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.commits += 1
        self.flush_hashes()

    def outbox(self) -> list[sqlite3.Row]:
        """Committed batches not yet logged to MLflow, oldest first."""
        return self.db.execute("SELECT * FROM batches WHERE mlflow_state = 'pending' ORDER BY committed_at, "
                               "batch_id").fetchall()

    def mark_logged(self, batch_id: str, run_id: str) -> None:
        self.db.execute("UPDATE batches SET mlflow_state = 'logged', mlflow_run_id = ?, mlflow_last_error = NULL, "
                        "mlflow_attempts = mlflow_attempts + 1 WHERE batch_id = ?", (run_id, batch_id))

    def mark_log_failed(self, batch_id: str, error: str) -> None:
        self.db.execute("UPDATE batches SET mlflow_attempts = mlflow_attempts + 1, mlflow_last_error = ? "
                        "WHERE batch_id = ?", (error[:2000], batch_id))

    def counts(self) -> dict[str, int]:
        """Files by status over the newest row per path."""
        rows = self.db.execute(
            "SELECT status, COUNT(*) FROM files WHERE id IN (SELECT MAX(id) FROM files GROUP BY path) GROUP BY status")
        return {status: n for status, n in rows}
