"""How much of the normal images' variance the linear level keeps, on DEV data, for a detector already trained.

The linear level's residual is the image minus its projection onto the principal subspace of the training images.
Few components leave the part's pose and shape variation in the residual of every good image; more components
take that variation up, and what is left of a good image shrinks faster than what is left of a thin scratch
(no training image holds one). Each `--variance` is fitted, its score (the largest sigma-2 smoothed squared
residual, as the product computes it) fused with the learned map's maximum and the ELBO as the product fuses
(standardized on the selection images, largest taken), and reported with its label-free validation AUROC
(selection images with anomalies of the held-out kind), test image AUROC, and detection at alpha 0.01 / 0.05 with
the conformal threshold of the calibration images, per defect kind. Nothing is retrained.

    python scripts/studies/linear_maps.py --detector <detector dir> --root /tmp/dev/builtin/bracket
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.detector import AnomalyDetector
from pipeline.detector.compute import linear_max
from pipeline.models.linear import LinearLevel

sys.path.insert(0, str(Path(__file__).parent))
from components import dev_detector, print_fused_rows, validation_draw  # noqa: E402


@torch.no_grad()
def scores(detector: AnomalyDetector, levels: dict[str, LinearLevel], images: torch.Tensor, batch: int = 64
           ) -> dict[str, np.ndarray]:
    """The detector's map_max and neg_elbo_mean, and linear_max with each of `levels` as its linear level."""
    computer, sigma = detector.computer(), detector.spec.detect["map_sigma"]
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        scored = computer(x)  # the networks once per batch; each level only adds its projection
        for name in ("map_max", "neg_elbo_mean"):
            out.setdefault(name, []).append(scored[name])
        for name, level in levels.items():
            out.setdefault(name, []).append(linear_max(x, level, sigma))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--group", default="builtin")
    parser.add_argument("--variance", type=float, nargs="+", default=[0.9, 0.95, 0.98, 0.99, 0.995])
    args = parser.parse_args(argv)
    detector, cfg, dm, split, seed = dev_detector(args.detector, args.root, args.group)
    levels = {f"linear@{v}": LinearLevel.fit(dm.train_images, v, 0) for v in args.variance}
    print(f"{len(dm.train_images)} training images; components: "
          + ", ".join(f"{k} {level.n_components}" for k, level in levels.items()))
    images, truth = validation_draw(cfg, dm, seed)
    parts = {name: scores(detector, levels, x) for name, x in
             (("sel", dm.selection_images), ("cal", dm.calibration_images), ("test", split["images"]), ("val", images))}
    rows = {"map+elbo": ["map_max", "neg_elbo_mean"], **{k: [k] for k in levels},
            **{f"map+elbo+{k}": ["map_max", "neg_elbo_mean", k] for k in levels}}
    print_fused_rows(parts, truth, split, rows, detector.spec.detect["map"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
