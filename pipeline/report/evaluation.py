"""The figures of an evaluated scoring run: score histogram with the threshold, ROC and PR curves, score
box plots per defect type."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.report import figures


def evaluation_figures(frame: pd.DataFrame, threshold: float, score_name: str, folder: Path) -> list[Path]:
    """Histogram with the threshold, ROC and PR curves, per-defect-type box plots."""
    labels, scores = frame["label"].to_numpy(), frame["score"].to_numpy()
    threshold = threshold if math.isfinite(threshold) else float("nan")
    paths = [figures.score_histogram(scores, labels, threshold, folder / "score_histogram.png", score_name)]
    if np.unique(labels).size > 1:
        paths.append(figures.roc_figure(labels, scores, folder / "roc.png"))
        paths.append(figures.pr_figure(labels, scores, folder / "pr.png"))
    paths.append(figures.box_by_group(frame, "defect_type", "score", threshold, folder / "scores_by_defect_type.png"))
    return paths
