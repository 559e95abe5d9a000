"""ONNX export of a detector's decision path, and an ONNX Runtime detector that scores exactly like it.

Graphs with a dynamic batch dimension: encoder.onnx (image -> mu, log_var), decoder.onnx (code -> logits),
restorer.onnx (image, mu -> the two-level VAE's restoration, when the network has a local level), head.onnx
(image, reconstruction -> per-pixel logits, when the detector has the learned map), linear.onnx (image -> its
projection onto the normal images' subspace, when the fit kept the linear level) and nearest.onnx (image -> its
distance to the nearest normal training images, when the fit kept that level). `OnnxDetector`
plugs them into the detector's own BatchComputer and decision (detector/compute.py, calibration.py), so maps,
scores, p-values and flags come from the same code as in PyTorch. The Monte Carlo scores (neg_elbo, neg_iwae)
need the decoder K times and are left out; the gradient maps (elbo_grad, projection) need autograd: not exported.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.detector import AnomalyDetector
from pipeline.detector import calibration as C
from pipeline.detector.compute import BatchComputer, GRADIENT_MAP_KINDS
from pipeline.detector.spec import DETECTOR_FILE, DetectorSpec
from pipeline.models.two_level import local_logits
from pipeline.scoring import scores as S
from pipeline.scoring.fusion import fuse
from pipeline.scoring.maps import statistics_tensors

GRAPHS = ("encoder.onnx", "decoder.onnx", "head.onnx", "restorer.onnx", "linear.onnx", "nearest.onnx")


class _Encoder(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.vae.encode(x)
        return mu, (log_var if log_var is not None else torch.zeros_like(mu))


class _Decoder(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)


class _Restorer(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(local_logits(self.vae, x, mu))


def _export(module: nn.Module, example: tuple, path: Path, inputs: list[str], outputs: list[str], opset: int) -> None:
    with warnings.catch_warnings():
        # The TorchScript-based exporter (dynamo=False) handles these plain conv nets without onnxscript,
        # one dependency fewer than the torch.export-based default.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=outputs, dynamic_axes={name: {0: "batch"} for name in inputs + outputs})


def export_onnx(detector: AnomalyDetector, folder: Path, opset: int) -> list[Path]:
    """Write the graphs and detector.json (preprocessing, fitted state, decision) into `folder`."""
    spec = detector.spec
    if spec.categories:
        raise ValueError("ONNX export of a conditional detector is not supported (its networks take the category)")
    if spec.scheme == "cross":
        raise ValueError(f"ONNX export of a cross-conformal detector (small normal sets: {len(spec.members)} member "
                         "detectors, data.split.scheme=cross) is not supported; serve it through MLflow, or train with "
                         "data.split.scheme=split to export one detector")
    if spec.detect["map"] in GRADIENT_MAP_KINDS:
        raise ValueError(f"detect.map={spec.detect['map']} needs autograd through the VAE: it cannot be exported")
    folder.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size)
    _export(_Encoder(detector.vae), (x,), folder / GRAPHS[0], ["image"], ["mu", "log_var"], opset)
    _export(_Decoder(detector.vae), (torch.zeros(2, detector.vae.latent_size),), folder / GRAPHS[1], ["code"],
            ["logits"], opset)
    written = [folder / GRAPHS[0], folder / GRAPHS[1]]
    if getattr(detector.vae, "local", None) is not None:
        mu = torch.zeros(2, detector.vae.latent_size)
        _export(_Restorer(detector.vae), (x, mu), folder / GRAPHS[3], ["image", "mu"], ["restored"], opset)
        written.append(folder / GRAPHS[3])
    if detector.head is not None:
        _export(detector.head, (x, x), folder / GRAPHS[2], ["image", "reconstruction"], ["logits"], opset)
        written.append(folder / GRAPHS[2])
    if detector.linear is not None:
        _export(detector.linear, (x,), folder / GRAPHS[4], ["image"], ["projection"], opset)
        written.append(folder / GRAPHS[4])
    if detector.nearest is not None:
        _export(detector.nearest, (x,), folder / GRAPHS[5], ["image"], ["distance"], opset)
        written.append(folder / GRAPHS[5])
    (folder / DETECTOR_FILE).write_text(spec.to_json())
    detector.eval()  # export leaves the modules in the mode it found them, the wrappers' (training) mode included
    return written


class _Session:
    def __init__(self, path: Path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        feeds = {k: np.ascontiguousarray(v.detach().cpu().numpy(), dtype=np.float32) for k, v in inputs.items()}
        return [torch.from_numpy(out) for out in self.session.run(None, feeds)]


class OnnxVAE:
    """encode / decode backed by ONNX Runtime, shaped like the PyTorch network for BatchComputer."""

    def __init__(self, folder: Path, variational: bool):
        self.encoder, self.decoder, self.variational = _Session(folder / GRAPHS[0]), _Session(folder / GRAPHS[1]), variational
        if (folder / GRAPHS[3]).is_file():
            restorer = _Session(folder / GRAPHS[3])
            self.restore_image = lambda x, mu: restorer(image=x, mu=mu)[0]  # models/two_level.restore uses it

    def encode(self, x: torch.Tensor):
        mu, log_var = self.encoder(image=x)
        return mu, (log_var if self.variational else None)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(code=z)[0]


class OnnxHead:
    def __init__(self, folder: Path):
        self.session = _Session(folder / GRAPHS[2])

    def __call__(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        return self.session(image=x, reconstruction=reconstruction)[0]


class OnnxDetector:
    """Scores and decisions from an exported folder with ONNX Runtime only (no PyTorch weights)."""

    def __init__(self, folder: Path | str):
        folder = Path(folder)
        self.spec = DetectorSpec.from_json((folder / DETECTOR_FILE).read_text(), str(folder / DETECTOR_FILE))
        vae = OnnxVAE(folder, self.spec.model["kind"] not in ("ae", "vqvae"))  # no Gaussian posterior
        head = OnnxHead(folder) if self.spec.head else None
        linear = _Session(folder / GRAPHS[4]) if self.spec.linear else None
        nearest = _Session(folder / GRAPHS[5]) if self.spec.nearest else None
        self.computer = BatchComputer(vae, head, self.spec.detect, self.spec.model["recon_loss"],
                                      statistics_tensors(self.spec.map_statistics), torch.zeros(0, 1),
                                      linear and (lambda x: linear(image=x)[0]), nearest and (lambda x: nearest(image=x)[0]))

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images (N, C, S, S) in [0, 1] -> every base score, 'fused', 'map' (N, S, S), 'is_anomaly', 'p_value'."""
        out = {k: v.numpy() for k, v in self.computer(torch.as_tensor(images, dtype=torch.float32)).items()}
        out[S.FUSED] = fuse(out, self.spec.standardization)
        out["p_value"] = C.p_values(self.spec, out[self.spec.score])
        out["is_anomaly"] = C.decide(self.spec, out[self.spec.score])[0]
        return out
