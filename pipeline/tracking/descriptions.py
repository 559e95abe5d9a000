"""What the MLflow UI shows as text: the Description (markdown) of a scoring run or inspection batch and of a
model version, with links between them, and a saved run-list view with the status columns.

Links are the UI's own routes, relative to the page (`#/experiments/<id>/runs/<run id>?workflowType=...`,
tracking/links.py), so they work whatever host and port serve the UI, and open the "Model training" view.
MLflow 3.17's run page lists under "Logged models" only models of the run's own experiment, so a scoring run's
input model (from the training experiment) is not shown there although it is recorded (`client.log_inputs`):
the description links it instead.
"""

from __future__ import annotations

import json
import math

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.report.review_page import (CONSEQUENCE, STATUS_TITLE, alias_when_used, check_lines, detection_lines,
                                         status_of)
from pipeline.tracking.links import model_version_route, run_route, runs_route

REVIEW_VIEW = "review"  # a run-list view stored in the experiment (the UI's "shared view"), opened by a link
VIEW_TAG = "mlflow.sharedViewState."  # the experiment tag the UI reads for ?viewStateShareKey=<name>
REVIEW_COLUMNS = ["tags.`detection.status`", "tags.`review.status`", "metrics.`n_flagged`", "metrics.`n_images`",
                  "tags.`model_version`", "tags.`review.reason`"]


def run_link(experiment_id: str | None, run_id: str, text: str | None = None) -> str:
    if not experiment_id:
        return f"`{run_id}`"
    return f"[{text or run_id}]({run_route(experiment_id, run_id)})"


def version_link(name: str, version: str) -> str:
    return f"[{name} version {version}]({model_version_route(name, version)})"


def runs_link(experiment_id: str, text: str, filter_string: str = "", view: str = "") -> str:
    return f"[{text}]({runs_route(experiment_id, filter_string, view)})"


def experiment_of(client: MlflowClient, run_id: str | None) -> str | None:
    """The experiment id of a run, None when there is no such run here."""
    if not run_id:
        return None
    try:
        return client.get_run(run_id).info.experiment_id
    except MlflowException:
        return None


def save_review_view(client: MlflowClient, experiment_id: str) -> str:
    """Store the run-list view with the status columns in the experiment; returns a markdown link to it.
    MLflow keeps the columns a user picks in the browser's local storage, with no server-side default; a
    shared view is what it offers to hand a column choice over."""
    state = {"selectedColumns": REVIEW_COLUMNS, "orderByKey": "attributes.start_time", "orderByAsc": False,
             "columnWidths": {"tags.`detection.status`": 150, "tags.`review.status`": 130}}
    client.set_experiment_tag(experiment_id, VIEW_TAG + REVIEW_VIEW, json.dumps(state))
    return runs_link(experiment_id, "the run list with the status columns", view=REVIEW_VIEW)


def _number(value, digits: int = 4) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf (cannot flag)"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def detection_description(client: MlflowClient, summary: dict, kind: str, run_list: str) -> str:
    """The Description of a scoring run or inspection batch: model, training run, threshold and guarantee,
    counts, and any cannot-flag or drift condition, first."""
    status, reason = status_of(summary)
    n_images = summary.get("n_images", summary.get("n_scored", 0))
    title = f"## {kind}: {summary.get('n_flagged', 0)} of {n_images} images flagged"
    lines = [title + ("" if status == "ok" else f" — **{STATUS_TITLE[status]}**"), ""]
    if reason:
        lines += [f"**{STATUS_TITLE[status]}**: {reason}. {CONSEQUENCE[status]}", ""]
    name, version = summary.get("model_name"), summary.get("model_version")
    model = version_link(name, str(version)) if name and version else f"`{summary.get('model_source')}`"
    training = summary.get("model_run_id")
    trained = run_link(experiment_of(client, training), training, f"training run {training}") if training else "unknown"
    n_cal = summary.get("n_calibration")
    statement = (summary.get("guarantee_statement")
                 or f"at most alpha = {summary.get('alpha')} of new normal images flagged")
    lines += [f"- **{line.split(':', 1)[0]}**:{line.split(':', 1)[1]}" for line in detection_lines(summary)]
    lines += [f"- **model**: {model}, alias when used: **{alias_when_used(summary)}**; trained by {trained}"
              + (f"; logged model `{summary['model_id']}`" if summary.get("model_id") else ""),
              f"- **threshold**: {_number(summary.get('threshold', float('nan')))} on score `{summary.get('score')}`, "
              f"{summary.get('false_alarm_control')}",
              f"- **guarantee**: {statement} ({summary.get('guarantee')}; {n_cal} calibration images)",
              f"- **counts**: {n_images} images judged, {summary.get('n_flagged', 0)} flagged, "
              f"{summary.get('n_errors', 0)} unreadable" + (f", {summary['n_seen']} seen" if "n_seen" in summary else "")]
    for line in check_lines(summary):
        name, _, rest = line.partition(": ")
        lines.append(f"- **{name}**: {rest}")
    lines += ["", "**Review**: open `review/index.html` in Artifacts (every panel at full size, by score). Record a "
              "verdict here: Tags, edit, add `verdict.<sample id>` = `true_defect` | `false_alarm` | `unsure` "
              "(`python -m pipeline review <run id>` reads them). Only verdicts on the random audit sample feed "
              f"`calibrate`. All runs: {run_list}."]
    return "\n".join(lines)


def _shares(sizes: dict, n_calibration: int) -> str:
    if sizes.get("n_members", 1) > 1:
        return (f"{sizes['n_members']} cross-conformal detectors, each {sizes['n_train']} training and "
                f"{sizes['n_selection']} selection images; all {n_calibration} normal images calibrate")
    return f"{sizes['n_train']} training, {sizes['n_selection']} selection, {n_calibration} calibration images"


def version_description(summary: dict, run_id: str, train_experiment: str,
                        judged_in: dict[str, str], name: str | None, version: str | None) -> str:
    """A model version's Description: how its threshold was calibrated, its training run, and links to the
    runs that judged images with it (judged_in: {'scoring runs': experiment id, ...})."""
    g = summary["guarantee"]
    status = "" if g["can_flag"] else f"\n\n**Cannot flag at alpha = {g['alpha']:g}**: {summary['shortfall']}"
    text = (f"Trained by {run_link(train_experiment, run_id, f'run {run_id}')} on `{summary['data_root']}`: "
            f"{_shares(summary['sizes'], g['n_calibration'])}.\n\n"
            f"**Threshold**: {summary['threshold']:.6g} on decision score `{summary['score']}`, calibrated by "
            f"{g['method']} at alpha = {g['alpha']:g}: {g.get('promise', 'at most alpha of new normal images flagged')} "
            f"(images exchangeable with the {g['n_calibration']} held-out normal calibration images).{status}")
    if name and version:
        query = f"tags.model_name = '{name}' and tags.model_version = '{version}'"
        links = " · ".join(runs_link(exp, what, query) for what, exp in judged_in.items())
        text += f"\n\nRuns that judged images with this version: {links}."
    return text
