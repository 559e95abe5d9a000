"""Figures as files. Uses matplotlib's object API (`Figure`), so no global backend or pyplot state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from sklearn.metrics import roc_curve

from pipeline.data.fs import atomic_write


def save(fig: Figure, path: Path) -> Path:
    """Written whole or not at all (data/fs.py), in the format of its suffix."""
    return atomic_write(path, lambda handle: fig.savefig(handle, format=path.suffix.lstrip("."), dpi=110,
                                                         bbox_inches="tight"))


STAGES = {"": ("VAE", "epoch"), "local": ("local level", "epoch"), "head": ("learned map", "validation")}


def curve_panels(history: dict[str, list[tuple[int, float]]]) -> dict[tuple[str, str], dict[str, list]]:
    """(stage, metric) -> {"train" or "val": [(epoch, value), ...]}: "val/loss" is the VAE's validation loss,
    "local/train_recon" the local level's training reconstruction, "head/anomalous_pixels" a training metric of the
    learned map. Stages in training order, metrics by name."""
    order = {stage: i for i, stage in enumerate(STAGES)}  # a stage of another name goes last
    panels: dict[tuple[str, str], dict[str, list]] = {}
    for name in sorted(history, key=lambda n: (order.get(_stage(n), len(order)), n)):
        stage, metric = _stage(name), name.split("/", 1)[-1]
        if stage:
            split, _, rest = metric.partition("_")
            split, metric = (split, rest) if split in ("train", "val") and rest else ("train", metric)
        else:
            split = name.split("/", 1)[0]
        if history[name]:
            panels.setdefault((stage, metric), {})[split] = history[name]
    return panels


def _stage(name: str) -> str:
    first = name.split("/", 1)[0]
    return "" if first in ("train", "val") else first


def loss_curves(history: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """Per-epoch curves, one row per training stage (the VAE, the local level, the learned map: their losses live on
    different scales), one panel per metric, training and validation in the same panel."""
    panels = curve_panels(history)
    stages = list(dict.fromkeys(stage for stage, _ in panels)) or [""]
    columns = max([sum(1 for s, _ in panels if s == stage) for stage in stages] + [1])
    fig = Figure(figsize=(4 * columns, 3.2 * len(stages)), layout="constrained")
    for row, stage in enumerate(stages):
        title, unit = STAGES.get(stage, (stage, "epoch"))
        for column, (key, series) in enumerate((k, v) for k, v in panels.items() if k[0] == stage):
            ax = fig.add_subplot(len(stages), columns, row * columns + column + 1)
            for split, points in series.items():
                steps, values = zip(*points)
                ax.plot(steps, values, label=split, marker=".")
            ax.set_title(f"{title}: {key[1]}")
            ax.set_xlabel(unit)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(loc="upper right")  # a fixed place: "best" is searched over every point and can warn (slow)
    return save(fig, path)


def image_grid(rows: list[np.ndarray], row_titles: list[str], path: Path) -> Path:
    """rows: arrays (N, C, H, W) in [0, 1], one row of N images each (e.g. inputs, reconstructions)."""
    n = rows[0].shape[0]
    fig = Figure(figsize=(1.2 * n, 1.3 * len(rows)))
    for r, (images, title) in enumerate(zip(rows, row_titles)):
        for c in range(n):
            ax = fig.add_subplot(len(rows), n, r * n + c + 1)
            image = images[c].transpose(1, 2, 0)
            ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title)
    return save(fig, path)


def score_histogram(scores: np.ndarray, labels: np.ndarray | None, threshold: float, path: Path,
                    score_name: str = "score") -> Path:
    """Histogram of normal vs anomalous scores with the threshold as a vertical line."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(scores, bins=40)
    if labels is None:
        ax.hist(scores, bins=bins, alpha=0.7, label="all")
    else:
        ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="normal", color="tab:blue")
        ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="defect", color="tab:red")
    if np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel(score_name), ax.set_ylabel("images"), ax.legend(loc="upper right")
    return save(fig, path)


def roc_figure(labels: np.ndarray, scores: np.ndarray, path: Path, title: str = "image ROC") -> Path:
    fpr, tpr, _ = roc_curve(labels, scores)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":")
    ax.set_xlabel("false-positive rate"), ax.set_ylabel("true-positive rate"), ax.set_title(title)
    return save(fig, path)


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, vmax: float, opacity: float = 0.45) -> Image.Image:
    """image (H, W, C) uint8, map (H, W) -> RGB PIL image: the map as a 'jet' heat map over the input."""
    heat = colormaps["jet"](np.clip(anomaly_map / max(vmax, 1e-12), 0.0, 1.0))[:, :, :3]  # (H, W, 3)
    base = image.astype(np.float32) / 255.0
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base
    blended = (1 - opacity) * base + opacity * heat
    return Image.fromarray((blended * 255 + 0.5).astype(np.uint8))


def pr_figure(labels: np.ndarray, scores: np.ndarray, path: Path, title: str = "image precision-recall") -> Path:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, scores)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.plot(recall, precision)
    ax.axhline(float(np.mean(labels)), color="gray", linestyle=":", label="chance")
    ax.set_xlabel("recall"), ax.set_ylabel("precision"), ax.set_title(title), ax.legend(loc="lower left")
    return save(fig, path)


def box_by_group(frame, group: str, value: str, threshold: float, path: Path) -> Path:
    """Box plot of `value` per `group` (e.g. score per defect type) with the threshold line."""
    names = sorted(frame[group].unique(), key=lambda g: (g != "good", g))
    fig = Figure(figsize=(1.1 * len(names) + 2, 3.5))
    ax = fig.add_subplot()
    ax.boxplot([frame.loc[frame[group] == n, value].to_numpy() for n in names], tick_labels=names)
    if np.isfinite(threshold):
        ax.axhline(threshold, color="black", linestyle="--", label="threshold")
        ax.legend(loc="upper right")
    ax.set_ylabel(value)
    ax.tick_params(axis="x", rotation=30)
    return save(fig, path)
