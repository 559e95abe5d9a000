"""System metrics and the distributed setup of a training run, logged into an existing run by id.

MLflow's own `SystemMetricsMonitor` samples CPU, memory, disk, network and, when `nvidia-ml-py` finds
an NVIDIA driver, every GPU's utilization and memory; metrics appear as `system/...` (or
`system/node_<k>/...` in a multi-node job). We start it for a run id instead of through
`mlflow.start_run(log_system_metrics=True)` because the run belongs to Lightning's MLFlowLogger and a
fluent run here would be a second run.
"""

from __future__ import annotations

import logging

from mlflow.entities import Param
from omegaconf import DictConfig

from pipeline.tracking.store import tracking_uri

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
    from pipeline.tracking.store import open_store

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
