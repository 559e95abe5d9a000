"""How many processes a trainer config asks for, without importing Lightning (scoring and inspection ask it
on every run and need Lightning only when the answer is more than one)."""

from __future__ import annotations

from omegaconf import DictConfig


def requested_world_size(trainer_cfg: DictConfig) -> int | None:
    """devices x num_nodes when devices is a count; None when Lightning must resolve it ('auto', a list)."""
    devices = trainer_cfg.devices
    if isinstance(devices, int) and devices > 0:
        return devices * int(trainer_cfg.num_nodes)
    return None


def wants_distributed(trainer_cfg: DictConfig) -> bool:
    """True when the trainer config asks for more than one process in total."""
    size = requested_world_size(trainer_cfg)
    return size is None or size > 1  # 'auto' or a device list: let Lightning decide how many
