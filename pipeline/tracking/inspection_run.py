"""MLflow side of inspection: one run per committed batch in the `inspection` experiment.

Everything logged comes from the batch folder on disk (summary.json, tables, panels), so a batch
committed while MLflow was down is logged later, unchanged, from the outbox. Logging is idempotent:
the run carries the tag batch_id, a FINISHED run for the batch is reused, and the remains of an
interrupted attempt are deleted before a fresh run is made (no duplicate runs, no doubled tables).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from PIL import Image

from pipeline.tracking.store import experiment_id, open_store, redact_uri, tracking_uri

log = logging.getLogger(__name__)

GALLERY_KEY = "flagged"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def log_inspection_batch(cfg: DictConfig, batch_dir: Path) -> str:
    """Log the batch in `batch_dir` as one run; returns the run id."""
    summary = json.loads((batch_dir / "summary.json").read_text())
    batch_id = summary["batch_id"]
    client = open_store(cfg)
    exp = experiment_id(client, cfg, cfg.inspect.experiment)
    for run in client.search_runs([exp], filter_string=f"tags.batch_id = '{batch_id}'"):
        if run.info.status == "FINISHED":
            return run.info.run_id
        client.delete_run(run.info.run_id)  # an attempt cut short: start over so nothing is doubled
    drift = summary["drift"]
    tags = {"stage": "inspect", "batch_id": batch_id, "model_version": summary["model_version"],
            "model_source": summary.get("model_source", ""), "control": summary["control"],
            "drift": str(bool(drift["drifted"])).lower(), "tracking_uri": redact_uri(tracking_uri(cfg)),
            "inbox": str(cfg.inspect.inbox), "weights_sha256": summary.get("weights_sha256", "")}
    if summary.get("model_from_cache"):
        tags["model_from_cache"] = "true"
    client_run = client.create_run(exp, run_name=f"inspect-{batch_id}", tags=tags)
    run_id = client_run.info.run_id
    try:
        params = {"control": summary["control"], "alpha": summary["alpha"], "fdr_q": summary["fdr_q"],
                  "threshold": summary["threshold"], "score": summary["score"], "model_version": summary["model_version"],
                  "n_calibration": summary["n_calibration"], "max_batch_images": cfg.inspect.max_batch_images}
        for key, value in params.items():
            client.log_param(run_id, key, str(value))
        metrics = {k: summary[k] for k in ("n_seen", "n_scored", "n_flagged", "n_errors", "seconds",
                                           "images_per_second", "scoring_images_per_second")}
        metrics.update({f"drift_{k}": drift.get(k) for k in ("ks_statistic", "p_value")})
        for key, value in metrics.items():
            if _finite(value):
                client.log_metric(run_id, key, float(value))
        for name in ("summary.json", "scores.csv", "errors.csv"):
            client.log_artifact(run_id, str(batch_dir / name))
        if summary["panels"]:
            client.log_artifacts(run_id, str(batch_dir / "panels"), artifact_path="panels")
            _log_gallery(client, run_id, batch_dir, summary, cfg.inspect.max_gallery)
        if drift["drifted"]:
            client.set_tag(run_id, "warning", f"score drift: KS p = {drift['p_value']:.2g} < {drift['drift_alpha']}")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def _log_gallery(client, run_id: str, batch_dir: Path, summary: dict, limit: int) -> None:
    """The flagged images for review: an image per step under key 'flagged' (the run page's image
    view with a step slider) and a table with a thumbnail column (flagged.json, the Evaluation view)."""
    scores = pd.read_csv(batch_dir / "scores.csv").set_index("image_path")
    rows = []
    for step, rel in enumerate(summary["panels"][:limit]):
        image_path = rel.removeprefix("panels/").removesuffix(".png")
        with Image.open(batch_dir / rel) as opened:
            panel = opened.convert("RGB")
        client.log_image(run_id, panel, key=GALLERY_KEY, step=step)
        row = scores.loc[image_path]
        rows.append({"image_path": image_path, "score": float(row["score"]), "p_value": float(row["p_value"]),
                     "q_value": None if pd.isna(row["q_value"]) else float(row["q_value"]), "panel": panel})
    if rows:
        client.log_table(run_id, data=pd.DataFrame(rows), artifact_file="flagged.json")
