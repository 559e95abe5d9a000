"""Find the files in the inbox that have not been judged yet, one at a time (no full listing in memory).

A file counts as already judged when the ledger's newest row for its path has the same size and
mtime, or the same content hash (a re-delivered identical file, or one that was only touched).
A changed file at the same path is judged again. Names starting with '.' are skipped (the usual
convention for uploads in progress: write `.name.part`, then rename), and so are files modified in
the last `min_age_seconds`; both are picked up by a later run.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.images import IMAGE_SUFFIXES
from pipeline.inspection.ledger import Ledger

SUPPORTED = "PNG, JPEG, BMP, TIFF"


@dataclass
class InboxFile:
    path: Path              # absolute path
    rel_path: str           # relative to the inbox, '/' separators: the ledger key
    size: int
    mtime_ns: int
    sha256: str | None      # None when the file cannot be read
    problem: str | None = None  # set when the file cannot be judged before decoding (format, permissions)


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


def _walk(folder: Path, exclude: Path | None) -> Iterator[os.DirEntry]:
    """Files under `folder`, depth first, streamed with scandir (no symlinked directories: no loops)."""
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


def new_files(inbox: Path, ledger: Ledger, counts: ScanCounts, min_age_seconds: float = 0.0,
              exclude: Path | None = None, retry_errors: bool = False,
              on_judged: Callable[[Path, str | None], None] | None = None) -> Iterator[InboxFile]:
    """Files under `inbox` not judged before, hashed, with a `problem` for those that cannot be images.
    `on_judged(path, sha256)` is called for files whose newest ledger row says 'scored' unchanged."""
    newest_allowed = time.time_ns() - int(min_age_seconds * 1e9)
    for entry in _walk(inbox, exclude):
        path = Path(entry.path)
        rel = path.relative_to(inbox).as_posix()
        try:
            st = entry.stat(follow_symlinks=True)
        except OSError:
            continue  # vanished or a dangling symlink
        if st.st_mtime_ns > newest_allowed:
            counts.too_recent += 1
            continue
        last = ledger.last_record(rel)
        judged = last is not None and (last["status"] == "scored" or not retry_errors)
        if judged and last["size"] == st.st_size and last["mtime_ns"] == st.st_mtime_ns:
            counts.already_judged += 1
            if on_judged is not None and last["status"] == "scored":
                on_judged(path, last["sha256"])
            continue
        problem, digest = None, None
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        else:
            try:
                digest = sha256_of(path)
            except PermissionError:
                problem = "permission denied (cannot read the file)"
            except OSError as err:
                problem = f"cannot read the file ({err.strerror or err})"
        if judged and digest is not None and digest == last["sha256"]:
            counts.already_judged += 1  # same content: re-delivered or touched
            if on_judged is not None and last["status"] == "scored":
                on_judged(path, digest)
            continue
        if problem is None and path.suffix.lower() not in IMAGE_SUFFIXES:
            problem = f"unsupported format '{path.suffix or '(no suffix)'}' (the inbox takes {SUPPORTED})"
        counts.examined += 1
        yield InboxFile(path, rel, st.st_size, st.st_mtime_ns, digest, problem)
