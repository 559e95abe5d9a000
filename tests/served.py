"""The product run by a new user against a real MLflow tracking server, through the CLI:

    train (-> version 1, champion)   train (-> version 2)   score (newest: version 2)
    promote 2 (-> champion)          score detector=1

State is shared by tests/test_registry_server.py, tests/test_inspection_process.py and tests/e2e/test_mlflow_ui.py.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import TINY, cli, make_tiny_dataset
from tests.mlflow_server import mlflow_server

# alpha=0.5 puts the threshold at the median of the few calibration scores, so a two-epoch model
# flags some images of both kinds: panels to look at and false alarms to review.
SERVED_ALPHA = "score.alpha=0.5"


def overrides(folder: Path, *extra: str) -> list[str]:
    # tracking.uri is taken from MLFLOW_TRACKING_URI (set below), as a user would; other tests in the same
    # process may change that variable (Lightning's MLFlowLogger calls mlflow.set_tracking_uri, which
    # rewrites it), so later commands re-point it at the server first.
    os.environ["MLFLOW_TRACKING_URI"] = (folder / "server" / "url").read_text()
    return [*TINY, SERVED_ALPHA, f"output_root={folder / 'outputs'}", f"tracking.store_dir={folder / 'unused-mlruns'}",
            f"data.root={folder / 'tiny'}", *extra]


@contextmanager
def served_pipeline(folder: Path):
    make_tiny_dataset(folder / "tiny")
    with mlflow_server(folder / "server") as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", url)
        (folder / "server" / "url").write_text(url)
        first = cli("train", *overrides(folder))
        second = cli("train", *overrides(folder, "seed=1"))  # other weights than version 1
        # an audit sample of 4 of the 12 test images: some flagged images lie outside it (calibrate must ignore them)
        newest = cli("score", *overrides(folder, f"score.output_dir={folder / 'scored-newest'}", "review.audit_size=4"))
        promoted = cli("promote", "2", *overrides(folder))
        old = cli("score", *overrides(folder, "detector=1", f"score.output_dir={folder / 'scored-v1'}"))
        yield {"url": url, "folder": folder, "root": folder / "tiny", "train": [first, second], "score_newest": newest,
               "promoted": promoted, "score_v1": old, "overrides": lambda *extra: overrides(folder, *extra),
               "env": {**os.environ}}
