"""Detectors built by hand for tests that do not need a trained one: the real DetectorSpec, AnomalyDetector
and fitting steps (standardization, calibration), on networks with seeded random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from pipeline.config import compose
from pipeline.data.images import ReadOptions, to_model_tensor
from pipeline.detector import AnomalyDetector
from pipeline.detector import fitting
from pipeline.detector.spec import DetectorSpec
from pipeline.models.head import AnomalyHead
from pipeline.models.vae import ConvVAE
from tests.conftest import TINY, _part

SMALL_MODEL = {"kind": "vae", "latent_dim": 3, "hidden_channels": [4, 8], "latent_layout": "dense", "recon_loss": "bce"}


def default_detect(**changes) -> dict:
    """conf/detect as the product ships it, with `changes`."""
    return {**OmegaConf.to_container(compose([]).detect, resolve=True), **changes}


def small_detector(net: ConvVAE | None = None, head: bool = False, **detect) -> AnomalyDetector:
    """A 16 px detector over `net` (default: a seeded random ConvVAE(1, 16, 3, [4, 8])); detect.* from conf
    with `detect` changes; the learned map only when `head` (random weights). Not fitted: no fused score."""
    if net is None:
        torch.manual_seed(0)
        net = ConvVAE(1, 16, 3, [4, 8]).eval()
    spec = DetectorSpec(1, 16, model=dict(SMALL_MODEL), head={"widths": [4, 8]} if head else None,
                        detect=default_detect(**{"mc_samples": 2, "map": "residual", **detect}))
    return AnomalyDetector(spec, vae=net, head=AnomalyHead(1, [4, 8]) if head else None)


def parts(n: int, size: int = 48, seed: int = 123, image_size: int = 32) -> torch.Tensor:
    """n normal parts (tests/conftest._part) as model inputs (n, 1, image_size, image_size)."""
    rng = np.random.default_rng(seed)
    return torch.stack([to_model_tensor(_part(rng, size)[:, :, None], image_size) for _ in range(n)])


def fit_by_hand(detector: AnomalyDetector, selection: torch.Tensor, calibration: torch.Tensor) -> AnomalyDetector:
    """The fit's decision steps without training: standardize the fused components on `selection`,
    calibrate every score, the pixel threshold and the drift reference on `calibration`."""
    fitting.fit_components(detector, detector.score(selection, keep=()), draw=None)
    fitting.calibrate(detector, calibration, None, batch_size=16)
    return detector


def make_detector(folder: Path, n_calibration: int = 30, size: int = 48, score: str = "recon_error") -> Path:
    """The product's tiny detector (TINY config: VAE and learned map, random weights, seed 0) calibrated on
    normal parts and saved to `folder`. Inspection does not care how good the model is, only that it judges
    every file exactly once: the decision score is recon_error, on which an all-black image lies far above
    every normal part even for an untrained network (tests/test_inspection.py checks it)."""
    torch.manual_seed(0)
    cfg = compose([*TINY, f"score.score={score}"])
    detector = AnomalyDetector.from_config(cfg, ReadOptions(channels=1, expected_size=(size, size)))
    fit_by_hand(detector, parts(10, size, seed=7), parts(n_calibration, size))
    return detector.save(folder)
