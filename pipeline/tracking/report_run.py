"""MLflow side of the latent-space report: figures into the training run under `latent/`."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from pipeline.tracking.store import open_store


def log_latent_report(cfg: DictConfig, run_id: str, report_dir: Path, summary: dict) -> None:
    """Upload the report folder (figures, GIF, latent_summary.json) and the active-dimension counts."""
    client = open_store(cfg)
    client.log_artifacts(run_id, str(report_dir), artifact_path="latent")
    for key in ("active_dims", "collapsed_dims", "n_flagged"):
        if summary.get(key) is not None:
            client.log_metric(run_id, f"latent.{key}", float(summary[key]))
    client.set_tag(run_id, "latent.projection", summary["projection"])
