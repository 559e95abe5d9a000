"""The latent-space report of a trained detector: `python -m pipeline report`, and the last step of
training (report.enabled). Encodes the held-out normal validation images and the test split, writes the
figures of report/latent.py into one folder and logs them to the detector's training run.

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
from pipeline.models.cvae import conditioned
from pipeline.report import latent as L
from pipeline.scoring.detector import AnomalyDetector

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_and_score(detector: AnomalyDetector, images: torch.Tensor, labels: torch.Tensor | None,
                     batch_size: int, with_scores: bool) -> dict[str, np.ndarray]:
    """mu (N, L), log_var (N, L) or None, and (with_scores) the detector's score (N,) of images (N, C, S, S)."""
    parts: dict[str, list[np.ndarray]] = {"mu": [], "log_var": [], "score": []}
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(detector.device)
        with conditioned(detector.net, None if labels is None else labels[start:start + batch_size]):
            mu, log_var = detector.net.encode(x)
            if with_scores:
                parts["score"].append(detector.score_batch(x)["score"].cpu().numpy())
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


def write_report(cfg: DictConfig, detector: AnomalyDetector, datamodule, root: Path, out_dir: Path,
                 run_id: str | None) -> dict:
    """Write every figure to out_dir, log them to `run_id` (when tracking is on); returns the summary."""
    r, bs = cfg.report, cfg.data.batch_size
    categories = detector.spec.categories
    roots = list(zip(categories, [p.root for p in datamodule.parts])) if categories else [(None, root)]
    val_labels = getattr(datamodule, "val_labels", None)  # (N_val,) conditional models only
    val = encode_and_score(detector, datamodule.val_images, val_labels, bs, with_scores=False)
    test_images, test_labels, test_groups = _test_split(detector, roots)
    test = encode_and_score(detector, test_images, test_labels if categories else None, bs, with_scores=True)
    flagged = test["score"] > detector.threshold_

    out_dir.mkdir(parents=True, exist_ok=True)
    projection = L.Projection(val["mu"])
    codes = np.concatenate([val["mu"], test["mu"]])
    val_names = [f"{categories[k]}/good (val)" for k in val_labels.tolist()] if categories else ["good (val)"] * len(val["mu"])
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
        with conditioned(detector.net, k if categories else None):
            grid = L.decode_codes(detector.net, cat_proj.grid(r.grid_size, r.grid_span))
            L.manifold_figure(grid, r.grid_size, out_dir / f"manifold{suffix}.png", cat_proj.labels(), r.grid_span,
                              f"decoder over a 2-D slice of the latent space{' - ' + category if category else ''}")
            z_a, z_b = _walk_ends(val["mu"][in_cat])
            frames = L.decode_codes(detector.net, L.walk_codes(z_a, z_b, r.walk_steps))
        L.latent_walk_gif(frames, out_dir / f"latent_walk{suffix}.gif", r.walk_frame_ms, r.gif_scale)

    if val["log_var"] is not None:
        kl = L.kl_per_dimension(val["mu"], val["log_var"], detector.net._code_shape)
        L.kl_figure(kl, r.collapsed_kl, out_dir / "kl_per_dim.png", detector.spec.latent_layout)
        summary.update({"kl_per_dim": [float(v) for v in kl], "active_dims": int((kl >= r.collapsed_kl).sum()),
                        "collapsed_dims": int((kl < r.collapsed_kl).sum())})
    (out_dir / "latent_summary.json").write_text(json.dumps(summary, indent=1))
    if run_id and cfg.tracking.enabled:
        from pipeline.tracking.report_run import log_latent_report

        log_latent_report(cfg, run_id, out_dir, summary)
    summary["output_dir"] = str(out_dir)
    summary["figures"] = sorted(p.name for p in out_dir.iterdir() if p.suffix in (".png", ".gif"))
    return {k: v for k, v in summary.items() if k != "kl_per_dim"}


def _walk_ends(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two good samples to walk between: the first one and the one whose code lies farthest from it."""
    far = int(np.argmax(((codes - codes[0]) ** 2).sum(axis=1)))
    return codes[0], codes[far]


def run_report(cfg: DictConfig) -> dict:
    """`python -m pipeline report`: the report of the detector `score.model` (default: the newest
    training run on data.root), logged into that detector's training run when known."""

    from pipeline.data.builtin import ensure_dataset
    from pipeline.tracking.registry import RUN_ID
    from pipeline.tracking.runs import resolve_detector
    from pipeline.training.train import build_datamodule

    root = ensure_dataset(cfg.data, cfg.seed)
    detector_dir, provenance = resolve_detector(cfg, str(cfg.score.model), str(root))
    detector = AnomalyDetector.load(detector_dir)
    datamodule = build_datamodule(cfg, root)  # same seed and val_fraction -> the same held-out split
    datamodule.setup("fit")
    run_id = provenance.get("model_run_id") or str(detector.spec.extra.get("run_id", ""))
    run_id = run_id if RUN_ID.fullmatch(run_id) else None
    summary = write_report(cfg, detector, datamodule, root, Path(cfg.report.output_dir).expanduser().resolve(), run_id)
    summary["logged_to_run"] = run_id if cfg.tracking.enabled else None
    return summary
