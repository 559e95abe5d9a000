"""The sweep's comparison figure: test AUROC against latent size, one line per beta, one panel per score."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from pipeline.report.figures import save


def sweep_figure(frame: pd.DataFrame, auroc_columns: list[str], path: Path) -> Path:
    """frame: one row per grid point with columns beta, latent_dim and the AUROC columns."""
    columns = [c for c in auroc_columns if c in frame]
    fig = Figure(figsize=(4.2 * len(columns), 3.6), layout="constrained")
    for i, column in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), i + 1)
        for beta, group in frame.groupby("beta"):
            mean = group.groupby("latent_dim")[column].mean().sort_index()
            ax.plot(mean.index, mean.values, marker="o", label=f"beta={beta:g}")
        ax.set_xscale("log", base=2)
        sizes = sorted(frame["latent_dim"].unique())
        ax.set_xticks(sizes, [str(v) for v in sizes])
        ax.set_xlabel("latent size"), ax.set_ylabel("test image AUROC"), ax.set_title(column.removeprefix("auroc."))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return save(fig, path)
