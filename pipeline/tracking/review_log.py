"""MLflow side of the review: the reviewed images of a run (score run or inspection batch alike), and the
verdicts recorded on it.

A verdict is a run tag `verdict.<sample id>` = true_defect | false_alarm | unsure, set by `python -m pipeline
review` or by a reviewer in the MLflow UI (the run page's Tags: add tag); the tags are the verdicts. The
command also appends who recorded what and when to `review/verdicts.json`, and keeps the summary tags
`review.status`, `review.n_<verdict>`, `review.n_pending` and the metric `review.flag_precision` up to date.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.report.review_set import RECORDS
from pipeline.review import verdicts as V

VERDICTS_TABLE = "review/verdicts.json"
VERDICT_TAG = "verdict."


def get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        raise LookupError(f"no MLflow run {run_id!r} in this tracking store") from err


def load_records(client: MlflowClient, run_id: str, cache_dir: Path) -> pd.DataFrame:
    """The run's review records, `panel_path` pointing at downloaded panels, `review_status` from its verdict tags."""
    run = get_run(client, run_id)
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, RECORDS, str(cache_dir))
    except (MlflowException, OSError) as err:
        raise LookupError(f"run {run_id} has no {RECORDS}: not a scoring run or inspection batch of this product") from err
    table = pd.DataFrame(json.loads(Path(local).read_text()))
    if table.empty:
        return table.assign(panel_path=[], review_status=[])
    client.download_artifacts(run_id, "review/panels", str(cache_dir))
    table["panel_path"] = [str(cache_dir / p) for p in table["panel_file"]]
    tagged = verdict_tags(run.data.tags)
    table["review_status"] = [tagged.get(i, V.PENDING) for i in table["sample_id"]]
    return table


def verdict_tags(tags: dict[str, str]) -> dict[str, str]:
    """{sample id: verdict} from a run's `verdict.<sample id>` tags; a tag that is not a verdict is an error."""
    return {key[len(VERDICT_TAG):]: V.parse_verdict(value, f"tag {key}") for key, value in tags.items()
            if key.startswith(VERDICT_TAG)}


def record_review(client: MlflowClient, run_id: str, table: pd.DataFrame, records: pd.DataFrame, summary: dict,
                  reviewer: str) -> None:
    """Set the verdict tags of the new verdicts, append them to review/verdicts.json, update the summary tags."""
    for row in records.itertuples():
        client.set_tag(run_id, f"{VERDICT_TAG}{row.sample_id}", row.verdict)
    if not records.empty:
        client.log_table(run_id, data=records, artifact_file=VERDICTS_TABLE)  # appends to earlier verdicts
    set_summary(client, run_id, summary, reviewer)


def set_summary(client: MlflowClient, run_id: str, summary: dict, reviewer: str | None = None) -> None:
    tags = {f"review.{k}": v for k, v in summary.items() if k not in ("flag_precision", "status")}
    if get_run(client, run_id).data.tags.get("review.status") != "blocked":  # a blocked run stays blocked
        tags["review.status"] = summary["status"]
    tags["review.updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if reviewer:
        tags["review.reviewer"] = reviewer
    if summary["flag_precision"] is not None:
        tags["review.flag_precision"] = f"{summary['flag_precision']:.4f}"
        client.log_metric(run_id, "review.flag_precision", float(summary["flag_precision"]))
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def newest_run_with_flags(client: MlflowClient, experiment_ids: list[str]) -> str:
    """The newest finished run (scoring run or inspection batch) that flagged something."""
    runs = client.search_runs(experiment_ids, filter_string="attributes.status = 'FINISHED' and metrics.n_flagged > 0",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise LookupError("no scoring run or inspection batch has flagged anything yet: nothing to review "
                          "(pass a run id: python -m pipeline review <run id>)")
    return runs[0].info.run_id


def audited_normal_images(client: MlflowClient, experiment_ids: list[str], model_name: str) -> tuple[pd.DataFrame, int]:
    """(images of the *audit sample* that reviewers confirmed normal (verdict false_alarm) in every run judged by a
    version of `model_name`: columns image_path, where (the data root or inbox it is relative to), run_id, flagged;
    the number of other confirmed-normal images, flagged ones outside the audit sample, which are not used).
    Audit images are a random sample of everything judged, so these are exchangeable with new normal images."""
    runs = client.search_runs(experiment_ids, filter_string=f"tags.model_name = '{model_name}'", max_results=5000)
    found, ignored = [], 0
    for run in runs:
        tagged = verdict_tags(run.data.tags)
        if not any(v == V.FALSE_ALARM for v in tagged.values()):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            records = json.loads(Path(client.download_artifacts(run.info.run_id, RECORDS, tmp)).read_text())
        where = run.data.tags.get("data_root") or run.data.tags.get("inbox", "")
        for record in records:
            if tagged.get(record["sample_id"]) != V.FALSE_ALARM:
                continue
            if not record["audit"]:
                ignored += 1
                continue
            found.append({"image_path": record["image_path"], "where": where, "run_id": run.info.run_id,
                          "flagged": record["status"] == "FLAGGED"})
    return pd.DataFrame(found, columns=["image_path", "where", "run_id", "flagged"]), ignored
