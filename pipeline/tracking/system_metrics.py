"""System metrics and the distributed setup of a training run, logged into an existing run by id.

MLflow's own `SystemMetricsMonitor` samples CPU, memory, disk, network and, when `nvidia-ml-py` finds
an NVIDIA driver, every GPU's utilization and memory; metrics appear as `system/...` (or
`system/node_<k>/...` in a multi-node job). We start it for a run id instead of through
`mlflow.start_run(log_system_metrics=True)` because the run belongs to Lightning's MLFlowLogger and a
fluent run here would be a second run.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from mlflow.entities import Param
from omegaconf import DictConfig

from pipeline.tracking.store import open_store, tracking_uri
from pipeline.training.distributed import describe

log = logging.getLogger(__name__)


def start_monitor(cfg: DictConfig, run_id: str, node_id: str | None = None):
    """A started monitor sampling every `tracking.system_metrics_interval` seconds, or None if it cannot
    run here (psutil missing): system metrics are worth a warning, never a failed training."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # needs psutil

        monitor = SystemMetricsMonitor(run_id, sampling_interval=float(cfg.tracking.system_metrics_interval),
                                       node_id=node_id, tracking_uri=tracking_uri(cfg))
    except ImportError as err:
        log.warning("no system metrics for run %s: %s", run_id, err)
        return None
    monitor.start()
    return monitor


def log_distributed_setup(cfg: DictConfig, run_id: str, setup: dict[str, object]) -> None:
    """`distributed.world_size`, `.num_nodes`, `.devices_per_node`, `.strategy`, ... as run parameters."""
    client = open_store(cfg)
    client.log_batch(run_id, params=[Param(f"distributed.{k}", str(v)) for k, v in setup.items()])
    client.set_tag(run_id, "world_size", str(setup["world_size"]))


def stop_monitor(monitor) -> None:
    """Stop sampling. A job shorter than one sampling interval would otherwise leave no system metrics
    at all (the monitor only logs after a full interval), so it then logs one sample taken now."""
    monitor.finish()
    if monitor._logging_step == 0:  # nothing was published while it ran
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as err:  # noqa: BLE001 - system metrics must never fail a training run
            log.warning("could not log the final system-metrics sample: %s", err)


class DistributedRunInfo(pl.Callback):
    """Records world size, devices, strategy and precision in the training run, and runs MLflow's
    system-metrics monitor on the first process of every machine for the duration of `fit`.

    Every rank must have this callback: the run id is broadcast from rank 0 (a collective), since the
    logger on ranks > 0 has none. The monitor logs into the existing run and never creates one.
    """

    def __init__(self, cfg: DictConfig, run_id: str | None):
        self.cfg = cfg
        self.run_id = run_id
        self._monitor = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        run_id = trainer.strategy.broadcast(self.run_id if trainer.is_global_zero else None, src=0)
        if run_id is None:  # tracking disabled
            return
        if trainer.is_global_zero:
            log_distributed_setup(self.cfg, run_id, describe(trainer))
        if trainer.local_rank == 0 and self.cfg.tracking.get("system_metrics", False):
            node_id = f"node_{trainer.node_rank}" if trainer.num_nodes > 1 else None
            self._monitor = start_monitor(self.cfg, run_id, node_id)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._monitor is not None:
            stop_monitor(self._monitor)
            self._monitor = None
