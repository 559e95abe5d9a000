"""Run a `python -m pipeline` command with one fault injected at one write point (crash tests in the
spirit of SQLite's): the process raises, or kills itself with SIGKILL, at the n-th time the target is
reached, before or after the target's own work, or in the middle of a write. Or, with `pause=<seconds>`,
it only waits there, at the n-th call and every later one: a test that wants to kill a run at a moment
of its choosing widens that moment from outside the product (the product has no test hooks).

    python -m tests.fault_runner <target> <before|after|mid> <raise|kill|pause=S> <nth> -- <command> [overrides]

`target` is `module:attr[.attr]`, patched where the product looks it up, or one of two special targets:

    os:replace=<suffix>   fires when a file ending in <suffix> is about to become visible (its temporary
                          file complete, not yet renamed), the moment an atomic write is most exposed;
    open:<text>           with `mid`: the n-th file opened for writing whose path contains <text> gets
                          half of its first write, flushed to the file, and then the fault: the process
                          dies (or raises, as a full disk would) in the middle of writing that file.
                          Python-level writes only (open, io.open, pathlib, PIL, numpy, pandas' CSV);
                          SQLite and pyarrow's own file handles are not seen.

`run_killed` does the same from a test without paying for a fresh interpreter each time: the child is
forked from a multiprocessing fork server that has imported the product once (its state is that of a
fresh `python -m pipeline` process, nothing of the test process's), and it really dies by SIGKILL.
"""

from __future__ import annotations

import builtins
import errno
import functools
import importlib
import io
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path


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


class _CutShort:
    """A writable file whose first write stops half-way: half of the bytes reach the file, then `fail()`."""

    def __init__(self, handle, fail):
        self._handle, self._fail = handle, fail

    def write(self, data):
        self._handle.write(data[:len(data) // 2])
        self._handle.flush()
        self._fail()

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)


def patched(target: str) -> list[tuple[object, str]]:
    """The (owner, attribute) pairs `install` replaces for `target`: what a caller saves and restores."""
    if target.startswith("open:"):
        return [(builtins, "open"), (io, "open")]
    return [_resolve("os:replace" if target.startswith("os:replace=") else target)]


def _install_mid_write(pattern: str, mode: str, nth: int) -> dict:
    real_open, calls = builtins.open, {"n": 0, "fired": False}

    def fail() -> None:
        calls["fired"] = True
        _fail(mode, f"open:{pattern} (file {nth}, in the middle of its first write)")

    @functools.wraps(real_open)
    def opener(file, mode_="r", *args, **kwargs):
        handle = real_open(file, mode_, *args, **kwargs)
        if isinstance(file, int) or not set(mode_) & set("wax+") or pattern not in os.fspath(file):
            return handle
        calls["n"] += 1
        return _CutShort(handle, fail) if calls["n"] == nth else handle

    builtins.open = io.open = opener
    return calls


def install(target: str, when: str, mode: str, nth: int) -> dict:
    """Wrap `target` so that its nth call fails (before or after doing its own work, or in the middle of a
    write for `open:` targets), or, in mode 'pause=<seconds>', waits that long at its nth and every later
    call. Returns the wrapper's state: {"n": calls so far, "fired": whether the fault was injected}."""
    pause = float(mode.split("=", 1)[1]) if mode.startswith("pause=") else None
    mid = target.startswith("open:")
    if (when not in ("before", "after", "mid") or (when == "mid") != mid or (mode not in ("raise", "kill") and pause is None)
            or (mid and pause is not None) or nth < 1):
        raise ValueError(f"bad fault spec: {target} {when} {mode} {nth}")
    if mid:
        return _install_mid_write(target.split(":", 1)[1], mode, nth)
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


PRELOAD = ["tests.fault_runner", "pipeline.__main__", "pipeline.commands.inspect", "pipeline.commands.score",
           "pipeline.commands.train"]


def _child(target: str, when: str, mode: str, nth: int, argv: list[str], env: dict, log: str) -> None:
    """In the forked child: the test's environment, output to `log`, the fault, then the command."""
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    install(target, when, mode, nth)
    from pipeline.__main__ import main as pipeline_main

    sys.exit(pipeline_main(argv))


def run_killed(target: str, when: str, nth: int, argv: list[str], log: Path, timeout: float = 300) -> int:
    """Run the CLI in a child process that SIGKILLs itself at the fault point; returns its exit code
    (-SIGKILL when the point was reached). The child's stdout and stderr go to `log`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # takes effect when the server starts (the first call)
    process = context.Process(target=_child, args=(target, when, "kill", nth, list(argv), dict(os.environ), str(log)))
    process.start()
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"the faulty run did not end within {timeout} s:\n{log.read_text()[-3000:]}")
    return process.exitcode


def main(argv: list[str]) -> int:
    split = argv.index("--")
    target, when, mode, nth = argv[:split]
    install(target, when, mode, int(nth))
    from pipeline.__main__ import main as pipeline_main

    return pipeline_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
