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
from pipeline.data.filters import gaussian_blur
from pipeline.detector import AnomalyDetector
from pipeline.models.linear import LinearLevel
from pipeline.scoring import maps as M
from pipeline.scoring import metrics as MET
from pipeline.scoring.fusion import standardize, transform
from pipeline.scoring.threshold import conformal_threshold
from pipeline.training.fit import head_synthesizers, validation_set

sys.path.insert(0, str(Path(__file__).parent))
from detection import load_split  # noqa: E402

COMBINATIONS = {"map+elbo": ["map", "elbo"], "map+linear": ["map", "linear"], "map+elbo+linear": ["map", "elbo", "linear"],
                "map+elbo+residual": ["map", "elbo", "residual"], "map+elbo+residual_z": ["map", "elbo", "residual_z"]}


@torch.no_grad()
def components(detector: AnomalyDetector, linear: LinearLevel, images: torch.Tensor, sigma: float = 2.0,
               batch: int = 64) -> dict[str, np.ndarray]:
    computer = detector.computer()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("map", "elbo", "residual", "residual_z", "msgms", "linear")}
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        scored = computer(x)
        x_hat = scored["reconstruction"]
        out["map"].append(torch.sigmoid(detector.head(x, x_hat))[:, 0].flatten(1).amax(1))
        out["elbo"].append(scored["neg_elbo_mean"])
        residual = gaussian_blur(M.residual_map(x, x_hat), sigma)
        out["residual"].append(residual.flatten(1).amax(1))
        mean, std = computer.map_statistics["residual"]
        out["residual_z"].append(M.standardize_map(residual, mean, std, 0.1).flatten(1).amax(1))
        out["msgms"].append(gaussian_blur(M.msgms_map(x, x_hat), sigma).flatten(1).amax(1))
        out["linear"].append(gaussian_blur(M.residual_map(x, linear(x)), sigma).flatten(1).amax(1))
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

    def z(name: str, values: np.ndarray) -> np.ndarray:
        kind = "logit" if name == "map" else "log"
        ref = transform(parts["sel"][name], kind)
        return standardize(values, {"transform": kind, "center": float(ref.mean()), "scale": float(ref.std()) + 1e-9})

    kinds, good = split["kinds"], split["kinds"] == "good"
    for combo, members in {**{n: [n] for n in parts["sel"]}, **COMBINATIONS}.items():
        fused = {k: np.max([z(m, v[m]) for m in members], axis=0) for k, v in (*parts.items(), ("val", validation))}
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
