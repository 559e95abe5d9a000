"""The latent-space report of a trained detector (`python -m pipeline report`, and the last step of
training when report.enabled): encodes the normal selection images and the test split and writes the
figures of report/latent.py into one folder. The commands log the folder to the training run.

Figures: latent_map.png (latent means in 2-D, colored by good vs defect type, flagged ones ringed),
manifold.png (decoder outputs over a 2-D slice), latent_walk.gif (between two good validation images),
kl_per_dim.png (VAE only: active vs collapsed dimensions); latent_summary.json holds the numbers.
A conditional model gets manifold_<category>.png and latent_walk_<category>.gif per category.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.data.datasets import load_images
from pipeline.data.layout import scan_test
from pipeline.detector import AnomalyDetector
from pipeline.detector import calibration as C
from pipeline.models.cvae import conditioned
from pipeline.report import latent as L

log = logging.getLogger(__name__)


@torch.no_grad()
def encode(detector: AnomalyDetector, images: torch.Tensor, labels: torch.Tensor | None,
           batch_size: int) -> dict[str, np.ndarray | None]:
    """mu (N, L) and log_var (N, L) or None of images (N, C, S, S)."""
    parts: dict[str, list[np.ndarray]] = {"mu": [], "log_var": []}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(detector.device)
        with conditioned(detector.vae, None if labels is None else labels[start:start + batch_size]):
            mu, log_var = detector.vae.encode(x)
        parts["mu"].append(mu.cpu().numpy())
        if log_var is not None:
            parts["log_var"].append(log_var.cpu().numpy())
    return {k: np.concatenate(v) if v else None for k, v in parts.items()}


def _test_split(detector: AnomalyDetector, roots: list[tuple[str | None, Path]]):
    """Test images (N, C, S, S), their category labels (N,), and group names ('good', defect types)."""
    images, labels, groups = [], [], []
    for k, (category, root) in enumerate(roots):
        tensor, kept, _ = load_images(scan_test(root), detector.spec.image_size, detector.spec.read_options)
        images.append(tensor)
        labels.append(torch.full((len(kept),), k))
        groups += [f"{category}/{s.defect_type}" if category else s.defect_type for s in kept]
    return torch.cat(images), torch.cat(labels), groups


def write_report(cfg: DictConfig, detector: AnomalyDetector, datamodule, root: Path, out_dir: Path) -> dict:
    """Write every figure and latent_summary.json to out_dir; returns the summary."""
    r, bs = cfg.report, cfg.data.batch_size
    categories = detector.spec.categories
    roots = list(zip(categories, [p.root for p in datamodule.parts])) if categories else [(None, root)]
    val_labels = getattr(datamodule, "selection_labels", None)  # (N_selection,) conditional models only
    val = encode(detector, datamodule.selection_images, val_labels, bs)
    test_images, test_labels, test_groups = _test_split(detector, roots)
    test_labels = test_labels if categories else None
    test = encode(detector, test_images, test_labels, bs)
    scores = detector.decision_function(test_images, test_labels)
    flagged = C.decide(detector.spec, scores, None if test_labels is None else test_labels.numpy())[0].astype(bool)

    out_dir.mkdir(parents=True, exist_ok=True)
    projection = L.Projection(val["mu"])
    codes = np.concatenate([val["mu"], test["mu"]])
    val_names = ([f"{categories[k]}/good (selection)" for k in val_labels.tolist()] if categories
                 else ["good (selection)"] * len(val["mu"]))
    groups = val_names + [g.replace("good", "good (test)") if g.endswith("good") else g for g in test_groups]
    marks = np.concatenate([np.zeros(len(val["mu"]), bool), flagged])
    keep = np.random.default_rng(cfg.seed).permutation(len(codes))[:r.max_points]
    L.latent_map_figure(projection(codes[keep]), [groups[i] for i in keep], marks[keep], out_dir / "latent_map.png",
                        projection.labels(), f"latent means ({projection.kind}), {int(flagged.sum())} test images flagged")

    summary = {"projection": projection.kind, "explained_variance_ratio": projection.explained,
               "n_val": len(val["mu"]), "n_test": len(test["mu"]), "n_flagged": int(flagged.sum())}
    for k, category in enumerate(categories or [None]):
        suffix = f"_{category}" if category else ""
        in_cat = np.ones(len(val["mu"]), bool) if val_labels is None else (val_labels.numpy() == k)
        cat_proj = L.Projection(val["mu"][in_cat]) if categories else projection
        with conditioned(detector.vae, k if categories else None):
            grid = L.decode_codes(detector.vae, cat_proj.grid(r.grid_size, r.grid_span))
            L.manifold_figure(grid, r.grid_size, out_dir / f"manifold{suffix}.png", cat_proj.labels(), r.grid_span,
                              f"decoder over a 2-D slice of the latent space{' - ' + category if category else ''}")
            z_a, z_b = _walk_ends(val["mu"][in_cat])
            frames = L.decode_codes(detector.vae, L.walk_codes(z_a, z_b, r.walk_steps))
        L.latent_walk_gif(frames, out_dir / f"latent_walk{suffix}.gif", r.walk_frame_ms, r.gif_scale)

    if val["log_var"] is not None:
        kl = L.kl_per_dimension(val["mu"], val["log_var"], detector.vae._code_shape)
        L.kl_figure(kl, r.collapsed_kl, out_dir / "kl_per_dim.png", detector.spec.model["latent_layout"])
        summary.update({"kl_per_dim": [float(v) for v in kl], "active_dims": int((kl >= r.collapsed_kl).sum()),
                        "collapsed_dims": int((kl < r.collapsed_kl).sum())})
    (out_dir / "latent_summary.json").write_text(json.dumps(summary, indent=1))
    summary["output_dir"] = str(out_dir)
    summary["figures"] = sorted(p.name for p in out_dir.iterdir() if p.suffix in (".png", ".gif"))
    return {k: v for k, v in summary.items() if k != "kl_per_dim"}


def _walk_ends(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two good samples to walk between: the first one and the one whose code lies farthest from it."""
    far = int(np.argmax(((codes - codes[0]) ** 2).sum(axis=1)))
    return codes[0], codes[far]
