"""Classical baselines the benchmark runs beside the product, as small sklearn-style detectors over
in-memory image arrays (N, C, S, S) in [0, 1].

PyOD's convention: `score_samples` returns higher = more anomalous. `anomaly_maps` (where a baseline
has a per-pixel map) returns (N, S, S) at model resolution, smoothed with the product's own
`maps.gaussian_blur`, so pixel metrics differ only by the model, never by the post-processing.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

from pipeline.scoring import maps as M


def _flat(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1)  # (N, C*S*S)


class PCAReconstruction:
    """Project onto the principal components of the normal images and back; the residual is the map.

    image_score: 'mse' (the classical baseline: mean squared reconstruction error) or 'map_max' (the
    largest value of the smoothed residual map, as the product scores images: a stronger baseline)."""

    def __init__(self, variance: float = 0.95, map_sigma: float = 2.0, seed: int = 0, image_score: str = "mse"):
        if image_score not in ("mse", "map_max"):
            raise ValueError(f"image_score must be 'mse' or 'map_max', got {image_score!r}")
        self.variance = variance
        self.map_sigma = map_sigma
        self.seed = seed
        self.image_score = image_score

    def fit(self, images: np.ndarray) -> "PCAReconstruction":
        self.shape_ = images.shape[1:]  # (C, S, S)
        self.pca_ = PCA(n_components=self.variance, svd_solver="full", random_state=self.seed).fit(_flat(images))
        return self

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        flat = self.pca_.inverse_transform(self.pca_.transform(_flat(images)))
        return flat.reshape(len(images), *self.shape_).astype(np.float32)  # (N, C, S, S)

    def score_samples(self, images: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error (or the map's maximum) per image, (N,)."""
        if self.image_score == "map_max":
            return self.anomaly_maps(images).reshape(len(images), -1).max(axis=1)
        return ((_flat(images) - _flat(self.reconstruct(images))) ** 2).mean(axis=1)

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """Smoothed squared residual, (N, S, S), exactly as the product's `residual` map."""
        x = torch.from_numpy(np.asarray(images, dtype=np.float32))
        raw = M.residual_map(x, torch.from_numpy(self.reconstruct(images)))
        return M.gaussian_blur(raw, self.map_sigma).numpy()


class PixelIsolationForest:
    """IsolationForest on raw pixel vectors. Image-level only: a forest has no per-pixel map.

    scikit-learn's `score_samples` is higher = more normal; we negate it (PyOD's convention)."""

    def __init__(self, n_estimators: int = 200, seed: int = 0):
        self.n_estimators = n_estimators
        self.seed = seed

    def fit(self, images: np.ndarray) -> "PixelIsolationForest":
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(_flat(images))
        return self

    def score_samples(self, images: np.ndarray) -> np.ndarray:
        return -self.forest_.score_samples(_flat(images))

    anomaly_maps = None


class PyODVAE:
    """PyOD's fully connected VAE on pixel vectors (image-level only). PyOD already speaks higher =
    more anomalous through `decision_function`."""

    def __init__(self, epochs: int = 30, seed: int = 0):
        self.epochs = epochs
        self.seed = seed

    def fit(self, images: np.ndarray) -> "PyODVAE":
        from pyod.models.vae import VAE

        # PyOD's loader drops the last partial batch: a batch larger than the data would train nothing.
        self.model_ = VAE(epoch_num=self.epochs, batch_size=min(32, len(images)), random_state=self.seed,
                          verbose=0, device="cpu")
        self.model_.fit(_flat(images))
        return self

    def score_samples(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model_.decision_function(_flat(images)), dtype=np.float64)

    anomaly_maps = None


def pyod_unavailable_reason() -> str | None:
    """None when PyOD's VAE imports; otherwise why not (reported instead of its numbers)."""
    try:
        from pyod.models.vae import VAE  # noqa: F401
    except Exception as err:  # any import failure (missing package, broken torch pairing) is reported
        return f"pyod's VAE does not import here: {type(err).__name__}: {err}"
    return None
