"""`python -m pipeline data` (generate the built-in datasets) and `python -m pipeline config` (print the config)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from pipeline.data.builtin import generate, generated_parent


def run_data(cfg: DictConfig) -> dict:
    written = generate(cfg.data, cfg.seed)
    return {"generated": [str(p) for p in written], "folder": str(generated_parent(cfg.data.kind))}


def run_config(cfg: DictConfig) -> dict:
    print(OmegaConf.to_yaml(cfg))
    return {}
