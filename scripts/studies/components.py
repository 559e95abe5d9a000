"""Candidate fused components on DEV data, for a detector already trained: the learned map's raw maximum, the ELBO,
the residual maxima of the detector's own reconstruction (plain, per-pixel standardized, MSGMS) and of the linear
level (the training images' principal subspace, as models/linear.py fits it) and of the nearest-parts level (the
distance to the nearest training images, models/nearest.py; `--nearest-k`, `--nearest-side`). Each is standardized on the selection
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
from pipeline.models.nearest import NearestLevel
from pipeline.scoring import metrics as MET
from pipeline.scoring.fusion import fit_standardization, fuse, standardize
from pipeline.scoring.threshold import conformal_threshold
from pipeline.training.fit import head_synthesizers, validation_set

sys.path.insert(0, str(Path(__file__).parent))
from detection import load_split  # noqa: E402

COMBINATIONS = {"map+elbo": ["map_max", "neg_elbo_mean"], "map+linear": ["map_max", "linear_max"],
                "map+elbo+linear": ["map_max", "neg_elbo_mean", "linear_max"],
                "map+elbo+residual": ["map_max", "neg_elbo_mean", "residual"],
                "map+elbo+residual_z": ["map_max", "neg_elbo_mean", "residual_z"],
                "map+elbo+nearest": ["map_max", "neg_elbo_mean", "nearest_distance"],
                "map+elbo+linear+nearest": ["map_max", "neg_elbo_mean", "linear_max", "nearest_distance"]}
MAPS = ("residual", "residual_z", "msgms")  # the reconstruction maps, as the product smooths and standardizes them


@torch.no_grad()
def components(detector: AnomalyDetector, linear: LinearLevel, images: torch.Tensor, batch: int = 64,
               nearest: NearestLevel | None = None) -> dict[str, np.ndarray]:
    """The detector's own batch computation with `linear` as its linear level (and `nearest` as its nearest-parts
    level): map_max (the raw learned map's maximum at score_sigma 0), neg_elbo_mean, linear_max, nearest_distance, and
    the maximum of each reconstruction map."""
    computer = detector.computer()
    computer.linear, computer.nearest = linear, nearest
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch):
        scored = computer(images[start:start + batch], extra=tuple(f"map.{kind}" for kind in MAPS))
        for name in ("map_max", "neg_elbo_mean", "linear_max", "nearest_distance"):
            if name in scored:
                out.setdefault(name, []).append(scored[name])
        for kind in MAPS:
            out.setdefault(kind, []).append(scored[f"map.{kind}"].flatten(1).amax(1))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def dev_detector(detector_dir: str, root: str, group: str):
    """A trained dev detector, its composed config, its datamodule (the split its training used), the test split
    and its seed."""
    detector = AnomalyDetector.load(detector_dir)
    seed = int(detector.spec.extra.get("seed", 0))
    cfg = compose([f"data={group}", f"data.root={root}", f"seed={seed}"])
    dm = build_datamodule(cfg, Path(root))
    dm.setup("fit")
    return detector, cfg, dm, load_split(Path(root), cfg.data.image_size, dm.read_options), seed


def validation_draw(cfg, dm, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """The label-free validation as the product draws it: selection images, a share with anomalies of the
    held-out kind, and which are anomalous."""
    _, validation_synth = head_synthesizers(cfg.head.synthesis)
    images, masks = validation_set(validation_synth, dm.selection_images, dm.train_images, seed + 1)
    return images, masks.flatten(1).amax(1).numpy().astype(int)


def print_fused_rows(parts: dict[str, dict[str, np.ndarray]], truth: np.ndarray, split: dict,
                     rows: dict[str, list[str]], map_kind: str) -> None:
    """One line per row (a set of components fused as the product fuses: standardized on parts['sel'], largest
    taken): validation AUROC (parts['val'] against `truth`), test image AUROC, and detection / false alarms at the
    conformal threshold of parts['cal'] for alpha 0.01 and 0.05, per defect kind at 0.01."""
    params = fit_standardization(parts["sel"], fitting.component_transforms(list(parts["sel"]), map_kind))
    kinds, good = split["kinds"], split["kinds"] == "good"
    for combo, members in rows.items():
        total = combo.endswith(" (sum)")  # the z-scores added instead of the largest taken: evidence accumulates
        chosen = {m: params[m] for m in members}
        fused = {k: (sum(standardize(v[m], chosen[m]) for m in members) if total else fuse(v, chosen))
                 for k, v in parts.items()}
        row = f"{combo:24s} validation {MET.image_auroc(truth, fused['val']):.3f} test {MET.image_auroc(split['labels'], fused['test']):.3f}"
        for alpha in (0.01, 0.05):
            flagged = fused["test"] > conformal_threshold(fused["cal"], alpha)
            row += f" | @{alpha} detection {flagged[~good].mean():.3f} false alarms {flagged[good].mean():.3f}"
        flagged = fused["test"] > conformal_threshold(fused["cal"], 0.01)
        row += " | " + " ".join(f"{k} {flagged[kinds == k].mean():.2f}" for k in sorted(set(kinds)) if k != "good")
        print(row, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--group", default="builtin")
    parser.add_argument("--variance", type=float, default=None, help="default: detect.linear_variance")
    parser.add_argument("--nearest-k", type=int, default=None, help="default: detect.nearest_k")
    parser.add_argument("--nearest-side", type=int, default=None, help="default: detect.nearest_side")
    args = parser.parse_args(argv)
    detector, cfg, dm, split, seed = dev_detector(args.detector, args.root, args.group)
    linear = LinearLevel.fit(dm.train_images, args.variance or float(cfg.detect.linear_variance), 0)
    nearest = NearestLevel.fit(dm.train_images, args.nearest_k or int(cfg.detect.nearest_k),
                               args.nearest_side or int(cfg.detect.nearest_side))
    print(f"linear level: {linear.n_components} components, {len(dm.train_images)} training images; nearest-parts "
          f"level: k {nearest.k}, {nearest.grid} px")
    parts = {name: components(detector, linear, images, nearest=nearest) for name, images in
             (("sel", dm.selection_images), ("cal", dm.calibration_images), ("test", split["images"]))}
    images, truth = validation_draw(cfg, dm, seed)
    validation = components(detector, linear, images, nearest=nearest)

    rows = {**{n: [n] for n in parts["sel"]}, **COMBINATIONS,
            **{f"{name} (sum)": members for name, members in COMBINATIONS.items() if "residual" not in name}}
    print_fused_rows({**parts, "val": validation}, truth, split, rows, detector.spec.detect["map"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
