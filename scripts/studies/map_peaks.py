"""Where the learned map's peak lies on good and defective DEV images: its distance to the border, inside the defect's
mask or not, the image AUROC of the map's maximum with a border left out, and of the peak against the image's own
map. DEV data only (docs/defaults.md, *Stochastic textures*):

    python scripts/studies/map_peaks.py <dev data root> <detector folder>

e.g. the root and detector of `scripts/studies/detection.py --tasks granite --work <folder>`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from detection import load_split  # noqa: E402

from pipeline.config import compose  # noqa: E402
from pipeline.data.conditional import build_datamodule  # noqa: E402
from pipeline.detector import AnomalyDetector  # noqa: E402
from pipeline.scoring import metrics as MET  # noqa: E402


def main():
    root, det_dir = Path(sys.argv[1]), sys.argv[2]
    det = AnomalyDetector.load(det_dir)
    cfg = compose(["data=builtin", f"data.root={root}", "tracking.enabled=false"])
    dm = build_datamodule(cfg, root)
    split = load_split(root, det.spec.image_size, dm.read_options)
    out = det.score(split["images"], keep=("map",))
    maps = out["map"].reshape(len(split["images"]), *out["map"].shape[-2:])
    n, s, _ = maps.shape
    labels, kinds = split["labels"], split["kinds"]
    good = kinds == "good"
    flat = maps.reshape(n, -1).argmax(1)
    r, c = flat // s, flat % s
    border = np.minimum.reduce([r, c, s - 1 - r, s - 1 - c])
    masks = None
    if split["masks"] is not None:
        masks = np.stack([F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(s, s),
                                        mode="area")[0, 0].numpy() > 0 for m in split["masks"]])
    print(f"map {s}x{s}; product score {det.spec.score}: AUROC {MET.image_auroc(labels, out[det.spec.score]):.3f}; "
          f"map_max {MET.image_auroc(labels, out['map_max']):.3f}")
    edges = [0, 1, 2, 3, 4, 8, 16, s]
    for name, sel in (("good", good), ("defect", ~good)):
        hist = [int(((border >= lo) & (border < hi) & sel).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
        print(f"{name:7s} peak distance to border {list(zip(edges[:-1], hist))}")
    if masks is not None:
        inside = np.array([masks[i, r[i], c[i]] for i in range(n)])
        for k in sorted(set(kinds)):
            if k == "good":
                continue
            sel = kinds == k
            print(f"  {k:10s} peak inside the mask {inside[sel].mean():.2f}; peak value in mask vs outside: "
                  f"{np.mean([maps[i][masks[i]].max() if masks[i].any() else np.nan for i in np.where(sel)[0]]):.3f} / "
                  f"{np.mean([maps[i][~masks[i]].max() for i in np.where(sel)[0]]):.3f}")
    print(f"good images' peak value: median {np.median(maps[good].reshape(good.sum(), -1).max(1)):.3f}")
    for m in (0, 1, 2, 4, 8):
        inner = maps[:, m:s - m, m:s - m].reshape(n, -1).max(1) if m else maps.reshape(n, -1).max(1)
        per_kind = {k: round(MET.image_auroc(np.r_[np.zeros(good.sum()), np.ones((kinds == k).sum())],
                                             np.r_[inner[good], inner[kinds == k]]), 3)
                    for k in sorted(set(kinds)) if k != "good"}
        print(f"margin {m}: map max AUROC {MET.image_auroc(labels, inner):.3f} {per_kind}")

    # Self-referenced aggregates: the peak against the image's own map (a stochastic texture's map is raised all over
    # on some good parts).
    logit = np.log(np.clip(maps, 1e-6, 1 - 1e-6) / (1 - np.clip(maps, 1e-6, 1 - 1e-6))).reshape(n, -1)
    prob = maps.reshape(n, -1)
    variants = {
        "max": prob.max(1), "logit max": logit.max(1),
        "max - median": prob.max(1) - np.median(prob, 1), "max - q90": prob.max(1) - np.quantile(prob, 0.9, 1),
        "logit max - logit median": logit.max(1) - np.median(logit, 1),
        "logit max - logit q90": logit.max(1) - np.quantile(logit, 0.9, 1),
        "logit (max - mean) / std": (logit.max(1) - logit.mean(1)) / (logit.std(1) + 1e-6),
        "max / mean": prob.max(1) / (prob.mean(1) + 1e-6),
    }
    for name, v in variants.items():
        per_kind = {k: round(MET.image_auroc(np.r_[np.zeros(good.sum()), np.ones((kinds == k).sum())],
                                             np.r_[v[good], v[kinds == k]]), 3)
                    for k in sorted(set(kinds)) if k != "good"}
        print(f"{name:28s} AUROC {MET.image_auroc(labels, v):.3f} {per_kind}")


if __name__ == "__main__":
    main()
