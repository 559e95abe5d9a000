"""`python -m pipeline export`: the detector (`detector`, default: the newest) as ONNX graphs plus detector.json,
checked against PyTorch on random images before anyone relies on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.commands.common import load_detector
from pipeline.export.onnx import OnnxDetector, export_onnx
from pipeline.scoring import scores as S


def run_export(cfg: DictConfig) -> dict:
    detector, provenance = load_detector(cfg, "latest", str(Path(cfg.data.root).resolve()), judges=False)
    out_dir = Path(cfg.export.output_dir).expanduser().resolve()
    written = export_onnx(detector, out_dir, int(cfg.export.opset))
    spec = detector.spec
    probe = torch.rand(4, spec.in_channels, spec.image_size, spec.image_size,
                       generator=torch.Generator().manual_seed(cfg.seed))
    expected = detector.score(probe, keep=("map",))
    got = OnnxDetector(out_dir).score(probe.numpy())
    return {"files": [str(p) for p in written], "output_dir": str(out_dir),
            "max_abs_score_diff": float(np.abs(got[S.FUSED] - expected[S.FUSED]).max()),
            "max_abs_map_diff": float(np.abs(got["map"] - expected["map"]).max()), **provenance}
