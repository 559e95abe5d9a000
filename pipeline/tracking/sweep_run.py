"""MLflow side of a sweep: one summary run in the sweep experiment; every grid point's training run
is nested under it (mlflow.parentRunId) and gets its test AUROCs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pipeline.tracking.runs import start_run
from pipeline.tracking.store import open_store


def start_summary_run(cfg: DictConfig, points: list[list[str]]) -> str:
    client, run_id = start_run(cfg, cfg.sweep.experiment, f"sweep-{cfg.data.name}",
                               {"stage": "sweep", "dataset": cfg.data.name, "data_root": str(cfg.data.root)})
    client.log_param(run_id, "grid", " | ".join(" ".join(p) for p in points)[:6000])
    client.log_param(run_id, "n_points", str(len(points)))
    return run_id


def log_sweep_point(cfg: DictConfig, run_id: str, parent_run_id: str, aurocs: dict[str, float]) -> None:
    client = open_store(cfg)
    client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)  # nests the run under the summary in the UI
    for name, value in aurocs.items():
        client.log_metric(run_id, f"test_auroc.{name}", value)


def finish_summary_run(cfg: DictConfig, run_id: str, out_dir: Path, frame: pd.DataFrame) -> None:
    client = open_store(cfg)
    client.log_artifact(run_id, str(out_dir / "sweep.csv"))
    client.log_artifact(run_id, str(out_dir / "sweep_auroc.png"))
    if frame["auroc"].notna().any():
        best = frame.loc[frame["auroc"].idxmax()]
        client.log_metric(run_id, "best_auroc", float(best["auroc"]))
        for key in ("beta", "latent_dim", "run_id"):
            client.set_tag(run_id, f"best.{key}", str(best[key]))
    client.set_terminated(run_id, "FINISHED")
