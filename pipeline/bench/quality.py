"""Detection quality of the product and its comparison rows on the same splits, with the same metrics.

Every product row is trained through the real entry point `run_train` (tracking off, outputs in the bench's work
folder) and its detector scores the test split in memory. The rows (conf/bench `methods`, override lists on top of
the composed defaults): the new default, the previous default (the reconstruction-map detector the product shipped
before the learned map), and the plain autoencoder. Baselines (PCA with two image scores, IsolationForest) fit on
exactly the product's training images. Maps are compared at the images' original resolution.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.bench import baselines as B
from pipeline.commands.train import run_train
from pipeline.data.builtin import ensure_dataset
from pipeline.data.conditional import build_datamodule
from pipeline.data.images import read_image, read_mask, to_model_tensor
from pipeline.data.layout import scan_test
from pipeline.detector import AnomalyDetector
from pipeline.detector import calibration as C
from pipeline.scoring import metrics as MET
from pipeline.scoring import scores as S
from pipeline.scoring.aupro import aupro
from pipeline.scoring.maps import resize_map
from pipeline.scoring.threshold import binomial_interval

log = logging.getLogger(__name__)


@dataclass
class TestSplit:
    images: torch.Tensor            # (N, C, S, S) model input
    labels: np.ndarray              # (N,) 1 = anomaly
    masks: list[np.ndarray] | None  # (H, W) bool per image at original resolution; None without masks
    sizes: list[tuple[int, int]]    # original (H, W) per image
    kinds: np.ndarray | None = None  # (N,) defect type per image ('good' for the normal ones)


def load_test_split(root: Path, image_size: int, options) -> TestSplit:
    """Every test image with its label and (when the dataset has masks) its mask."""
    samples = scan_test(root)
    arrays = [read_image(s.path, options) for s in samples]  # (H, W, C) uint8; generated data has no bad files
    sizes = [tuple(a.shape[:2]) for a in arrays]
    has_masks = any(s.mask_path is not None for s in samples)
    masks = ([read_mask(s.mask_path, hw) if s.mask_path is not None else np.zeros(hw, bool)
              for s, hw in zip(samples, sizes)] if has_masks else None)
    return TestSplit(torch.stack([to_model_tensor(a, image_size) for a in arrays]),
                     np.asarray([s.label for s in samples]), masks, sizes, np.asarray([s.defect_type for s in samples]))


def method_metrics(split: TestSplit, scores: np.ndarray, maps: np.ndarray | None, fpr_limit: float) -> dict:
    """image AUROC, and pixel AUROC / AUPRO where the dataset has masks and the method has maps."""
    result = {"image_auroc": MET.image_auroc(split.labels, np.asarray(scores)), "pixel_auroc": None, "aupro": None}
    if split.masks is not None and maps is not None:
        full = [resize_map(torch.as_tensor(m, dtype=torch.float32), hw).numpy() for m, hw in zip(maps, split.sizes)]
        result["pixel_auroc"] = MET.pixel_auroc(split.masks, full)
        result["aupro"] = aupro(split.masks, full, fpr_limit)
    return result


def false_alarms(detector: AnomalyDetector, scores: np.ndarray, labels: np.ndarray, alphas: list[float],
                 kinds: np.ndarray | None = None) -> dict:
    """Per alpha: flagged normal test images / normal test images at the detector's own conformal threshold for
    its decision score, with the Clopper-Pearson 95 % interval, and the recall (detection rate) on the defective
    test images, overall and per defect kind (`kinds`); None where the threshold cannot fire."""
    normal = labels == 0
    result = {}
    for alpha in alphas:
        detector.set_decision(alpha=alpha)
        if not C.can_flag(detector.spec):
            result[str(alpha)] = None
            continue
        flagged = scores > detector.threshold_
        k, n = int(flagged[normal].sum()), int(normal.sum())
        result[str(alpha)] = {"k": k, "n": n, "rate": k / n, "interval": binomial_interval(k, n),
                              "recall": float(flagged[~normal].mean()) if (~normal).any() else None,
                              "per_kind": {str(t): float(flagged[kinds == t].mean())
                                           for t in sorted(set(kinds[~normal]))} if kinds is not None else {}}
    return result


def newest_detector(folder: Path, pattern: str) -> Path | None:
    """The folder of the newest detector.json under `folder` matching `pattern`: a work folder kept from earlier runs
    holds their detectors too, in folders named by run id, not by time."""
    found = list(folder.glob(pattern))
    return max(found, key=lambda path: path.stat().st_mtime).parent if found else None


def trained_detector(cfg: DictConfig) -> Path | None:
    """The detector an earlier bench run trained for this row in the same work folder, if it got that far."""
    return newest_detector(Path(str(cfg.output_root), "train"), "*/*/detector/detector.json")


def train_or_reuse(cfg: DictConfig, reuse: bool) -> dict:
    """`run_train`'s summary, or with `reuse` that of the detector an earlier bench run trained for this row (no
    epochs or training time known then)."""
    earlier = trained_detector(cfg) if reuse else None
    if earlier is None:
        return run_train(cfg)
    return {"detector_dir": str(earlier), "epochs": None, "train_seconds": None}


def product_row(cfg: DictConfig, split: TestSplit, alphas: list[float], extra_maps: tuple[str, ...] = (),
                reuse: bool = False, trained: dict | None = None) -> dict:
    """Train one product detector through `run_train` (or, with `reuse`, take the one an earlier run of the bench
    trained for this row; or `trained`, {detector_dir, train_seconds, trained_by}: the one another section of this
    run trained with this row's settings) and measure it on the test split."""
    started = time.perf_counter()
    summary = {"epochs": None, **trained} if trained else train_or_reuse(cfg, reuse)
    detector = AnomalyDetector.load(summary["detector_dir"])
    out = detector.score(split.images, batch_size=cfg.data.batch_size, extra=extra_maps, keep=("map", *extra_maps))
    score = out[detector.spec.score]
    row = {**method_metrics(split, score, out["map"], cfg.score.aupro_fpr_limit), "seed": int(cfg.seed),
           "score": detector.spec.score, "map": detector.spec.detect["map"], "reconstruction": detector.spec.reconstruction,
           "scores": {n: MET.image_auroc(split.labels, out[n]) for n in S.SCORE_NAMES if n in out},
           "validation": detector.spec.validation, "false_alarm": false_alarms(detector, score, split.labels, alphas, split.kinds),
           "n_calibration": detector.spec.extra["n_calibration"], "n_train": detector.spec.extra["n_train"],
           "n_members": int(detector.spec.extra.get("n_members", 1)),
           "epochs": summary["epochs"], "train_seconds": summary["train_seconds"],
           "seconds": time.perf_counter() - started, "detector_dir": summary["detector_dir"],
           **({"trained_by": summary["trained_by"]} if "trained_by" in summary else {})}
    for name in extra_maps:
        maps = out[name]
        row.setdefault("maps", {})[name] = method_metrics(split, maps.reshape(len(maps), -1).max(axis=1), maps,
                                                          cfg.score.aupro_fpr_limit)
    return row


def baseline_rows(cfg: DictConfig, split: TestSplit, bench: DictConfig) -> dict:
    """PCA (mean squared error and map maximum) and IsolationForest on the product's own training images."""
    datamodule = build_datamodule(cfg, Path(cfg.data.root))
    datamodule.setup("fit")
    train = datamodule.train_images.numpy()
    methods = {"pca": B.PCAReconstruction(bench.pca_variance, cfg.detect.map_sigma, cfg.seed),
               "pca_map_max": B.PCAReconstruction(bench.pca_variance, cfg.detect.map_sigma, cfg.seed, "map_max"),
               "iforest": B.PixelIsolationForest(bench.iforest_trees, cfg.seed)}
    rows = {}
    for name, method in methods.items():
        started = time.perf_counter()
        method.fit(train)
        test = split.images.numpy()
        maps = method.anomaly_maps(test) if method.anomaly_maps is not None else None
        rows[name] = {**method_metrics(split, method.score_samples(test), maps, cfg.score.aupro_fpr_limit),
                      "seconds": time.perf_counter() - started}
    rows["pca_better"] = max((rows["pca"], rows["pca_map_max"]), key=lambda r: r["image_auroc"] or 0.0)
    return rows


def evaluate_task(name: str, configs: dict[str, list[DictConfig]], bench: DictConfig, alphas: list[float],
                  extra_maps: tuple[str, ...], baselines: bool = True, trained: dict | None = None) -> dict:
    """Every method's rows (one per seed) and, with `baselines`, the baselines on one dataset (a family or a
    digits task); `trained`: a run's output_root -> the detector another section trained for it (product_row)."""
    first = next(iter(configs.values()))[0]  # every method's configs share the task's data
    root = ensure_dataset(first.data, first.seed)
    split = load_test_split(root, first.data.image_size, build_datamodule(first, root).read_options)
    log.info("bench quality: %s (%d test images, %d anomalous)", name, len(split.labels), int(split.labels.sum()))
    result = {"dataset": name, "n_test": int(len(split.labels)), "n_anomalous": int(split.labels.sum()),
              "has_masks": split.masks is not None}
    for method, cfgs in configs.items():
        # reuse=only: measure what an earlier, stopped run trained and train nothing more
        chosen = [c for c in cfgs if bench.reuse != "only" or trained_detector(c) is not None]
        result[method] = [product_row(c, split, alphas, extra_maps if method == "new_default" and c is cfgs[0] else (),
                                      reuse=bool(bench.reuse), trained=(trained or {}).get(str(c.output_root)))
                          for c in chosen]
    if baselines:
        result["baselines"] = baseline_rows(first, split, bench)
    return result
