"""What every command that uses a trained detector does first: find it (the `detector` key, or the command's
own default), load it with its checksum verified, refuse overrides of settings fixed at training, and apply
the decision settings given on the command line (detector/decision.py)."""

from __future__ import annotations

import tempfile

from omegaconf import DictConfig

from pipeline.detector import AnomalyDetector
from pipeline.detector.decision import check_and_decide
from pipeline.tracking.runs import resolve_detector


def detector_spec(cfg: DictConfig, default: str) -> str:
    """The `detector` key, or the command's default when it is not set."""
    return str(cfg.detector) if cfg.get("detector") not in (None, "") else default


def load_detector(cfg: DictConfig, default: str, data_root: str, judges: bool = True) -> tuple[AnomalyDetector, dict]:
    """(detector ready to score, provenance: model source, name, version, alias, training run, checksum).
    `judges`: the command flags images, so a threshold that cannot fire is refused (unless allowed)."""
    # A downloaded detector is loaded whole into memory, so its copy goes with the command: a scheduled
    # `score` must not leave a model folder in /tmp on every run.
    with tempfile.TemporaryDirectory(prefix="detector-") as scratch:
        folder, provenance = resolve_detector(cfg, detector_spec(cfg, default), data_root, scratch)
        detector = AnomalyDetector.load(folder, expected_sha256=provenance.get("registered_weights_sha256"))
    check_and_decide(detector, cfg, provenance, judges)
    return detector, provenance
