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
from pipeline.models.cvae import conditioned
from pipeline.models.factory import build_network
from pipeline.models.vae import ConvAutoencoder
from pipeline.scoring import maps as M
from pipeline.scoring import scores as S
from pipeline.scoring.threshold import conformal_p_values, conformal_threshold, pixel_threshold

# Plain maps, their per-pixel standardized ('_z') versions, the sum of both z-maps ('combined'), the sum
# of both plain maps partly standardized ('balanced'), and the two gradient-based maps.
MAP_KINDS = ("residual", "msgms", "residual_z", "msgms_z", "combined", "balanced", "elbo_grad", "projection")
THRESHOLD_METHODS = ("conformal", "manual")

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
    latent_layout: str = "dense"        # dense | spatial (see models/vae.py)
    score: str = "recon_error"          # which score is *the* score (one of scores.SCORE_NAMES)
    mc_samples: int = 8                 # K for the Monte Carlo negative ELBO / IWAE
    map_kind: str = "residual"          # which per-pixel map (MAP_KINDS)
    map_sigma: float = 2.0              # smoothing of the anomaly map, model-input pixels
    map_std_floor: float = 0.1          # '_z' maps divide by (pixel std + this fraction of the mean std)
    balanced_powers: dict = field(default_factory=lambda: dict(M.BALANCED_POWERS))  # 'balanced' map: plain kind -> scale_map power
    map_statistics: dict = field(default_factory=dict)  # kind -> {"mean", "std"}: (S, S) lists over normal training maps
    topk_fraction: float = 0.01         # share of map pixels averaged by the map_topk score
    projection: dict = field(default_factory=lambda: {"steps": 10, "step_size": 0.05, "l1_weight": 1.0})
    pixel_quantile: float = 0.999       # quantile of normal validation map pixels used as pixel threshold
    pixel_threshold: float | None = None  # map value above which a pixel counts as defect (masks, areas, panel outlines)
    seed: int = 0                       # seeds the shared Monte Carlo draws
    max_image_pixels: int = 50_000_000
    strict_channels: bool = True
    expected_size: list[int] | None = None  # (H, W) of the training images, enforced in strict mode
    alpha: float = 0.01                 # target false-alarm rate of the threshold
    threshold_method: str = "conformal"  # conformal (from calibration scores) | manual
    manual_threshold: float | None = None
    calibration_scores: dict[str, list[float]] = field(default_factory=dict)  # score name -> normal val scores
    threshold: float | None = None
    extra: dict = field(default_factory=dict)  # provenance: data root, run id, ...
    weights_sha256: str | None = None   # checksum of weights.pt, verified before the weights are loaded
    categories: list[str] | None = None  # conditional models: category names in label order (label = index)

    @property
    def read_options(self) -> ReadOptions:
        size = tuple(self.expected_size) if self.expected_size else None
        return ReadOptions(self.in_channels, self.max_image_pixels, self.strict_channels, size)


class AnomalyDetector:
    def __init__(self, net: ConvAutoencoder, spec: DetectorSpec):
        if spec.score not in S.SCORE_NAMES:
            raise ValueError(f"score.score must be one of {S.SCORE_NAMES}, got {spec.score!r}")
        if spec.map_kind not in MAP_KINDS:
            raise ValueError(f"score.map must be one of {MAP_KINDS}, got {spec.map_kind!r}")
        self.net = net.eval()
        self.spec = spec
        # Shared Monte Carlo draws (K, L): see scores.neg_elbo.
        self._eps = torch.randn(spec.mc_samples, net.latent_size, generator=torch.Generator().manual_seed(spec.seed))
        self.map_statistics_ = M.statistics_tensors(spec.map_statistics)  # plain kind -> per-pixel (mean, std)

    # ---- scoring ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> "AnomalyDetector":
        self.net.to(device)
        return self

    def anomaly_map(self, x: torch.Tensor, x_hat: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """Unsmoothed (B, S, S) plain map of the given kind (default: the spec's; not for z-maps)."""
        kind = kind or self.spec.map_kind
        if kind == "residual":
            return M.residual_map(x, x_hat)
        if kind == "msgms":
            return M.msgms_map(x, x_hat)
        if kind == "elbo_grad":
            return M.elbo_gradient_map(self.net, x, self.spec.recon_loss)
        return M.projection_map(self.net, x, self.spec.recon_loss, **self.spec.projection)

    def smoothed_map(self, x: torch.Tensor, x_hat: torch.Tensor, kind: str,
                     computed: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Smoothed (B, S, S) map of any kind in MAP_KINDS; `computed` holds plain maps already made."""
        if kind in M.RECONSTRUCTION_MAP_KINDS:
            return M.reconstruction_map(x, x_hat, kind, self.spec.map_sigma, self.map_statistics_,
                                        self.spec.map_std_floor, computed, self.spec.balanced_powers)
        return M.gaussian_blur(self.anomaly_map(x, x_hat, kind), self.spec.map_sigma)

    @torch.no_grad()
    def fit_map_statistics(self, images: torch.Tensor, batch_size: int, labels: torch.Tensor | None = None) -> None:
        """Per-pixel mean and std of the smoothed plain maps (PLAIN_RECONSTRUCTION_KINDS) of normal images
        (N, C, S, S), the training images: the validation images stay untouched for calibration, so
        calibration and test images are standardized alike and the threshold stays exchangeable."""
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in M.PLAIN_RECONSTRUCTION_KINDS}
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(self.device)
            with conditioned(self.net, None if labels is None else labels[start:start + batch_size]):
                x_hat = S.posterior_mean_reconstruction(self.net, x)[0]
            for kind in M.PLAIN_RECONSTRUCTION_KINDS:
                parts[kind].append(self.smoothed_map(x, x_hat, kind).cpu())
        self.map_statistics_ = {kind: M.pixel_statistics(torch.cat(maps)) for kind, maps in parts.items()}
        self.spec.map_statistics = {kind: {"mean": mean.tolist(), "std": std.tolist()}
                                    for kind, (mean, std) in self.map_statistics_.items()}

    @torch.no_grad()  # not inference_mode: the gradient maps re-enable autograd locally
    def score_batch(self, x: torch.Tensor, map_kinds: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        """x (B, C, S, S) in [0, 1] -> every score in scores.SCORE_NAMES (B,), 'score' (B,),
        'map' (B, S, S) smoothed, 'reconstruction' (B, C, S, S); plus 'map.<kind>' for extra map kinds."""
        x = x.to(self.device, non_blocking=True)
        x_hat, mu, log_var = S.posterior_mean_reconstruction(self.net, x)
        out = {"recon_error": S.recon_error(x, x_hat), "l1_error": S.l1_error(x, x_hat), "reconstruction": x_hat}
        out.update(S.likelihood_scores(self.net, x, mu, log_var, self._eps.to(x.device), self.spec.recon_loss))
        computed = {"msgms": M.msgms_map(x, x_hat), "residual": M.residual_map(x, x_hat)}
        out["msgms_error"] = computed["msgms"].flatten(1).mean(dim=1)
        out["map"] = self.smoothed_map(x, x_hat, self.spec.map_kind, computed)
        out["map_max"] = S.map_max(out["map"])
        out["map_topk"] = S.map_topk(out["map"], self.spec.topk_fraction)
        for kind in map_kinds:
            out[f"map.{kind}"] = self.smoothed_map(x, x_hat, kind, computed)
        out["score"] = out[self.spec.score]
        return out

    # ---- calibration (sklearn style: fitted state ends in '_') ---------------------------------
    def calibrate(self, normal_scores: dict[str, np.ndarray], alpha: float | None = None,
                  normal_maps: np.ndarray | None = None) -> float:
        """Store held-out normal scores (every score kind), set the image threshold for `alpha` and,
        given the normal validation maps (N, S, S), the pixel threshold."""
        self.spec.calibration_scores = {k: [float(v) for v in np.asarray(s).ravel()] for k, s in normal_scores.items()}
        if alpha is not None:
            self.spec.alpha = float(alpha)
        if normal_maps is not None:
            self.spec.pixel_threshold = pixel_threshold(normal_maps, self.spec.pixel_quantile)
        self._set_threshold()
        return self.spec.threshold

    def _set_threshold(self) -> None:
        if self.spec.threshold_method == "manual":
            if self.spec.manual_threshold is None:
                raise ValueError("score.threshold_method=manual needs score.manual_threshold")
            self.spec.threshold = float(self.spec.manual_threshold)
        elif self.spec.threshold_method == "conformal":
            self.spec.threshold = conformal_threshold(self.calibration_scores_, self.spec.alpha)
        else:
            raise ValueError(f"score.threshold_method must be one of {THRESHOLD_METHODS}, got {self.spec.threshold_method!r}")

    def recalibrate_for(self, score: str | None = None, alpha: float | None = None, method: str | None = None,
                        manual_threshold: float | None = None) -> None:
        """Switch the score, alpha or threshold method; the threshold follows from the stored
        calibration scores (or is the manual value)."""
        if score is not None:
            if score not in S.SCORE_NAMES:
                raise ValueError(f"score.score must be one of {S.SCORE_NAMES}, got {score!r}")
            self.spec.score = score
        if alpha is not None:
            self.spec.alpha = float(alpha)
        if method is not None:
            self.spec.threshold_method = method
        if manual_threshold is not None:
            self.spec.manual_threshold = float(manual_threshold)
        self._set_threshold()

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
        self.spec.weights_sha256 = file_sha256(folder / WEIGHTS_FILE)
        (folder / DETECTOR_FILE).write_text(json.dumps(asdict(self.spec), indent=1, allow_nan=True))
        return folder

    @classmethod
    def load(cls, folder: Path | str, map_location: str | torch.device = "cpu",
             expected_sha256: str | None = None) -> "AnomalyDetector":
        """Load a saved detector. The weights' checksum must match the one recorded in detector.json
        and, when given, `expected_sha256` (e.g. recorded in the model registry at training time):
        a tampered or corrupted model file is refused before anything is deserialized."""
        folder = Path(folder)
        spec_file = folder / DETECTOR_FILE
        if not spec_file.is_file():
            raise FileNotFoundError(f"{spec_file} not found: not a detector folder")
        spec = DetectorSpec(**json.loads(spec_file.read_text()))
        verify_weights(folder, spec.weights_sha256, expected_sha256)
        net = build_network(spec.model_kind, spec.in_channels, spec.image_size, spec.latent_dim, spec.hidden_channels,
                            spec.latent_layout, n_classes=len(spec.categories or []))
        # weights_only: never unpickle arbitrary objects from a model file.
        net.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True))
        return cls(net, spec)


class TamperedModelError(ValueError):
    """A model file whose checksum differs from the one recorded when it was trained."""


def verify_weights(folder: Path | str, recorded_sha256: str | None, expected_sha256: str | None = None) -> None:
    """Refuse (TamperedModelError) weights whose checksum differs from the one recorded in detector.json
    or from `expected_sha256` (e.g. recorded in the model registry at training time)."""
    path = Path(folder) / WEIGHTS_FILE
    actual = file_sha256(path)
    for source, expected in (("detector.json", recorded_sha256), ("the registry", expected_sha256)):
        if expected is not None and expected != actual:
            raise TamperedModelError(f"{path}: checksum {actual[:12]}... does not match the one recorded in {source} "
                                     f"({expected[:12]}...): refusing to load a modified model")


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
