"""Detection-rate study on DEV data (built-in categories generated with seed 1, digits cut with seed 1; the bench
reports seed 0): train variants through the product's `run_train` and report, per defect kind, the detection rate
at the conformal threshold for alpha 0.01 and 0.05, beside image / pixel AUROC, every score's AUROC, the label-free
validation numbers and the restoration check.

    python scripts/studies/detection.py --out /tmp/study.json --tasks fabric,bracket --variants default \
        [--set name="override1 override2"]

A variant is a name in VARIANTS or given with --set as a space-separated list of overrides. Results accumulate in
--out (a measured task x variant is not trained again).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.bench.quality import method_metrics
from pipeline.commands.train import run_train
from pipeline.config import compose
from pipeline.data.conditional import build_datamodule
from pipeline.data.images import read_image, read_mask, to_model_tensor
from pipeline.data.layout import scan_test
from pipeline.detector import AnomalyDetector
from pipeline.detector import calibration as C
from pipeline.scoring import metrics as MET
from pipeline.scoring import scores as S

sys.path.insert(0, str(Path(__file__).parent))
from defaults import SMALL_SETS, TASKS, dev_root  # noqa: E402  (the same dev data as the defaults study)

VARIANTS: dict[str, list[str]] = {"default": []}
ALPHAS = (0.01, 0.05)


def load_split(root: Path, image_size: int, options) -> dict:
    samples = scan_test(root)
    arrays = [read_image(s.path, options) for s in samples]
    sizes = [tuple(a.shape[:2]) for a in arrays]
    has_masks = any(s.mask_path is not None for s in samples)
    masks = ([read_mask(s.mask_path, hw) if s.mask_path is not None else np.zeros(hw, bool)
              for s, hw in zip(samples, sizes)] if has_masks else None)
    return {"images": torch.stack([to_model_tensor(a, image_size) for a in arrays]),
            "labels": np.asarray([s.label for s in samples]), "kinds": np.asarray([s.defect_type for s in samples]),
            "masks": masks, "sizes": sizes}


def detection(detector: AnomalyDetector, scores: np.ndarray, split: dict) -> dict:
    """Per alpha: false-alarm rate on test/good, detection rate overall and per defect kind."""
    result = {}
    for alpha in ALPHAS:
        detector.set_decision(alpha=alpha)
        if not C.can_flag(detector.spec):
            result[str(alpha)] = None
            continue
        flagged = scores > detector.threshold_
        kinds = split["kinds"]
        result[str(alpha)] = {
            "false_alarm": float(flagged[kinds == "good"].mean()),
            "detection": float(flagged[kinds != "good"].mean()),
            "per_kind": {k: float(flagged[kinds == k].mean()) for k in sorted(set(kinds)) if k != "good"}}
    return result


def per_kind_auroc(scores: np.ndarray, split: dict) -> dict:
    kinds, good = split["kinds"], split["kinds"] == "good"
    return {k: MET.image_auroc(np.r_[np.zeros(good.sum()), np.ones((kinds == k).sum())],
                               np.r_[scores[good], scores[kinds == k]]) for k in sorted(set(kinds)) if k != "good"}


def measure(detector_dir: str, split: dict, cfg) -> dict:
    detector = AnomalyDetector.load(detector_dir)
    out = detector.score(split["images"], batch_size=int(cfg.data.batch_size), keep=("map", "reconstruction"))
    score = out[detector.spec.score]
    holder = type("Split", (), {"labels": split["labels"], "masks": split["masks"], "sizes": split["sizes"]})
    row = {**method_metrics(holder, score, out["map"], cfg.score.aupro_fpr_limit),
           "scores": {n: MET.image_auroc(split["labels"], out[n]) for n in S.SCORE_NAMES if n in out},
           "per_kind_auroc": per_kind_auroc(score, split), "detection": detection(detector, score, split),
           "validation": detector.spec.validation, "restoration": detector.spec.extra.get("restoration")}
    good = split["kinds"] == "good"
    x, rec = split["images"][good].numpy(), out["reconstruction"][good]
    row["detail_kept"] = float(np.abs(rec - x).mean() / np.abs(x - x.mean(axis=(1, 2, 3), keepdims=True)).mean())
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pipeline-dev-study")
    parser.add_argument("--variants", default="default")
    parser.add_argument("--tasks", default="fabric,bracket")
    parser.add_argument("--set", action="append", default=[], help="name=space-separated overrides")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the data is always the dev data)")
    args = parser.parse_args(argv)
    variants = dict(VARIANTS)
    for item in args.set:
        name, _, overrides = item.partition("=")
        variants[name] = overrides.split()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for task in args.tasks.split(","):
        group, name = TASKS[task]
        root = dev_root(args.work, group, name, SMALL_SETS.get(task, 1000))
        for variant in args.variants.split(","):
            key = variant if args.seed == 0 else f"{variant}@{args.seed}"
            if results.get(task, {}).get(key):
                continue
            cfg = compose([f"data={group}", f"data.root={root}", "tracking.enabled=false", "report.enabled=false",
                           f"seed={args.seed}", f"output_root={args.work / 'runs' / task / key}", *variants[variant]])
            split = load_split(root, cfg.data.image_size, build_datamodule(cfg, root).read_options)
            started = time.perf_counter()
            summary = run_train(cfg)
            row = measure(summary["detector_dir"], split, cfg)
            row.update(train_seconds=time.perf_counter() - started, vae_seconds=summary["vae_seconds"],
                       head_seconds=summary["head_seconds"], epochs=summary["epochs"],
                       detector_dir=summary["detector_dir"], overrides=variants[variant])
            results.setdefault(task, {})[key] = row
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=float))
            d1, d5 = (row["detection"].get(a) or {} for a in ("0.01", "0.05"))  # {}: cannot flag at that alpha
            nan = float("nan")
            print(f"| {task} | {key} | {row['image_auroc']:.3f} / {row['pixel_auroc'] or nan:.3f} | "
                  f"det@0.01 {d1.get('detection', nan):.3f} fa {d1.get('false_alarm', nan):.3f} | "
                  f"det@0.05 {d5.get('detection', nan):.3f} fa {d5.get('false_alarm', nan):.3f} | {d1.get('per_kind')} | "
                  f"{ {k: round(v, 3) for k, v in row['scores'].items()} } | {row['train_seconds']:.0f}s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
