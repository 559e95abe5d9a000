"""One MLflow layout for every run that judged images: a `score` run and an inspection batch alike.

Logged from the output folder on disk (so an inspection batch committed while MLflow was down is logged
later, unchanged, from the outbox). In the run:

    description (the run page's Description)  model name, version and alias it had when used, the training
                                               run, the threshold and its guarantee, counts, drift / cannot-flag
    tags        stage, model_*, detection.status (ok | unable_to_flag | drift), review.status (pending |
                nothing_flagged | blocked), review.reason
    inputs      the model version's LoggedModel (the run page's "Logged models")
    params      the decision: score, alpha, threshold, control, n_calibration
    metrics     counts, rates, throughput; with labels every metric, per defect type as '<type>.<metric>'
    artifacts   scores.csv, errors.csv, summary.json, figures/, review/ (panels/, thumbnails/, records.json,
                index.html: the review page)
    images      one thumbnail per reviewed image under '<status>/<rank>_<sample id>' (flagged/001_test_hole_004):
                the Model metrics gallery, sorted by score
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow.entities import LoggedModelInput
from omegaconf import DictConfig
from PIL import Image

from pipeline.report.review_page import status_of, summary_lines
from pipeline.report.review_set import AUDIT, FLAGGED, RECORDS
from pipeline.tracking.runs import start_run
from pipeline.tracking.store import experiment_id, open_store, redact_uri, tracking_uri

SUMMARY = "summary.json"
GALLERY_PREFIX = {FLAGGED: "flagged", AUDIT: "audit"}  # anything else: 'not_flagged'


def describe(summary: dict, kind: str) -> str:
    """The run's Description (markdown): the review page's summary, and how to record a verdict."""
    title, lines = summary_lines(summary, kind)
    status, reason = status_of(summary)
    head = f"## {title}" + ("" if status == "ok" else f" — **{status.replace('_', ' ').upper()}**")
    problem = [f"**{status.replace('_', ' ')}**: {reason}", ""] if reason else []
    return "\n".join([head, "", *problem, *(f"- {line}" for line in lines), "",
                      "Review: open `review/index.html` in Artifacts; record a verdict with a tag "
                      "`verdict.<sample id>` = `true_defect` | `false_alarm` | `unsure` on this run, or with "
                      "`python -m pipeline review <run id> review.set=[<sample id>:<verdict>]`."])


def _numeric(values: dict) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            out[key] = float(value)
    return out


def log_detection_run(cfg: DictConfig, kind: str, folder: Path, summary: dict, records: list | None = None,
                      where: str = "") -> str:
    """One run for the judged images in `folder` (kind: score | inspect); returns its id."""
    status, reason = status_of(summary)
    n_flagged = int(summary.get("n_flagged", 0))
    review = "blocked" if status != "ok" else "pending" if n_flagged else "nothing_flagged"
    tags = {"stage": kind, "detection.status": status, "review.status": review, "dataset": cfg.data.name,
            "data_root" if kind == "score" else "inbox": where, "tracking_uri": redact_uri(tracking_uri(cfg)),
            "mlflow.note.content": describe(summary, kind)}
    if reason:
        tags["review.reason"] = reason[:5000]
    for key in ("model_source", "model_name", "model_version", "model_alias", "model_aliases", "model_run_id",
                "weights_sha256", "batch_id", "model_from_cache"):
        if summary.get(key):
            tags[key] = str(summary[key]).lower() if isinstance(summary[key], bool) else str(summary[key])
    name = f"{kind}-{summary.get('batch_id') or cfg.data.name}" + ("" if status == "ok" else f" [{status.upper()}]")
    experiment = cfg.tracking.score_experiment if kind == "score" else cfg.inspect.experiment
    client, run_id = start_run(cfg, experiment, name, tags)
    try:
        if summary.get("model_id"):
            client.log_inputs(run_id, models=[LoggedModelInput(summary["model_id"])])
        for key in ("score", "alpha", "threshold", "false_alarm_control", "n_calibration", "map"):
            if key in summary:
                client.log_param(run_id, key, str(summary[key]))
        metrics = _numeric(summary)
        for defect_type, entry in (summary.get("per_defect_type") or {}).items():
            metrics.update({f"{defect_type}.{k}": v for k, v in _numeric(entry).items()})
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        for name in ("scores.csv", "errors.csv", "metrics.json", SUMMARY):
            if (folder / name).is_file():
                client.log_artifact(run_id, str(folder / name))
        for sub in ("figures", "review"):
            if (folder / sub).is_dir():
                client.log_artifacts(run_id, str(folder / sub), artifact_path=sub)
        for record in _records(folder, records):
            prefix = GALLERY_PREFIX.get(record["status"], "not_flagged")
            with Image.open(folder / record["thumbnail_file"]) as thumbnail:
                client.log_image(run_id, thumbnail.convert("RGB"), key=f"{prefix}/{record['key']}", synchronous=True)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def _records(folder: Path, records: list | None) -> list[dict]:
    if records is not None:
        return [r.as_row() if hasattr(r, "as_row") else r for r in records]
    path = folder / RECORDS
    return json.loads(path.read_text()) if path.is_file() else []


def find_run(client, cfg: DictConfig, batch_id: str) -> str | None:
    """The finished run of an inspection batch, if logged already (logging is idempotent per batch)."""
    exp = experiment_id(client, cfg, cfg.inspect.experiment)
    for run in client.search_runs([exp], filter_string=f"tags.batch_id = '{batch_id}'"):
        if run.info.status == "FINISHED":
            return run.info.run_id
        client.delete_run(run.info.run_id)  # an attempt cut short: start over so nothing is doubled
    return None


def log_evaluation(cfg: DictConfig, run_id: str, folder: Path, metrics: dict) -> None:
    """Add a re-evaluation's metrics and figures to an existing scoring run."""
    client = open_store(cfg)
    values = _numeric(metrics)
    for defect_type, entry in (metrics.get("per_defect_type") or {}).items():
        values.update({f"{defect_type}.{k}": v for k, v in _numeric(entry).items()})
    for key, value in values.items():
        client.log_metric(run_id, key, value)
    if (folder / "figures").is_dir():
        client.log_artifacts(run_id, str(folder / "figures"), artifact_path="figures")
