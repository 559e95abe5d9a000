"""Run a `python -m pipeline` command with one fault injected at one write point (crash tests in the
spirit of SQLite's): the process raises, or kills itself with SIGKILL, at the n-th time the target is
reached, before or after the target's own work. Or, with `pause=<seconds>`, it only waits there, at
the n-th call and every later one: a test that wants to kill a run at a moment of its choosing widens
that moment from outside the product (the product has no test hooks).

    python -m tests.fault_runner <module:attr[.attr]> <before|after> <raise|kill|pause=S> <nth> -- <command> [overrides]

`target` is patched where the product looks it up. The special target `os:replace=<suffix>` fires
when a file ending in <suffix> is about to become visible (its temporary file complete, not yet
renamed), the moment an atomic write is most exposed.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import signal
import sys
import time


class InjectedFault(OSError):
    """The injected failure: an OSError, as a dying disk or a full file system would raise."""

    def __init__(self, where: str):
        super().__init__(errno.EIO, f"injected fault at {where}")


def _fail(mode: str, where: str) -> None:
    if mode == "kill":
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(where)


def _resolve(target: str):
    """'pkg.module:Class.attr' -> (owner object, attribute name)."""
    module_name, _, path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, attr = path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    return owner, attr


def install(target: str, when: str, mode: str, nth: int) -> dict:
    """Wrap `target` so that its nth call fails (before or after doing its own work), or, in mode
    'pause=<seconds>', waits that long at its nth and every later call. Returns the wrapper's state:
    {"n": calls so far, "fired": whether the fault was injected}."""
    pause = float(mode.split("=", 1)[1]) if mode.startswith("pause=") else None
    if when not in ("before", "after") or (mode not in ("raise", "kill") and pause is None) or nth < 1:
        raise ValueError(f"bad fault spec: {target} {when} {mode} {nth}")
    suffix = None
    if target.startswith("os:replace="):
        target, suffix = "os:replace", target.split("=", 1)[1]
    owner, attr = _resolve(target)
    real = getattr(owner, attr)
    calls = {"n": 0, "fired": False}

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        if suffix is not None and not str(args[1] if len(args) > 1 else kwargs.get("dst", "")).endswith(suffix):
            return real(*args, **kwargs)
        calls["n"] += 1
        if pause is not None:  # wait, never fail
            calls["fired"] |= calls["n"] >= nth
            if calls["n"] >= nth and when == "before":
                time.sleep(pause)
            result = real(*args, **kwargs)
            if calls["n"] >= nth and when == "after":
                time.sleep(pause)
            return result
        hit = calls["n"] == nth
        calls["fired"] |= hit
        if hit and when == "before":
            _fail(mode, f"{target} (call {nth}, before)")
        result = real(*args, **kwargs)
        if hit and when == "after":
            _fail(mode, f"{target} (call {nth}, after)")
        return result

    setattr(owner, attr, wrapper)
    return calls


def main(argv: list[str]) -> int:
    split = argv.index("--")
    target, when, mode, nth = argv[:split]
    install(target, when, mode, int(nth))
    from pipeline.__main__ import main as pipeline_main

    return pipeline_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
