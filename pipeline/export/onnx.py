"""ONNX export of a detector's posterior-mean path (encoder mu -> decoder -> sigmoid), and scoring
with ONNX Runtime that gives the same recon_error score and anomaly maps as the PyTorch detector.

The Monte Carlo negative ELBO is not exported (it needs the posterior variance and K decoder passes);
a detector whose score is neg_elbo is exported with a warning and scored here by recon_error.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from pipeline.scoring.detector import DETECTOR_FILE, AnomalyDetector
from pipeline.scoring.maps import RECONSTRUCTION_MAP_KINDS, reconstruction_map, statistics_tensors
from pipeline.scoring.scores import recon_error

log = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"


class PosteriorMeanPath(nn.Module):
    """x (B, C, S, S) in [0, 1] -> x_hat (B, C, S, S): decode the posterior mean, as scoring does."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.net.encode(x)
        return torch.sigmoid(self.net.decode(mu))


def export_onnx(detector: AnomalyDetector, path: Path, opset: int) -> Path:
    """Write the posterior-mean path with a dynamic batch dimension to `path`."""
    spec = detector.spec
    module = PosteriorMeanPath(detector.net).eval()
    example = torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript-based exporter (dynamo=False) handles this plain conv net without onnxscript,
        # one dependency fewer than the torch.export-based default.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=["reconstruction"],
                          dynamic_axes={"image": {0: "batch"}, "reconstruction": {0: "batch"}})
    detector.net.eval()  # export restores the wrapper's (training) mode on the whole tree
    return path


def onnx_session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_map_kind(spec: dict) -> str:
    """The detector's map kind when it needs only the reconstruction, else the residual map."""
    return spec["map_kind"] if spec["map_kind"] in RECONSTRUCTION_MAP_KINDS else "residual"


def onnx_score_batch(session, images: np.ndarray, spec: dict) -> dict[str, np.ndarray]:
    """images (B, C, S, S) float32 in [0, 1] -> recon_error (B,), map (B, S, S), reconstruction, via ONNX
    Runtime; `spec` is the exported detector.json. The score and the map (of onnx_map_kind(spec)) use
    the same functions as AnomalyDetector.score_batch."""
    x = np.ascontiguousarray(images, dtype=np.float32)
    x_hat = session.run(["reconstruction"], {"image": x})[0]  # (B, C, S, S)
    xt, x_hat_t = torch.from_numpy(x), torch.from_numpy(x_hat)
    anomaly_map = reconstruction_map(xt, x_hat_t, onnx_map_kind(spec), spec["map_sigma"],
                                     statistics_tensors(spec.get("map_statistics", {})),
                                     spec.get("map_std_floor", 0.1), balanced_powers=spec.get("balanced_powers"))
    return {"recon_error": recon_error(xt, x_hat_t).numpy(), "map": anomaly_map.numpy(), "reconstruction": x_hat}


def run_export(cfg: DictConfig) -> dict:
    from pipeline.tracking.runs import resolve_detector

    detector_dir, provenance = resolve_detector(cfg, str(cfg.export.model), str(Path(cfg.data.root).resolve()))
    detector = AnomalyDetector.load(detector_dir)
    if detector.spec.score != "recon_error":
        log.warning("the detector's score is %s; the ONNX model gives recon_error and the maps only",
                    detector.spec.score)
    if onnx_map_kind(asdict(detector.spec)) != detector.spec.map_kind:
        log.warning("the detector's map is %s, which needs the PyTorch network; the ONNX model gives the residual map",
                    detector.spec.map_kind)
    out_dir = Path(cfg.export.output_dir).expanduser()
    path = export_onnx(detector, out_dir / ONNX_FILE, int(cfg.export.opset))
    shutil.copy(detector_dir / DETECTOR_FILE, out_dir / DETECTOR_FILE)  # preprocessing, threshold, calibration

    # Check the export on random images before anyone relies on it.
    probe = torch.rand(4, detector.spec.in_channels, detector.spec.image_size, detector.spec.image_size,
                       generator=torch.Generator().manual_seed(cfg.seed))
    expected = detector.score_batch(probe)
    got = onnx_score_batch(onnx_session(path), probe.numpy(), asdict(detector.spec))
    diff = float(np.abs(got["recon_error"] - expected["recon_error"].numpy()).max())
    return {"onnx": str(path), "detector_json": str(out_dir / DETECTOR_FILE), "max_abs_score_diff": diff,
            **provenance}
