"""`python -m pipeline report`: the latent-space report of a detector (`detector`, default: the newest),
written to report.output_dir and logged into the detector's training run when it is known."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from pipeline.commands.common import load_detector
from pipeline.data.builtin import ensure_dataset
from pipeline.data.conditional import build_datamodule
from pipeline.report.latent_report import write_report
from pipeline.tracking.registry import RUN_ID
from pipeline.tracking.report_run import log_latent_report


def run_report(cfg: DictConfig) -> dict:
    root = ensure_dataset(cfg.data, cfg.seed)
    detector, provenance = load_detector(cfg, "latest", str(root), judges=False)
    datamodule = build_datamodule(cfg, root)  # same seed and split settings -> the same selection images
    datamodule.setup("fit")
    out_dir = Path(cfg.report.output_dir).expanduser().resolve()
    summary = write_report(cfg, detector, datamodule, root, out_dir)
    run_id = str(provenance.get("model_run_id") or "")
    if cfg.tracking.enabled and RUN_ID.fullmatch(run_id):
        log_latent_report(cfg, run_id, out_dir, summary)
        summary["logged_to_run"] = run_id
    return summary
