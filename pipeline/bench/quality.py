"""Detection quality of the product and the baselines on the same splits, with the same metrics.

Products (the VAE at the composed defaults, and the plain autoencoder) are trained through the real
entry point `run_train` (tracking off, outputs under the bench's work folder), then their detector
scores the test split in memory with every score in SCORE_NAMES and every map kind in MAP_KINDS.
Baselines fit on exactly the product's training split (the same held-out validation images are left
out) and are scored on the same test images. Maps are compared at the images' original resolution.
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
from pipeline.scoring import metrics as MET
from pipeline.scoring.aupro import aupro
from pipeline.detector import AnomalyDetector
from pipeline.detector.compute import MAP_KINDS
from pipeline.scoring.maps import resize_map
from pipeline.scoring.scores import MONTE_CARLO_SCORES, SCORE_NAMES, STRUCTURE_SCORES

log = logging.getLogger(__name__)


@dataclass
class TestSplit:
    images: torch.Tensor        # (N, C, S, S) model input
    labels: np.ndarray          # (N,) 1 = anomaly
    masks: list[np.ndarray] | None  # (H, W) bool per image at original resolution; None without masks
    sizes: list[tuple[int, int]]    # original (H, W) per image


def load_test_split(root: Path, image_size: int, options) -> TestSplit:
    """Every readable test image with its label and (when the dataset has masks) its mask."""
    samples = scan_test(root)
    tensors, labels, sizes, kept = [], [], [], []
    for sample in samples:
        array = read_image(sample.path, options)  # (H, W, C) uint8; the generated data has no bad files
        tensors.append(to_model_tensor(array, image_size))
        labels.append(sample.label)
        sizes.append(tuple(array.shape[:2]))
        kept.append(sample)
    has_masks = any(s.mask_path is not None for s in kept)
    masks = ([read_mask(s.mask_path, hw) if s.mask_path is not None else np.zeros(hw, bool)
              for s, hw in zip(kept, sizes)] if has_masks else None)
    return TestSplit(torch.stack(tensors), np.asarray(labels), masks, sizes)


def to_original(maps: np.ndarray | torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """(N, S, S) model-resolution maps -> per-image (H, W) maps, bilinear, as the product writes them."""
    maps = torch.as_tensor(maps, dtype=torch.float32)
    return [resize_map(m, hw).numpy() for m, hw in zip(maps, sizes)]


def method_metrics(split: TestSplit, scores: np.ndarray, maps: np.ndarray | torch.Tensor | None,
                   fpr_limit: float) -> dict:
    """image AUROC, and pixel AUROC / AUPRO where the dataset has masks and the method has maps."""
    result = {"image_auroc": MET.image_auroc(split.labels, np.asarray(scores)), "pixel_auroc": None, "aupro": None}
    if split.masks is not None and maps is not None:
        full = to_original(maps, split.sizes)
        result["pixel_auroc"] = MET.pixel_auroc(split.masks, full)
        result["aupro"] = aupro(split.masks, full, fpr_limit)
    return result


def detector_outputs(detector: AnomalyDetector, images: torch.Tensor, batch_size: int,
                     every_map: bool = True) -> dict[str, np.ndarray]:
    """Every score (N,) and every map kind 'map.<kind>' (N, S, S) for in-memory images (only the
    detector's own map kind unless every_map)."""
    own = detector.spec.detect["map"]
    kinds = MAP_KINDS if every_map else (own,)
    # the default kind is out["map"]; every score in SCORE_NAMES, the Monte Carlo and structure ones included
    extra = (*MONTE_CARLO_SCORES, *STRUCTURE_SCORES, *(f"map.{k}" for k in kinds if k != own))
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        out = detector.score_batch(images[start:start + batch_size], extra=extra)
        out[f"map.{own}"] = out["map"]
        for key in (*SCORE_NAMES, *(f"map.{k}" for k in kinds)):
            parts.setdefault(key, []).append(out[key].float().cpu())
    return {key: torch.cat(chunks).numpy() for key, chunks in parts.items()}


def false_alarm_rates(detector: AnomalyDetector, outputs: dict[str, np.ndarray], labels: np.ndarray,
                      alpha: float) -> dict[str, float | None]:
    """For each score: share of held-out normal test images above the threshold calibrated at alpha;
    None when there are too few calibration images for alpha (the threshold is +inf: nothing is flagged)."""
    rates = {}
    for name in SCORE_NAMES:
        detector.set_decision(score=name, alpha=alpha)
        finite = np.isfinite(detector.threshold_)
        rates[name] = MET.false_alarm_rate(labels, outputs[name] > detector.threshold_) if finite else None
    return rates


def _train_and_score(cfg: DictConfig, split: TestSplit, every_map: bool):
    """Train one product detector through `run_train`, score the test split; -> (training summary,
    detector, outputs, metrics of the configured score and map)."""
    summary = run_train(cfg)
    detector = AnomalyDetector.load(summary["detector_dir"])
    outputs = detector_outputs(detector, split.images, cfg.data.batch_size, every_map)
    default = method_metrics(split, outputs[cfg.score.score], outputs[f"map.{cfg.detect.map}"],
                             cfg.score.aupro_fpr_limit)
    return summary, detector, outputs, default


def evaluate_product(cfg: DictConfig, split: TestSplit, alpha: float) -> dict:
    """Train one product detector and measure it with every score and map kind."""
    started = time.perf_counter()
    summary, detector, outputs, default = _train_and_score(cfg, split, every_map=True)
    fpr_limit = cfg.score.aupro_fpr_limit
    per_score = {name: MET.image_auroc(split.labels, outputs[name]) for name in SCORE_NAMES}
    per_map = {}
    for kind in MAP_KINDS:
        maps = outputs[f"map.{kind}"]
        per_map[kind] = method_metrics(split, maps.reshape(len(maps), -1).max(axis=1), maps, fpr_limit)
    return {"model": cfg.model.kind, "score": cfg.score.score, "map": cfg.detect.map, **default,
            "epochs": summary["epochs"], "n_calibration": summary["sizes"]["n_calibration"],
            "n_normal_test": int((split.labels == 0).sum()), "train_seconds": summary["train_seconds"],
            "seconds": time.perf_counter() - started, "scores": per_score, "maps": per_map,
            "false_alarm": false_alarm_rates(detector, outputs, split.labels, alpha)}


def evaluate_seed(cfg: DictConfig, split: TestSplit) -> dict:
    """Train one product detector at cfg.seed (weights, Monte Carlo draws and the train/validation split
    change with it) and measure its default score and map only: the spread between seeds."""
    return _seed_metrics(_train_and_score(cfg, split, every_map=False)[3], int(cfg.seed))


def _seed_metrics(result: dict, seed: int) -> dict:
    return {"seed": seed, **{k: result[k] for k in ("image_auroc", "pixel_auroc", "aupro")}}


def evaluate_baseline(name: str, detector, train_images: np.ndarray, split: TestSplit, fpr_limit: float) -> dict:
    started = time.perf_counter()
    detector.fit(train_images)
    test = split.images.numpy()
    maps = detector.anomaly_maps(test) if detector.anomaly_maps is not None else None
    result = method_metrics(split, detector.score_samples(test), maps, fpr_limit)
    return {"method": name, **result, "seconds": time.perf_counter() - started}


def training_split(cfg: DictConfig, root: Path):
    """The product's own training images (validation held out with the same seed), (N, C, S, S), and
    the read options it settled on (expected image size)."""
    datamodule = build_datamodule(cfg, root)
    datamodule.setup("fit")
    return datamodule.train_images.numpy(), datamodule.read_options


def evaluate_dataset(vae_cfg: DictConfig, ae_cfg: DictConfig, bench: DictConfig, sizes: DictConfig,
                     other_seeds: list[tuple[DictConfig, DictConfig]] = ()) -> dict:
    """Product VAE, plain AE and the baselines on one dataset (category or digits task); the VAE and
    the AE again for each (vae, ae) config pair of `other_seeds`."""
    root = ensure_dataset(vae_cfg.data, vae_cfg.seed)
    train_images, options = training_split(vae_cfg, root)
    split = load_test_split(root, vae_cfg.data.image_size, options)
    fpr_limit = vae_cfg.score.aupro_fpr_limit
    log.info("bench quality: %s (%d train, %d test images)", vae_cfg.data.name, len(train_images), len(split.labels))
    result = {"dataset": vae_cfg.data.name, "n_train": int(len(train_images)), "n_test": int(len(split.labels)),
              "n_anomalous": int(split.labels.sum()), "has_masks": split.masks is not None,
              "product": evaluate_product(vae_cfg, split, bench.alpha_false_alarm),
              "ae": evaluate_product(ae_cfg, split, bench.alpha_false_alarm)}
    baselines = {"pca": B.PCAReconstruction(bench.pca_variance, vae_cfg.detect.map_sigma, vae_cfg.seed),
                 "pca_map_max": B.PCAReconstruction(bench.pca_variance, vae_cfg.detect.map_sigma, vae_cfg.seed, "map_max"),
                 "iforest": B.PixelIsolationForest(bench.iforest_trees, vae_cfg.seed)}
    reason = B.pyod_unavailable_reason()
    if reason is None:
        baselines["pyod_vae"] = B.PyODVAE(sizes.pyod_vae_epochs, vae_cfg.seed)
    result["baselines"] = {name: evaluate_baseline(name, det, train_images, split, fpr_limit)
                           for name, det in baselines.items()}
    if reason is not None:
        result["baselines"]["pyod_vae"] = {"method": "pyod_vae", "skipped": reason}
    result["seeds"] = {"product": [_seed_metrics(result["product"], int(vae_cfg.seed))],
                       "ae": [_seed_metrics(result["ae"], int(ae_cfg.seed))]}
    for vae_seed_cfg, ae_seed_cfg in other_seeds:
        log.info("bench quality: %s, seed %d", vae_cfg.data.name, vae_seed_cfg.seed)
        result["seeds"]["product"].append(evaluate_seed(vae_seed_cfg, split))
        result["seeds"]["ae"].append(evaluate_seed(ae_seed_cfg, split))
    return result
