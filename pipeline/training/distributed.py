"""Distributed runs: the Lightning strategy and precision from `conf/trainer`, and which rank this process is.

Lightning does the distributing (DDPStrategy over torch.distributed; NCCL on CUDA, gloo on CPU). What
is ours is only what Lightning cannot know: that ranks > 0 must not create MLflow runs before the
Trainer exists (tracking/system_metrics.py records the setup in the one run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.strategies import DDPStrategy, Strategy



def resolve_precision(precision: str, accelerator: str, bf16_supported: bool | None = None) -> str:
    """`auto` -> 'bf16-mixed' when training runs on a CUDA GPU that supports bf16, else '32-true'.

    Any other value is passed to Lightning unchanged (it names the invalid ones itself).
    """
    if str(precision) != "auto":
        return str(precision)
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if bf16_supported is None:
        bf16_supported = on_gpu and torch.cuda.is_bf16_supported()
    return "bf16-mixed" if on_gpu and bf16_supported else "32-true"


def build_strategy(trainer_cfg: DictConfig) -> str | Strategy:
    """The configured strategy; a DDPStrategy object only when a process-group backend is forced."""
    backend = trainer_cfg.get("process_group_backend")
    if backend and str(trainer_cfg.strategy) == "ddp":
        return DDPStrategy(process_group_backend=str(backend))
    return str(trainer_cfg.strategy)


def global_rank_from_env(env: Mapping[str, str], devices_per_node: int | None) -> int:
    """This process's global rank as set by the launcher, before any Trainer or process group exists.

    torchrun sets RANK; SLURM sets SLURM_PROCID; Lightning's own launcher (strategy=ddp) re-runs the
    command with LOCAL_RANK and NODE_RANK. A plain single-process run has none of them: rank 0.
    Lightning's `rank_zero_only.rank` is read at import from RANK/LOCAL_RANK only, so on the second
    machine of a Lightning-launched multi-node job (NODE_RANK=1, LOCAL_RANK=0) it would say 0.
    """
    if env.get("RANK") is not None:
        return int(env["RANK"])
    if env.get("LOCAL_RANK") is not None or env.get("NODE_RANK") is not None:
        node = int(env.get("NODE_RANK") or env.get("GROUP_RANK") or 0)
        return node * int(devices_per_node or 1) + int(env.get("LOCAL_RANK") or 0)
    if env.get("SLURM_PROCID") is not None and env.get("SLURM_NTASKS", "1") != "1":
        return int(env["SLURM_PROCID"])
    return 0


def leave_process_group() -> None:
    """Destroy the process group a multi-process run made, in every rank, once its command has succeeded.

    Lightning leaves it to the program. A gloo group still alive when the interpreter exits aborts the process
    about half the time ("terminate called without an active exception": its worker threads are torn down
    after Python; pytorch/pytorch#190489), and Lightning's launcher then kills every other rank. Only on
    success: with NCCL, destroying while another rank is stuck in a collective can hang.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launch_rank(trainer_cfg: DictConfig) -> int:
    devices = trainer_cfg.devices if isinstance(trainer_cfg.devices, int) else None
    return global_rank_from_env(os.environ, devices)


def describe(trainer: pl.Trainer) -> dict[str, object]:
    """What a reader of the run needs to know about how it was distributed."""
    strategy = trainer.strategy
    return {"world_size": trainer.world_size, "num_nodes": trainer.num_nodes,
            "devices_per_node": trainer.num_devices, "strategy": type(strategy).__name__,
            "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
            "process_group_backend": getattr(strategy, "process_group_backend", None) or "none",
            "precision": str(trainer.precision)}
