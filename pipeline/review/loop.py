"""The review loop over MLflow runs, for scoring runs and inspection batches alike.

A verdict is a run tag `verdict.<sample id>` = true_defect | false_alarm | unsure, set by `python -m pipeline
review` or by a reviewer in the MLflow UI (the run page's Tags: add tag): the tags *are* the verdicts. The
command also appends who recorded what and when to `review/verdicts.json`, and keeps the summary tags
`review.status`, `review.n_<verdict>`, `review.n_pending` and the metric `review.flag_precision` up to date.
`calibrate` takes from these only the images of the audit sample confirmed normal (report/review_set.py).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from pipeline.review import verdicts as V
from pipeline.tracking import review_log as R

log = logging.getLogger(__name__)
VERDICT_TAG = "verdict."


def verdict_tags(tags: dict[str, str]) -> dict[str, str]:
    """{sample id: verdict} from a run's `verdict.<sample id>` tags. A tag whose value is not a verdict (a typo
    in the UI) is left out with a warning that names it: it must neither pass as a verdict nor block the rest."""
    found = {}
    for key, value in tags.items():
        if key.startswith(VERDICT_TAG):
            try:
                found[key[len(VERDICT_TAG):]] = V.parse_verdict(value, f"tag {key}")
            except ValueError as err:
                log.warning("ignored: %s", err)
    return found


def load_review(client: MlflowClient, run_id: str, cache_dir: Path) -> pd.DataFrame:
    """The run's review records with `panel_path` (downloaded) and `review_status` from its verdict tags."""
    table = pd.DataFrame(R.download_records(client, run_id, cache_dir))
    if table.empty:
        return pd.DataFrame(columns=["key", "sample_id", "status", "image_path", "score", "p_value", "defect_area",
                                     "review_status", "panel_path"])
    tagged = verdict_tags(R.get_run(client, run_id).data.tags)
    unknown = sorted(set(tagged) - set(table["sample_id"]))
    if unknown:  # a mistyped id in the UI: say so, or the verdict would silently count for nothing
        log.warning("ignored: tag(s) %s name no image shown for review in run %s (its sample ids are in "
                    "review/index.html)", ", ".join(f"{VERDICT_TAG}{i}" for i in unknown), run_id)
    table["review_status"] = [tagged.get(i, V.PENDING) for i in table["sample_id"]]
    return table


def summary_tags(client: MlflowClient, run_id: str, summary: dict, reviewer: str | None = None) -> dict[str, str]:
    """The review.* tags for a summary; a blocked run (unable to flag, drift) keeps its status."""
    tags = {f"review.{k}": str(v) for k, v in summary.items() if k not in ("flag_precision", "status")}
    if R.get_run(client, run_id).data.tags.get("review.status") != "blocked":
        tags["review.status"] = summary["status"]
    tags["review.updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if reviewer:
        tags["review.reviewer"] = reviewer
    if summary["flag_precision"] is not None:
        tags["review.flag_precision"] = f"{summary['flag_precision']:.4f}"
    return tags


def record_review(client: MlflowClient, run_id: str, verdicts: pd.DataFrame, summary: dict,
                  reviewer: str | None = None) -> None:
    """Set the new verdicts' tags, append them to the history, update the summary tags and metric."""
    tags = {f"{VERDICT_TAG}{row.sample_id}": row.verdict for row in verdicts.itertuples()}
    R.set_tags(client, run_id, {**tags, **summary_tags(client, run_id, summary, reviewer)})
    R.append_verdicts(client, run_id, verdicts)
    if summary["flag_precision"] is not None:
        client.log_metric(run_id, "review.flag_precision", float(summary["flag_precision"]))


def audited_normal_images(client: MlflowClient, experiment_ids: list[str], model_name: str) -> tuple[pd.DataFrame, int]:
    """(images of the *audit sample* reviewers confirmed normal (verdict false_alarm) in every run judged by a
    version of `model_name`: columns image_path, where (the data root or inbox it is relative to), run_id,
    flagged; the number of other confirmed-normal images, flagged ones outside the audit sample, never used).
    Audit images are a random sample of everything judged, so these are exchangeable with new normal images."""
    found, ignored = [], 0
    for run in R.runs_of_model(client, experiment_ids, model_name):
        tagged = verdict_tags(run.data.tags)
        if V.FALSE_ALARM not in tagged.values():
            continue
        where = run.data.tags.get("data_root") or run.data.tags.get("inbox", "")
        for record in R.download_records(client, run.info.run_id):
            if tagged.get(record["sample_id"]) != V.FALSE_ALARM:
                continue
            if not record["audit"]:
                ignored += 1
                continue
            found.append({"image_path": record["image_path"], "where": where, "run_id": run.info.run_id,
                          "flagged": record["status"] == "FLAGGED"})
    return pd.DataFrame(found, columns=["image_path", "where", "run_id", "flagged"]), ignored
