"""Candidate fused components on DEV data, for a detector already trained: the learned map's raw maximum, the ELBO,
the residual maxima of the detector's own reconstruction (plain, per-pixel standardized, MSGMS) and of the linear
level (the training images' principal subspace, as models/linear.py fits it). Each is standardized on the selection
images as the fused score is; every combination is reported with its label-free validation AUROC (selection images
with anomalies of the held-out kind), its test image AUROC, and its detection rate at alpha 0.01 and 0.05 per
defect kind (conformal threshold of the calibration images). Nothing is retrained.

    python scripts/studies/components.py --detector <detector dir> --root /tmp/dev/builtin/bracket [--group digits]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.config import compose
from pipeline.data.conditional import build_datamodule
from pipeline.detector import AnomalyDetector
from pipeline.detector import fitting
from pipeline.models.linear import LinearLevel
from pipeline.scoring import metrics as MET
from pipeline.scoring.fusion import fit_standardization, fuse
from pipeline.scoring.threshold import conformal_threshold
from pipeline.training.fit import head_synthesizers, validation_set

sys.path.insert(0, str(Path(__file__).parent))
from detection import load_split  # noqa: E402

COMBINATIONS = {"map+elbo": ["map_max", "neg_elbo_mean"], "map+linear": ["map_max", "linear_max"],
                "map+elbo+linear": ["map_max", "neg_elbo_mean", "linear_max"],
                "map+elbo+residual": ["map_max", "neg_elbo_mean", "residual"],
                "map+elbo+residual_z": ["map_max", "neg_elbo_mean", "residual_z"]}
MAPS = ("residual", "residual_z", "msgms")  # the reconstruction maps, as the product smooths and standardizes them


@torch.no_grad()
def components(detector: AnomalyDetector, linear: LinearLevel, images: torch.Tensor, batch: int = 64
               ) -> dict[str, np.ndarray]:
    """The detector's own batch computation with `linear` as its linear level: map_max (the raw learned map's
    maximum at score_sigma 0), neg_elbo_mean, linear_max, and the maximum of each reconstruction map."""
    computer = detector.computer()
    computer.linear = linear
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch):
        scored = computer(images[start:start + batch], extra=tuple(f"map.{kind}" for kind in MAPS))
        for name in ("map_max", "neg_elbo_mean", "linear_max"):
            out.setdefault(name, []).append(scored[name])
        for kind in MAPS:
            out.setdefault(kind, []).append(scored[f"map.{kind}"].flatten(1).amax(1))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--group", default="builtin")
    parser.add_argument("--variance", type=float, default=0.95)
    args = parser.parse_args(argv)
    detector = AnomalyDetector.load(args.detector)
    seed = int(detector.spec.extra.get("seed", 0))
    cfg = compose([f"data={args.group}", f"data.root={args.root}", f"seed={seed}"])
    dm = build_datamodule(cfg, Path(args.root))
    dm.setup("fit")
    split = load_split(Path(args.root), cfg.data.image_size, dm.read_options)
    linear = LinearLevel.fit(dm.train_images, args.variance, 0)
    print(f"linear level: {linear.n_components} components, {len(dm.train_images)} training images")
    parts = {name: components(detector, linear, images) for name, images in
             (("sel", dm.selection_images), ("cal", dm.calibration_images), ("test", split["images"]))}
    _, validation_synth = head_synthesizers(cfg.head.synthesis)
    images, masks = validation_set(validation_synth, dm.selection_images, dm.train_images, seed + 1)
    validation, truth = components(detector, linear, images), masks.flatten(1).amax(1).numpy().astype(int)

    transforms = fitting.component_transforms(list(parts["sel"]), detector.spec.detect["map"])
    params = fit_standardization(parts["sel"], transforms)
    kinds, good = split["kinds"], split["kinds"] == "good"
    for combo, members in {**{n: [n] for n in parts["sel"]}, **COMBINATIONS}.items():
        chosen = {m: params[m] for m in members}
        fused = {k: fuse(v, chosen) for k, v in (*parts.items(), ("val", validation))}
        row = f"{combo:20s} validation {MET.image_auroc(truth, fused['val']):.3f} test {MET.image_auroc(split['labels'], fused['test']):.3f}"
        for alpha in (0.01, 0.05):
            flagged = fused["test"] > conformal_threshold(fused["cal"], alpha)
            row += f" | @{alpha} detection {flagged[~good].mean():.3f} false alarms {flagged[good].mean():.3f}"
        flagged = fused["test"] > conformal_threshold(fused["cal"], 0.01)
        row += " | " + " ".join(f"{k} {flagged[kinds == k].mean():.2f}" for k in sorted(set(kinds)) if k != "good")
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
