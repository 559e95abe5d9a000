"""`python -m pipeline promote [version]`: give a registered version (default: the newest) the alias champion."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.tracking.registry import promote
from pipeline.tracking.store import open_store


def run_promote(cfg: DictConfig) -> dict:
    version = None if cfg.get("detector") in (None, "", "latest") else str(cfg.detector)
    return promote(open_store(cfg), cfg.tracking.registered_model, version)
