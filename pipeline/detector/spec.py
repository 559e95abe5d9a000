"""What a detector stores besides its weights (detector.json): how it reads images, which networks it has,
what a batch computes (fixed at training), and what `fit` learned (statistics, standardization, calibration).

Settings fixed at training (`FIXED_GROUPS` of the config) are stored here and win at score time; the
decision settings (which score, alpha, the threshold method) may change at score time because the
calibration scores of every score are stored: the threshold is recomputed from them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from pipeline.data.images import ReadOptions

SPEC_VERSION = 2
DETECTOR_FILE = "detector.json"
WEIGHTS_FILE = "weights.pt"

# Config keys whose value is fixed by training: overriding one at score time would silently not apply
# (the networks and the calibration depend on it), so it is an error (config.check_fixed_overrides).
FIXED_GROUPS = ("model", "head", "detect")
FIXED_KEYS = ("data.image_size", "data.channels")


@dataclass
class DetectorSpec:
    # ---- preprocessing -----------------------------------------------------------------------------
    in_channels: int
    image_size: int
    max_image_pixels: int = 50_000_000
    strict_channels: bool = True
    expected_size: list[int] | None = None       # (H, W) of the training images, enforced in strict mode
    # ---- networks ----------------------------------------------------------------------------------
    model: dict = field(default_factory=dict)    # conf/model at training: kind, latent_dim, layout, beta, ...
    head: dict | None = None                     # conf/head at training (widths, ...); None = no learned map
    categories: list[str] | None = None          # conditional models: category names in label order
    linear: dict | None = None                   # the linear level kept by the fit (models/linear.py): n_features,
                                                 # n_components, explained_variance; None = none
    nearest: dict | None = None                  # the nearest-parts level kept by the fit (models/nearest.py):
                                                 # n_references, n_features, k, grid; None = none
    # ---- what a batch computes (conf/detect at training) -------------------------------------------
    detect: dict = field(default_factory=dict)
    # ---- fitted state ------------------------------------------------------------------------------
    map_statistics: dict = field(default_factory=dict)   # plain map kind -> {"mean", "std"} (S, S) lists
    standardization: dict = field(default_factory=dict)  # fused component -> {"transform", "center", "scale"}
    calibration_scores: dict = field(default_factory=dict)  # score name -> held-out normal scores (N,)
    calibration_labels: list[int] | None = None  # category of each calibration image (conditional models)
    pixel_threshold: float | None = None         # map value above which a pixel is part of the defect region
    validation: dict = field(default_factory=dict)  # label-free validation numbers from the selection images
    reconstruction: str | None = None            # what the map compares with: "global" (the VAE's posterior mean) or
                                                 # "local" (the two-level VAE's restoration); None = as the network is
    drift_reference: list[list[float]] = field(default_factory=list)  # image statistics of the calibration images
    # ---- the decision (may change at score time; the threshold follows from calibration_scores) -----
    score: str = "fused"
    alpha: float = 0.01
    threshold_method: str = "conformal"          # conformal | manual
    manual_threshold: float | None = None
    extra: dict = field(default_factory=dict)    # provenance: data root, run id, split sizes, ...
    # ---- small normal sets (data.split.scheme=cross): one member detector per calibration fold ----------
    scheme: str = "split"                        # split | cross (calibration_scores are then rank scores)
    members: list[dict] = field(default_factory=list)  # each member's DetectorSpec (without weights), cross only
    weights_sha256: str | None = None
    version: int = SPEC_VERSION

    @property
    def read_options(self) -> ReadOptions:
        size = tuple(self.expected_size) if self.expected_size else None
        return ReadOptions(self.in_channels, self.max_image_pixels, self.strict_channels, size)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, allow_nan=True)

    @classmethod
    def from_json(cls, text: str, source: str = DETECTOR_FILE) -> "DetectorSpec":
        stored = json.loads(text)
        if stored.get("version") != SPEC_VERSION:
            raise ValueError(f"{source} was written by another version of the product (spec version "
                             f"{stored.get('version', 1)}, this one reads {SPEC_VERSION}): train the detector again")
        return cls(**stored)

    def fixed_settings(self) -> dict[str, object]:
        """{'model.beta': 0.01, 'detect.map': 'head', ...}: every setting fixed at training, flat."""
        flat = {f"{group}.{key}": value for group in FIXED_GROUPS
                for key, value in _flatten(getattr(self, group) or {}).items()}
        flat.update({"data.image_size": self.image_size, "data.channels": self.in_channels})
        return flat


def _flatten(node: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
