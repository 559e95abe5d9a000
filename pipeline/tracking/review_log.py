"""MLflow side of the review: the gallery of flagged samples in a scoring run, and verdicts written back.

In the run, the review lives in:
    images/flagged~<sample id>+...png     one image chart per flagged sample (`log_image` with a key),
                                          shown as a gallery in the run's Model metrics tab
    review/flagged_samples.json           the flagged-samples table, its `panel` column as images
                                          (`log_table`), shown with thumbnails in the Artifacts tab
    review/verdicts.json                  every verdict recorded by `python -m pipeline review`
    tags review.*                         status, counts, reviewer; metric review.flag_precision
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image

GALLERY_KEY = "flagged"
FLAGGED_TABLE = "review/flagged_samples.json"
VERDICTS_TABLE = "review/verdicts.json"


def _open_image(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def log_flagged(client: MlflowClient, run_id: str, table: pd.DataFrame, n_flagged: int) -> None:
    """Log every panel of `table` (FLAGGED_COLUMNS, with local panel_path) as the run's gallery and table."""
    for row in table.itertuples():
        client.log_image(run_id, _open_image(row.panel_path), key=f"{GALLERY_KEY}/{row.sample_id}", step=0,
                         synchronous=True)
    if not table.empty:
        data = table.drop(columns="panel_path")
        data.insert(1, "panel", [_open_image(p) for p in table["panel_path"]])
        client.log_table(run_id, data=data, artifact_file=FLAGGED_TABLE)
    client.set_tag(run_id, "review.status", "pending" if n_flagged else "nothing_flagged")
    client.set_tag(run_id, "review.n_flagged", str(n_flagged))
    client.set_tag(run_id, "review.n_panels", str(len(table)))


def load_flagged(client: MlflowClient, run_id: str, cache_dir: Path) -> pd.DataFrame:
    """The flagged-samples table of a scoring run, with `panel_path` pointing at downloaded panel files."""
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise LookupError(f"no MLflow run {run_id!r} in this tracking store") from err
    if run.data.tags.get("review.n_panels") == "0":
        return pd.DataFrame(columns=["sample_id", "image_path", "panel", "score", "p_value", "threshold",
                                     "defect_area", "review_status", "panel_path"])
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, FLAGGED_TABLE, str(cache_dir))
    except (MlflowException, OSError) as err:
        raise LookupError(f"run {run_id} has no {FLAGGED_TABLE}: not a scoring run of this product "
                          "(score or inspect runs log it)") from err
    table = pd.read_json(local, orient="split", dtype={"sample_id": str, "image_path": str})
    images = sorted({p["filepath"].rsplit("/", 1)[0] for p in table["panel"]})
    for folder in images:
        client.download_artifacts(run_id, folder, str(cache_dir))
    table["panel_path"] = [str(cache_dir / p["filepath"]) for p in table["panel"]]
    return table


def record_review(client: MlflowClient, run_id: str, table: pd.DataFrame, records: pd.DataFrame,
                  summary: dict, reviewer: str) -> None:
    """Write the updated flagged table (review_status), append the new verdicts, and set the review tags."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(FLAGGED_TABLE).name
        # Same JSON layout as log_table writes (the UI renders it as a table with image thumbnails);
        # written whole instead of through log_table because log_table would append the rows again.
        table.drop(columns="panel_path").to_json(path, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(path), artifact_path=str(Path(FLAGGED_TABLE).parent))
    if not records.empty:
        client.log_table(run_id, data=records, artifact_file=VERDICTS_TABLE)  # appends to earlier verdicts
    tags = {f"review.{k}": v for k, v in summary.items() if k != "flag_precision"}
    tags.update({"review.reviewer": reviewer, "review.updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "review.verdicts": json.dumps(dict(zip(table["sample_id"], table["review_status"])))[:5000]})
    if summary["flag_precision"] is not None:
        tags["review.flag_precision"] = f"{summary['flag_precision']:.4f}"
        client.log_metric(run_id, "review.flag_precision", float(summary["flag_precision"]))
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def reviewed_false_alarms(client: MlflowClient, experiment_name: str, data_root: str) -> pd.DataFrame:
    """Image paths (relative to data_root) that reviewers confirmed normal in any scoring run on data_root;
    columns image_path, run_id. The latest verdict per image and run counts."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame(columns=["image_path", "run_id"])
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`review.n_false_alarm` != '0'",
                              max_results=1000)
    found = []
    for run in runs:
        if run.data.tags.get("data_root") != data_root or "review.n_false_alarm" not in run.data.tags:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            verdicts = pd.read_json(client.download_artifacts(run.info.run_id, VERDICTS_TABLE, tmp), orient="split",
                                    dtype={"sample_id": str, "image_path": str})
        latest = verdicts.drop_duplicates("sample_id", keep="last")
        for path in latest.loc[latest["verdict"] == "false_alarm", "image_path"]:
            found.append({"image_path": path, "run_id": run.info.run_id})
    return pd.DataFrame(found, columns=["image_path", "run_id"])
