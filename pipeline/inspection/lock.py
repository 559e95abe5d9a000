"""One inspection at a time per output folder: an exclusive `flock` on a lock file.

The kernel drops a `flock` when its process dies, even under `kill -9`, so a killed run can never
block the next one; the lock file's content (pid, host, start time) only serves to *report* a stale
lock: content left behind means the previous holder ended without releasing it. We use fcntl (the
standard library) rather than the `filelock` package because we want the holder's pid in the file
and in the error. `flock` is reliable on local file systems; on NFS keep output_dir local.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)


class InspectionLocked(RuntimeError):
    """Another inspection holds the lock; the message names its pid."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class InspectionLock:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fd: int | None = None
        self.stale_holder: dict | None = None  # what a previous, dead holder left behind

    def acquire(self) -> "InspectionLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise InspectionLocked(f"another inspection holds {self.path} (pid {holder.get('pid', '?')} on "
                                   f"{holder.get('host', '?')}, since {holder.get('started', '?')})") from None
        previous = _read_holder(fd)
        if previous:
            self.stale_holder = previous
            alive = previous.get("host") == socket.gethostname() and _pid_alive(int(previous.get("pid", -1)))
            log.warning("stale lock %s: the inspection with pid %s (started %s) ended without releasing it%s; "
                        "taking over and recovering its unfinished batch", self.path, previous.get("pid"),
                        previous.get("started"), "" if not alive else " (that pid is now another process)")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # empty = released cleanly; content left behind = stale
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "InspectionLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {"pid": "?"}
