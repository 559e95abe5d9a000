"""The file system, safely: output files written whole or not at all, and reads kept inside their folder.

`atomic_write` writes into a hidden temporary file beside the target (`.<name>.tmp`) and renames it over
the target: a reader sees the previous file or the new one, never part of one. A write that fails (a full
disk) removes its temporary file; a killed process leaves at most that hidden file, which the next write
of the same target replaces. `fsync=True` also makes the file durable before it becomes visible (what a
later commit step relies on); a plain kill needs no fsync, the page cache survives it.

`real_path` and `within` tell whether a path found in a folder really stays in it (a symlink of the file,
or of a folder on its way, can lead anywhere): the dataset scan and the inbox scan skip and name such a path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def atomic_write(path: Path, write: Callable[[BinaryIO], object], fsync: bool = False) -> Path:
    """Call `write(handle)` on a temporary file, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str, fsync: bool = False) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()), fsync)


def real_path(path: Path) -> Path:
    """Where `path` really leads: every symlink on the way resolved (the path need not exist)."""
    return Path(os.path.realpath(path))


def within(real: Path, root: Path) -> bool:
    """Whether a resolved path `real` is the resolved folder `root` or inside it."""
    return real == root or real.is_relative_to(root)
