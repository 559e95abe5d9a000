"""Which image score from the learned map, on DEV data: for a trained detector, the raw map of the selection,
calibration and test images is aggregated at several smoothing scales; each aggregate is standardized on the
selection images (as the fused score is), thresholded at the conformal threshold of the calibration images, and
reported as image AUROC and detection rate at alpha 0.01 per defect kind.

    python scripts/studies/image_score.py --detector <detector dir> --root /tmp/dev/builtin/fabric
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.config import compose
from pipeline.data.conditional import build_datamodule
from pipeline.data.filters import gaussian_blur
from pipeline.detector import AnomalyDetector
from pipeline.scoring import metrics as MET
from pipeline.scoring.fusion import standardize, transform
from pipeline.scoring.threshold import conformal_threshold
from pipeline.training.fit import head_synthesizers, validation_set

sys.path.insert(0, str(Path(__file__).parent))
from detection import load_split  # noqa: E402

SIGMAS = (0.0, 1.0, 2.0, 4.0)


@torch.no_grad()
def raw_maps(detector: AnomalyDetector, images: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, np.ndarray]:
    """(unsmoothed map probabilities (N, S, S), neg_elbo_mean (N,))."""
    computer, maps, elbo = detector.computer(), [], []
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        out = computer(x)
        maps.append(torch.sigmoid(detector.head(x, out["reconstruction"]))[:, 0])
        elbo.append(out["neg_elbo_mean"].numpy())
    return torch.cat(maps), np.concatenate(elbo)


def aggregates(maps: torch.Tensor) -> dict[str, np.ndarray]:
    out = {}
    for sigma in SIGMAS:
        smoothed = gaussian_blur(maps, sigma) if sigma > 0 else maps
        flat = smoothed.flatten(1)
        out[f"max@{sigma:g}"] = flat.amax(dim=1).numpy()
        out[f"top1%@{sigma:g}"] = flat.topk(max(1, flat.shape[1] // 100), dim=1).values.mean(dim=1).numpy()
    return out


def evaluate(sel: dict, cal: dict, test: dict, split: dict, alpha: float = 0.01) -> dict:
    kinds, good = split["kinds"], split["kinds"] == "good"
    rows = {}
    for name, kind_of in [*[(n, "logit") for n in sel if n != "elbo"], ("elbo", "log")]:
        params = {"transform": kind_of, "center": float(transform(sel[name], kind_of).mean()),
                  "scale": float(transform(sel[name], kind_of).std()) + 1e-9}
        rows[name] = {k: standardize(v[name], params) for k, v in (("cal", cal), ("test", test))}
    combos = {n: [n] for n in rows}
    combos["multi-max"] = [f"max@{s:g}" for s in SIGMAS]
    combos["multi-max+elbo"] = [*combos["multi-max"], "elbo"]
    combos["max@2+elbo"] = ["max@2", "elbo"]
    combos["max@0+elbo"] = ["max@0", "elbo"]
    combos["max@1+max@4"] = ["max@1", "max@4"]
    result = {}
    for combo, members in combos.items():
        cal_score = np.max([rows[m]["cal"] for m in members], axis=0)
        test_score = np.max([rows[m]["test"] for m in members], axis=0)
        flagged = test_score > conformal_threshold(cal_score, alpha)
        result[combo] = {"auroc": MET.image_auroc(split["labels"], test_score), "fa": float(flagged[good].mean()),
                         "det": float(flagged[~good].mean()),
                         **{k: float(flagged[kinds == k].mean()) for k in sorted(set(kinds)) if k != "good"}}
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--detector", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--group", default="builtin")
    args = parser.parse_args(argv)
    detector = AnomalyDetector.load(args.detector)
    cfg = compose([f"data={args.group}", f"data.root={args.root}", f"seed={detector.spec.extra.get('seed', 0)}"])
    dm = build_datamodule(cfg, Path(args.root))
    dm.setup("fit")
    split = load_split(Path(args.root), cfg.data.image_size, dm.read_options)
    parts = {}
    for name, images in (("sel", dm.selection_images), ("cal", dm.calibration_images), ("test", split["images"])):
        maps, elbo = raw_maps(detector, images)
        parts[name] = {**aggregates(maps), "elbo": elbo}
    _, validation_synth = head_synthesizers(cfg.head.synthesis)
    images, masks = validation_set(validation_synth, dm.selection_images, dm.train_images,
                                   int(detector.spec.extra.get("seed", 0)) + 1)
    maps, elbo = raw_maps(detector, images)
    truth = masks.flatten(1).amax(dim=1).numpy().astype(int)
    for name, values in {**aggregates(maps), "elbo": elbo}.items():
        print(f"validation {name:12s} auroc {MET.image_auroc(truth, values):.3f}")
    result = evaluate(parts["sel"], parts["cal"], parts["test"], split, args.alpha)
    for name, row in result.items():
        print(f"{name:16s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
