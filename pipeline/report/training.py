"""The figures of a training run, from the fitted detector and what its fit recorded: loss curves of both
networks, inputs beside their reconstructions and maps, examples of the synthetic anomalies the learned map
was trained and validated on, and the calibration scores with the threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from pipeline.report import figures
from pipeline.training.fit import head_synthesizers

SHOWN = 8  # images per row of the example figures


def synthetic_examples(synthesis_cfg, images: torch.Tensor, pool: torch.Tensor, path: Path, seed: int) -> Path:
    """One row per kind of synthetic anomaly (the validation kind marked): the altered image with the
    outline of its mask, so a reader sees what the learned map was taught."""
    train_synth, validation_synth = head_synthesizers(synthesis_cfg)
    rows = [(kind, train_synth) for kind in train_synth.kinds] + [(validation_synth.kinds[0], validation_synth)]
    generator = torch.Generator().manual_seed(seed)
    fig = Figure(figsize=(1.3 * SHOWN, 1.35 * len(rows)))
    for r, (kind, synthesizer) in enumerate(rows):
        for c in range(min(SHOWN, len(images))):
            altered, mask, _ = synthesizer.one(images[c], pool, generator, kind)
            ax = fig.add_subplot(len(rows), SHOWN, r * SHOWN + c + 1)
            picture = altered.permute(1, 2, 0).numpy()
            ax.imshow(picture[:, :, 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            if mask.any():
                ax.contour(mask.numpy(), levels=[0.5], colors="magenta", linewidths=0.6)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(kind + ("\n(validation)" if synthesizer is validation_synth else ""), fontsize=8)
    return figures.save(fig, path)


def reconstructions(detector, images: torch.Tensor, path: Path, labels: torch.Tensor | None = None) -> Path:
    """Rows: inputs, posterior-mean reconstructions, anomaly maps (normal selection images)."""
    out = detector.score(images[:SHOWN], None if labels is None else labels[:SHOWN],
                         keep=("map", "reconstruction"))
    maps = out["map"][:, None]  # (N, 1, S, S)
    maps = maps / max(float(np.quantile(maps, 0.999)), 1e-12)
    return figures.image_grid([images[:SHOWN].numpy(), out["reconstruction"], np.clip(maps, 0, 1)],
                              ["input", "reconstruction", "map"], path)


def training_figures(detector, datamodule, history: dict, synthesis_cfg, folder: Path, seed: int) -> list[Path]:
    labels = getattr(datamodule, "selection_labels", None)
    paths = [figures.loss_curves(history, folder / "loss_curves.png"),
             reconstructions(detector, datamodule.selection_images, folder / "reconstructions.png", labels),
             figures.score_histogram(detector.calibration_scores_, None, detector.threshold_,
                                     folder / "calibration_scores.png", detector.spec.score)]
    if detector.head is not None:
        paths.append(synthetic_examples(synthesis_cfg, datamodule.selection_images, datamodule.train_images,
                                        folder / "synthetic_anomalies.png", seed))
    return paths
