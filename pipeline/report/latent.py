"""Latent-space figures: where good and defective parts sit, what the decoder draws across the space,
a walk between two good parts, and which latent dimensions carry information.

Pure functions over arrays and a network (no data loading, no MLflow); figures use matplotlib's
object API, the GIF is written with PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from sklearn.decomposition import PCA

from pipeline.data.fs import atomic_write
from pipeline.report.figures import save


def kl_per_dimension(mu: np.ndarray, log_var: np.ndarray, code_shape: tuple[int, ...]) -> np.ndarray:
    """Mean KL(q(z_j|x) || N(0, 1)) over images for each latent channel: (N, L) x2 -> (latent_dim,).

    For the spatial layout (code_shape (D, h, w)) a channel's KL is summed over the bottleneck cells."""
    kl = 0.5 * (np.exp(log_var) + mu ** 2 - 1.0 - log_var)  # (N, L)
    kl = kl.reshape(len(kl), code_shape[0], -1).sum(axis=2)  # (N, D)
    return kl.mean(axis=0)


class Projection:
    """Maps codes (N, L) to a 2-D plane: the codes themselves when L == 2, else the first two principal
    components fitted on normal codes. `center`, `axes` (2, L) and `scales` (2,) describe the plane in
    code space, for the manifold grid."""

    def __init__(self, normal_codes: np.ndarray):
        latent = normal_codes.shape[1]
        if latent == 2:
            self.kind, self.center, self.axes, self.scales = "latent", np.zeros(2), np.eye(2), np.ones(2)
            self.explained = None
        else:
            pca = PCA(n_components=2).fit(normal_codes)
            self.kind, self.center, self.axes = "pca", pca.mean_, pca.components_
            self.scales = np.sqrt(np.maximum(pca.explained_variance_, 1e-12))
            self.explained = [float(v) for v in pca.explained_variance_ratio_]

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        return (codes - self.center) @ self.axes.T  # (N, 2)

    def labels(self) -> tuple[str, str]:
        if self.kind == "latent":
            return "z1", "z2"
        return tuple(f"PC{i + 1} ({100 * r:.0f}% of normal variance)" for i, r in enumerate(self.explained))

    def grid(self, n: int, span: float) -> np.ndarray:
        """Codes (n*n, L) on an n x n grid over +-span scales around the center; row 0 = top (high y)."""
        steps = np.linspace(-span, span, n)
        ys, xs = np.meshgrid(steps[::-1], steps, indexing="ij")  # (n, n) each
        offsets = xs.reshape(-1, 1) * self.scales[0] * self.axes[0] + ys.reshape(-1, 1) * self.scales[1] * self.axes[1]
        return self.center + offsets


def latent_map_figure(points: np.ndarray, groups: list[str], flagged: np.ndarray, path: Path,
                      axis_labels: tuple[str, str] = ("z1", "z2"), title: str = "") -> Path:
    """Scatter of 2-D points (N, 2) colored by group (good / defect type), flagged ones ringed in black."""
    fig = Figure(figsize=(6.5, 5))
    ax = fig.add_subplot()
    names = sorted(set(groups), key=lambda g: (not g.startswith("good"), g))
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    groups_arr = np.asarray(groups)
    for i, name in enumerate(names):
        sel = groups_arr == name
        ax.scatter(points[sel, 0], points[sel, 1], s=12, alpha=0.75, color=palette(i % palette.N), label=name,
                   marker="o" if name.startswith("good") else "^")
    if flagged.any():
        ax.scatter(points[flagged, 0], points[flagged, 1], s=40, facecolors="none", edgecolors="black",
                   linewidths=0.8, label="flagged")
    ax.set_xlabel(axis_labels[0]), ax.set_ylabel(axis_labels[1]), ax.set_title(title)
    # Beside the points, not over them: placing a legend "best" among thousands of points is slow enough for
    # matplotlib to warn into a scheduled job's log.
    ax.legend(fontsize=7, markerscale=1.2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)


def _to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    array = images.transpose(0, 2, 3, 1)
    array = np.repeat(array, 3, axis=3) if array.shape[3] == 1 else array
    return (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)


@torch.no_grad()
def decode_codes(net, codes: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Decoder means sigmoid(decode(z)) for codes (N, L): (N, C, H, W) in [0, 1]."""
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(codes), batch_size):
        z = torch.as_tensor(codes[start:start + batch_size], dtype=torch.float32, device=device)
        out.append(torch.sigmoid(net.decode(z)).cpu().numpy())
    return np.concatenate(out)


def manifold_figure(images: np.ndarray, n: int, path: Path, axis_labels: tuple[str, str], span: float,
                    title: str = "") -> Path:
    """images (n*n, C, H, W) from Projection.grid, tiled into one picture with the axes annotated."""
    rgb = _to_rgb(images)  # (n*n, H, W, 3)
    h, w = rgb.shape[1:3]
    tiled = rgb.reshape(n, n, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(n * h, n * w, 3)
    fig = Figure(figsize=(7, 7))
    ax = fig.add_subplot()
    ax.imshow(tiled, extent=(-span, span, -span, span))
    ax.set_xlabel(f"{axis_labels[0]}, in standard deviations"), ax.set_ylabel(f"{axis_labels[1]}, in standard deviations")
    ax.set_title(title)
    return save(fig, path)


def latent_walk_gif(images: np.ndarray, path: Path, frame_ms: int, scale: int) -> Path:
    """Frames (T, C, H, W) in [0, 1] -> an animated GIF that plays forth and back, looping forever."""
    frames = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
              for f in _to_rgb(images)]
    frames = frames + frames[-2:0:-1]  # back again, so the loop has no jump
    return atomic_write(path, lambda handle: frames[0].save(handle, format="GIF", save_all=True,
                                                            append_images=frames[1:], duration=frame_ms, loop=0))


def walk_codes(z_a: np.ndarray, z_b: np.ndarray, steps: int) -> np.ndarray:
    """steps codes (steps, L) on the straight line from z_a to z_b, both ends included."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return (1 - t) * z_a[None] + t * z_b[None]


def kl_figure(kl: np.ndarray, collapsed_below: float, path: Path, layout: str = "dense") -> Path:
    """Bar chart of the mean KL per latent dimension (sorted, largest first) with the collapse line."""
    order = np.argsort(kl)[::-1]
    active = int((kl >= collapsed_below).sum())
    fig = Figure(figsize=(max(5.0, 0.12 * len(kl) + 2), 3.5))
    ax = fig.add_subplot()
    ax.bar(np.arange(len(kl)), kl[order], color=["tab:blue" if v >= collapsed_below else "tab:gray" for v in kl[order]])
    ax.axhline(collapsed_below, color="black", linestyle="--", linewidth=0.8, label=f"collapsed below {collapsed_below:g} nats")
    ax.set_yscale("symlog", linthresh=max(collapsed_below, 1e-6))
    unit = "channel (summed over cells)" if layout == "spatial" else "dimension"
    ax.set_xlabel(f"latent {unit}, sorted by KL"), ax.set_ylabel("mean KL on normal images (nats)")
    ax.set_title(f"{active} of {len(kl)} active")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="upper right")
    return save(fig, path)
