"""Find the files in the inbox that have not been judged yet, one at a time (no full listing in memory).

A file is known by its content, its SHA-256: bytes judged before, under any name or in any folder, are not
judged again, and new bytes at a known path are, whatever the file's timestamps say. The hash is cached
per path in the ledger with the file's identity (size, mtime, ctime, inode), so an unchanged inbox is not
read again on every run; ctime changes with every write and cannot be set back (ledger.py). Two copies of
new bytes in one batch: the first is judged, the second is recognised as judged on the next run.

Reads never leave the inbox: a symlink (to a file or to a folder) that leads outside it is not read but
reported, with its target, as a file that cannot be judged; a symlink to a folder inside is skipped (its
files are judged where they are) and symlinked folders are never descended into (no loops). Names starting
with '.' are skipped (the usual convention for uploads in progress: write `.name.part`, then rename), and
so are files modified in the last `min_age_seconds` or while they were being hashed; a later run takes them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.fs import real_path, within
from pipeline.data.images import IMAGE_SUFFIXES
from pipeline.inspection.ledger import Ledger

log = logging.getLogger(__name__)

SUPPORTED = "PNG, JPEG, BMP, TIFF"


@dataclass
class InboxFile:
    path: Path              # absolute path in the inbox (what is moved to processed/)
    rel_path: str           # relative to the inbox, '/' separators: the file's name in every output
    size: int
    mtime_ns: int
    sha256: str | None      # None when the file cannot be read
    problem: str | None = None  # set when the file cannot be judged before decoding (format, permissions, a link out)
    real_path: Path | None = None  # where the bytes are read from: `path` with every symlink resolved, inside the inbox


@dataclass
class ScanCounts:
    already_judged: int = 0
    too_recent: int = 0
    examined: int = 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identity(st: os.stat_result) -> str:
    """Changes whenever the file's bytes may have changed: a write or a replacement always moves ctime."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


def _walk(folder: Path, exclude: Path | None) -> Iterator[os.DirEntry]:
    """Entries under `folder` that are not real folders, depth first, streamed with scandir (symlinked folders
    come out as entries, never descended into: no loops)."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if exclude is None or Path(entry.path) != exclude:
                            stack.append(Path(entry.path))
                    else:
                        yield entry
        except (PermissionError, FileNotFoundError):
            continue  # an unreadable or vanished subfolder: nothing in it can be judged now


def _hash(real: Path, rel: str, st: os.stat_result, ledger: Ledger) -> tuple[str | None, str | None, bool]:
    """(sha256, problem, settled): the content hash, from the ledger's cache while the file's identity is
    unchanged; `settled` is False when the file changed while it was read (still being written)."""
    key = identity(st)
    cached = ledger.cached_hash(rel, key)
    if cached is not None:
        return cached, None, True
    try:
        digest = sha256_of(real)
        settled = identity(os.stat(real)) == key
    except PermissionError:
        return None, "permission denied (cannot read the file)", True
    except OSError as err:
        return None, f"cannot read the file ({err.strerror or err})", True
    if settled:
        ledger.cache_hash(rel, key, digest)
    return digest, None, settled


def _judged(ledger: Ledger, rel: str, st: os.stat_result, digest: str | None, retry_errors: bool) -> sqlite3.Row | None:
    """The ledger row that already judged this file, if any: by content, or for a file that could not be
    read (no hash) by its path, size and mtime. Errors count as judged unless `retry_errors`."""
    last = ledger.last_judgment(digest) if digest is not None else ledger.last_record(rel)
    if last is None:
        return None
    if digest is None and (last["sha256"] is not None or (last["size"], last["mtime_ns"]) != (st.st_size, st.st_mtime_ns)):
        return None
    return last if last["status"] == "scored" or not retry_errors else None


def new_files(inbox: Path, ledger: Ledger, counts: ScanCounts, min_age_seconds: float = 0.0,
              exclude: Path | None = None, retry_errors: bool = False,
              on_judged: Callable[[Path, str | None], None] | None = None) -> Iterator[InboxFile]:
    """Files under `inbox` (a resolved folder) not judged before, hashed, with a `problem` for those that
    cannot be images. `on_judged(path, sha256)` is called for files whose content was scored before."""
    newest_allowed = time.time_ns() - int(min_age_seconds * 1e9)
    handed_out: dict[str, str] = {}  # sha256 -> path, of new content handed out since the ledger's last commit
    commits = ledger.commits
    for entry in _walk(inbox, exclude):
        path = Path(entry.path)
        rel = path.relative_to(inbox).as_posix()
        try:
            st = entry.stat(follow_symlinks=True)
        except OSError:
            continue  # vanished, or a dangling symlink: nothing to read
        if st.st_mtime_ns > newest_allowed:
            counts.too_recent += 1
            continue
        real = real_path(path)
        inside = within(real, inbox)
        if inside and stat.S_ISDIR(st.st_mode):
            continue  # a symlink to a folder of the inbox: its files are judged where they are
        digest, problem = None, None
        if not inside:
            problem = f"links outside the inbox (to {real}): not read"
        elif not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        else:
            digest, problem, settled = _hash(real, rel, st, ledger)
            if not settled:
                counts.too_recent += 1
                continue
        if ledger.commits != commits:  # what was handed out before is in the ledger now
            handed_out, commits = {}, ledger.commits
        last = _judged(ledger, rel, st, digest, retry_errors)
        if last is not None or digest in handed_out:
            counts.already_judged += 1
            if last is None:
                log.info("%s: same content as %s, judged in this batch", rel, handed_out[digest])
            elif last["path"] != rel:
                log.info("%s: same content as %s, judged in batch %s", rel, last["path"], last["batch_id"])
            if last is not None and last["status"] == "scored" and on_judged is not None:
                on_judged(path, digest)
            continue
        if problem is None and path.suffix.lower() not in IMAGE_SUFFIXES:
            problem = f"unsupported format '{path.suffix or '(no suffix)'}' (the inbox takes {SUPPORTED})"
        if digest is not None:
            handed_out[digest] = rel
        counts.examined += 1
        yield InboxFile(path, rel, st.st_size, st.st_mtime_ns, digest, problem, real if inside else None)
