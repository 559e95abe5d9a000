"""One MLflow layout for every run that judged images: a `score` run and an inspection batch alike.

Logged from the output folder on disk (so an inspection batch committed while MLflow was down is logged
later, unchanged, from the outbox). In the run:

    name        'score-<dataset>' or the batch id; '[UNABLE_TO_FLAG] <...>', '[PROMISE_BROKEN] <...>' or
                '[DRIFT] <...>' (run_name)
    description the run page's Description (tracking/descriptions.py): model version (linked), the alias it
                had when used, the training run (linked), threshold and guarantee, counts, the promise and drift
                checks / cannot-flag
    tags        stage, model_*, decision.* (score, alpha, threshold, control, n_calibration, map),
                detection.status (ok | unable_to_flag | promise_broken | drift), review.status (pending |
                nothing_flagged | blocked), review.reason; verdicts are tags too: verdict.<sample id> (review/loop.py)
    inputs      the model version's LoggedModel
    metrics     counts, rates, throughput; with labels every metric, per defect type as '<type>.<metric>'
    artifacts   scores.csv, errors.csv, metrics.json / summary.json, figures/, review/panels/ (one panel per
                reviewed image, '<rank>_<sample id>.png'), review/records.json, review/index.html (the review
                page, with this run's id in its commands)
    images      the gallery (tracking/gallery.py): one card per reviewed image under '<section>/<rank>_<sample
                id>' (flagged/001_test_hole_004), the card-sized thumbnail on the card, the panel on click

No params: MLflow prints every param of the run under every gallery image, so the decision is in tags.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from mlflow.entities import LoggedModelInput
from omegaconf import DictConfig

from pipeline.report.review_page import status_of, write_review_page
from pipeline.scoring.evaluate import detection_metric_names
from pipeline.report.review_set import AUDIT, FLAGGED, NOT_FLAGGED, PANEL_DIR, RECORDS, ReviewRecord
from pipeline.tracking.descriptions import detection_description, save_review_view
from pipeline.tracking.gallery import IMAGES_DIR, mark_run_has_images, write_gallery_card
from pipeline.tracking.links import experiment_route, run_route, url
from pipeline.tracking.runs import log_metrics, start_run
from pipeline.tracking.store import experiment_id, open_store, redact_uri, tracking_uri

SUMMARY = "summary.json"
# Gallery sections, named so that MLflow (which sorts sections by name) shows the flags first.
GALLERY_SECTION = {FLAGGED: "flagged", NOT_FLAGGED: "not_flagged", AUDIT: "random_audit"}
DECISION_KEYS = ("score", "alpha", "threshold", "false_alarm_control", "n_calibration", "map")


def _numeric(values: dict) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            out[key] = float(value)
    return out


def run_name(kind: str, summary: dict, dataset: str) -> str:
    """'score-<dataset>' or the batch id; with a status, '[UNABLE_TO_FLAG] ' or '[DRIFT] ' first (the run list
    shows about 20 characters of a name) and then only the batch id's random suffix: the gallery writes the
    name above every image and widens the image's box to it, so a name wider than about 210 px (some 26
    characters) pushes the image out of its card (tracking/gallery.py)."""
    status, _ = status_of(summary)
    batch = summary.get("batch_id")
    if status == "ok":
        return batch or f"{kind}-{dataset}"
    return f"[{status.upper()}] " + (batch.rsplit("-", 1)[-1] if batch else f"{kind}-{dataset}")


def log_detection_run(cfg: DictConfig, kind: str, folder: Path, summary: dict, records: list | None = None,
                      where: str = "") -> str:
    """One run for the judged images in `folder` (kind: score | inspect); returns its id."""
    status, reason = status_of(summary)
    n_flagged = int(summary.get("n_flagged", 0))
    review = "blocked" if status != "ok" else "pending" if n_flagged else "nothing_flagged"
    tags = {"stage": kind, "detection.status": status, "review.status": review, "dataset": cfg.data.name,
            "data_root" if kind == "score" else "inbox": where, "tracking_uri": redact_uri(tracking_uri(cfg))}
    if reason:
        tags["review.reason"] = reason[:5000]
    for key in ("model_source", "model_name", "model_version", "model_alias", "model_aliases", "model_run_id",
                "weights_sha256", "batch_id", "model_from_cache"):
        if summary.get(key):
            tags[key] = str(summary[key]).lower() if isinstance(summary[key], bool) else str(summary[key])
    tags.update({f"decision.{key}": str(summary[key]) for key in DECISION_KEYS if key in summary})
    experiment = _experiment(cfg, kind)
    client, run_id = start_run(cfg, experiment, run_name(kind, summary, cfg.data.name), tags)
    try:
        experiment_ref = experiment_id(client, cfg, experiment)
        run_list = save_review_view(client, experiment_ref)
        client.set_tag(run_id, "mlflow.note.content", detection_description(client, summary, kind, run_list))
        if summary.get("model_id"):
            client.log_inputs(run_id, models=[LoggedModelInput(summary["model_id"])])
        log_metrics(client, run_id, _flat_metrics(summary))
        for name in ("scores.csv", "errors.csv", "metrics.json", SUMMARY):
            if (folder / name).is_file():
                client.log_artifact(run_id, str(folder / name))
        if (folder / "figures").is_dir():
            client.log_artifacts(run_id, str(folder / "figures"), artifact_path="figures")
        _log_review(client, run_id, folder, {**summary, **_urls(cfg, experiment_ref, run_id)}, kind,
                    _records(folder, records))
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def _flat_metrics(metrics: dict) -> dict[str, float]:
    """An evaluation's numbers under their MLflow names: the detection rates, the numeric fields, and each defect
    type's as '<type>.<name>'."""
    values = {**detection_metric_names(metrics.get("detection_at_alpha")), **_numeric(metrics)}
    for defect_type, entry in (metrics.get("per_defect_type") or {}).items():
        values.update({f"{defect_type}.{k}": v for k, v in _numeric(entry).items()})
    return values


def _experiment(cfg: DictConfig, kind: str) -> str:
    return cfg.tracking.score_experiment if kind == "score" else cfg.inspect.experiment


def _urls(cfg: DictConfig, experiment: str, run_id: str) -> dict[str, str]:
    return {"mlflow_run": url(cfg, run_route(experiment, run_id)),
            "mlflow_experiment": url(cfg, experiment_route(experiment))}


def detection_urls(cfg: DictConfig, kind: str, run_id: str) -> dict[str, str]:
    """{'mlflow_run': the run's page, 'mlflow_experiment': its experiment's runs} in the MLflow UI, "Model training"
    view (tracking/links.py): what the commands print."""
    client = open_store(cfg)
    return _urls(cfg, experiment_id(client, cfg, _experiment(cfg, kind)), run_id)


def _log_review(client, run_id: str, folder: Path, summary: dict, kind: str, records: list[ReviewRecord]) -> None:
    """review/ (panels, records, the page rendered with this run's id) and the gallery. The thumbnails stay in
    the output folder: in MLflow they are the gallery's card images."""
    if (folder / PANEL_DIR).is_dir():
        client.log_artifacts(run_id, str(folder / PANEL_DIR), artifact_path=PANEL_DIR)
    if (folder / RECORDS).is_file():
        client.log_artifact(run_id, str(folder / RECORDS), artifact_path=str(Path(RECORDS).parent))
    with tempfile.TemporaryDirectory() as tmp:
        page = write_review_page(folder, records, summary, kind, run_id, path=Path(tmp) / "index.html")
        client.log_artifact(run_id, str(page), artifact_path="review")
        cards = Path(tmp) / IMAGES_DIR
        cards.mkdir()
        for record in records:
            write_gallery_card(f"{GALLERY_SECTION.get(record.status, 'not_flagged')}/{record.key}", record.sample_id,
                               folder / record.panel_file, folder / record.thumbnail_file, cards)
        if records:
            client.log_artifacts(run_id, str(cards), artifact_path=IMAGES_DIR)
    if records:
        mark_run_has_images(client, run_id)


def _records(folder: Path, records: list | None) -> list[ReviewRecord]:
    if records is None:
        path = folder / RECORDS
        records = json.loads(path.read_text()) if path.is_file() else []
    return [r if isinstance(r, ReviewRecord) else ReviewRecord(**r) for r in records]


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
    log_metrics(client, run_id, _flat_metrics(metrics))
    if (folder / "figures").is_dir():
        client.log_artifacts(run_id, str(folder / "figures"), artifact_path="figures")
