"""AnomalyDetector: a trained network plus everything needed to score with it later.

It bundles the plain nn.Module, the preprocessing (image size, channels), the score definition and
the calibration state (`calibration_scores_`, `threshold_`), and saves/loads them as a folder:

    detector.json   preprocessing, score settings, calibration scores and threshold (plain JSON)
    weights.pt      the network's state_dict, loaded with torch.load(weights_only=True)

Scores follow PyOD's convention: higher = more anomalous, label 1 = anomaly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.data.images import ReadOptions
from pipeline.models.vae import ConvAutoencoder, build_network
from pipeline.scoring.maps import gaussian_blur, residual_map
from pipeline.scoring.scores import SCORE_NAMES, neg_elbo, posterior_mean_reconstruction, recon_error
from pipeline.scoring.threshold import conformal_p_values, conformal_threshold, pixel_threshold

DETECTOR_FILE = "detector.json"
WEIGHTS_FILE = "weights.pt"


@dataclass
class DetectorSpec:
    """Everything but the weights; stored as detector.json."""

    model_kind: str
    in_channels: int
    image_size: int
    latent_dim: int
    hidden_channels: list[int]
    recon_loss: str
    score: str = "recon_error"          # which score is *the* score
    mc_samples: int = 8                 # K for the Monte Carlo negative ELBO
    map_sigma: float = 2.0              # smoothing of the anomaly map, model-input pixels
    seed: int = 0                       # seeds the shared Monte Carlo draws
    max_image_pixels: int = 50_000_000
    strict_channels: bool = True
    expected_size: list[int] | None = None  # (H, W) of the training images, enforced in strict mode
    alpha: float = 0.01                 # target false-alarm rate of the threshold
    threshold_method: str = "conformal"
    calibration_scores: dict[str, list[float]] = field(default_factory=dict)  # score name -> normal val scores
    threshold: float | None = None
    pixel_threshold: float | None = None  # map value above which a pixel is outlined as defect (review panels)
    pixel_quantile: float | None = None   # the quantile of normal validation map pixels it was set to
    extra: dict = field(default_factory=dict)  # provenance: data root, run id, ...

    @property
    def read_options(self) -> ReadOptions:
        size = tuple(self.expected_size) if self.expected_size else None
        return ReadOptions(self.in_channels, self.max_image_pixels, self.strict_channels, size)


class AnomalyDetector:
    def __init__(self, net: ConvAutoencoder, spec: DetectorSpec):
        if spec.score not in SCORE_NAMES:
            raise ValueError(f"score.score must be one of {SCORE_NAMES}, got {spec.score!r}")
        self.net = net.eval()
        self.spec = spec
        # Shared Monte Carlo draws (K, L): see scores.neg_elbo.
        self._eps = torch.randn(spec.mc_samples, spec.latent_dim, generator=torch.Generator().manual_seed(spec.seed))

    # ---- scoring ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> "AnomalyDetector":
        self.net.to(device)
        return self

    @torch.inference_mode()
    def score_batch(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, C, S, S) in [0, 1] -> every score (B,), 'map' (B, S, S) smoothed, 'reconstruction'."""
        x = x.to(self.device, non_blocking=True)
        x_hat, mu, log_var = posterior_mean_reconstruction(self.net, x)
        out = {
            "recon_error": recon_error(x, x_hat),
            "neg_elbo": neg_elbo(self.net, x, mu, log_var, self._eps.to(x.device), self.spec.recon_loss),
            "map": gaussian_blur(residual_map(x, x_hat), self.spec.map_sigma),
            "reconstruction": x_hat,
        }
        out["score"] = out[self.spec.score]
        return out

    # ---- calibration (sklearn style: fitted state ends in '_') ---------------------------------
    def calibrate(self, normal_scores: dict[str, np.ndarray], alpha: float | None = None) -> float:
        """Store held-out normal scores (every score kind) and set the conformal threshold for `alpha`."""
        self.spec.calibration_scores = {k: [float(v) for v in np.asarray(s).ravel()] for k, s in normal_scores.items()}
        if alpha is not None:
            self.spec.alpha = float(alpha)
        self.spec.threshold = conformal_threshold(self.calibration_scores_, self.spec.alpha)
        return self.spec.threshold

    def recalibrate_for(self, score: str | None = None, alpha: float | None = None) -> None:
        """Switch the score and/or alpha; the threshold follows from the stored calibration scores."""
        if score is not None:
            if score not in SCORE_NAMES:
                raise ValueError(f"score.score must be one of {SCORE_NAMES}, got {score!r}")
            self.spec.score = score
        if alpha is not None:
            self.spec.alpha = float(alpha)
        self.spec.threshold = conformal_threshold(self.calibration_scores_, self.spec.alpha)

    def calibrate_pixels(self, normal_maps: np.ndarray, quantile: float) -> float:
        """Set the pixel threshold from held-out normal maps (N, S, S): their `quantile` over all pixels."""
        self.spec.pixel_threshold = pixel_threshold(normal_maps, quantile)
        self.spec.pixel_quantile = float(quantile)
        return self.spec.pixel_threshold

    @property
    def calibration_scores_(self) -> np.ndarray:
        if self.spec.score not in self.spec.calibration_scores:
            raise RuntimeError("the detector has not been calibrated on normal validation images")
        return np.asarray(self.spec.calibration_scores[self.spec.score])

    @property
    def threshold_(self) -> float:
        if self.spec.threshold is None:
            raise RuntimeError("the detector has no threshold: calibrate it first")
        return self.spec.threshold

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        return conformal_p_values(self.calibration_scores_, scores)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path | str) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, folder / WEIGHTS_FILE)
        (folder / DETECTOR_FILE).write_text(json.dumps(asdict(self.spec), indent=1, allow_nan=True))
        return folder

    @classmethod
    def load(cls, folder: Path | str, map_location: str | torch.device = "cpu") -> "AnomalyDetector":
        folder = Path(folder)
        spec_file = folder / DETECTOR_FILE
        if not spec_file.is_file():
            raise FileNotFoundError(f"{spec_file} not found: not a detector folder")
        spec = DetectorSpec(**json.loads(spec_file.read_text()))
        net = build_network(spec.model_kind, spec.in_channels, spec.image_size, spec.latent_dim, spec.hidden_channels)
        # weights_only: never unpickle arbitrary objects from a model file.
        net.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True))
        return cls(net, spec)


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
