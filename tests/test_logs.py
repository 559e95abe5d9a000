"""Logs a person can read. `train`, `score` and a scheduled `inspect` each run as cron runs them: a process with
no terminal whose stdout and stderr are appended to one log file. The file holds our own log lines (progress
every few percent instead of bar frames) and each command's JSON summary: no carriage return, no colour code, no
library warning. On a terminal the progress is a bar (pipeline/progress.py)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.progress import Progress
from tests.conftest import _part, make_tiny_dataset, tiny_overrides, write_png

ROOT = Path(__file__).resolve().parents[1]
OURS = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) pipeline[.\w]*: \S")
# What MLflow prints when `train` registers a model version: information, not a warning.
REGISTRY = re.compile(r"(Successfully registered model|Created version '\d+' of model) '[\w-]+'\.?")


def _logged(log: Path, *args: str) -> int:
    """`python -m pipeline <args>` with stdout and stderr appended to `log` (cron's `>> log 2>&1`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FORCE_COLOR")}
    with open(log, "ab") as stream:
        return subprocess.run([sys.executable, "-m", "pipeline", *args], stdout=stream, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, cwd=ROOT, env=env, timeout=1200).returncode


def _read(log: Path) -> tuple[list[str], list[dict]]:
    """(our log lines, the JSON summaries); fails on any other line."""
    text = log.read_text()
    assert "\r" not in text and "\x1b[" not in text, "progress-bar frames or colour codes in the log"
    lines, summaries, block = [], [], None
    for line in text.splitlines():
        if block is not None:
            block.append(line)
            if line == "}":
                summaries.append(json.loads("\n".join(block)))
                block = None
        elif line == "{":
            block = [line]
        elif line.strip():
            assert OURS.match(line) or REGISTRY.fullmatch(line), f"not one of our log lines:\n{line}"
            lines.append(line)
    assert block is None, "a JSON summary cut short"
    return lines, summaries


def test_train_score_and_a_scheduled_inspect_write_a_readable_log(tmp_path):
    root = make_tiny_dataset(tmp_path / "tiny")
    # The progress display on, as at the defaults. log_every_n_steps=1: a tiny epoch has 1-2 batches, fewer than
    # the default interval of 5, which Lightning would warn about (a real epoch has 19).
    common = tiny_overrides(tmp_path, f"data.root={root}", "trainer.enable_progress_bar=true",
                            "trainer.log_every_n_steps=1")
    log = tmp_path / "cron.log"
    assert _logged(log, "train", *common) == 0
    assert _logged(log, "score", *common, f"score.output_dir={tmp_path / 'scored'}") == 0
    inbox = tmp_path / "inbox"
    rng = np.random.default_rng(3)
    for i in range(4):
        write_png(inbox / f"part_{i}.png", _part(rng, 48))
    assert _logged(log, "inspect", *common, f"inspect.inbox={inbox}", f"inspect.output_dir={tmp_path / 'inspection'}",
                   "inspect.min_age_seconds=0") == 0

    lines, summaries = _read(log)
    trained, scored, inspected = summaries
    assert trained["registered_model"] == "tiny-vae" and scored["n_images"] == 12 and inspected["n_scored"] == 4
    progress = [line for line in lines if " pipeline.progress: " in line]
    assert any("training vae: 2/2 epochs (100 %)" in line for line in progress)
    assert any("training the anomaly map: 4/4 steps (100 %)" in line for line in progress)
    assert any("scoring: 12/12 images (100 %)" in line for line in progress)
    assert any("batch" in line and "logged to MLflow: http://127.0.0.1:5000/#/experiments/" in line for line in lines)
    assert inspected["mlflow_experiment"].endswith("?workflowType=machine_learning")


def test_progress_is_a_line_every_few_percent_without_a_terminal_and_a_bar_on_one(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        progress = Progress(40, "training vae", "epoch", every_percent=25, stream=io.StringIO())
        for epoch in range(30):  # early stopping after 30 of 40
            progress.note(loss=f"{700 - epoch}")
            progress.update()
        progress.close()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "training vae: 10/40 epochs (25 %)", "training vae: 20/40 epochs (50 %)", "training vae: 30/40 epochs (75 %)",
        "training vae: 30/40 epochs (75 %)"]  # the last: where it ended
    assert caplog.records[-1].getMessage().endswith("loss=671")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    caplog.clear()
    screen = Terminal()
    bar = Progress(4, "scoring", "image", stream=screen)
    for _ in range(4):
        bar.update()
    bar.close()
    assert "\r" in screen.getvalue() and "4/4" in screen.getvalue() and not caplog.records
