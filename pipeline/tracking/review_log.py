"""MLflow side of the review, plain reads and writes: a run's review records and panels, its tags, the verdict
history table. What the tags mean (verdicts, the review summary) is pipeline/review/'s concern."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.report.review_set import PANEL_DIR, RECORDS

VERDICTS_TABLE = "review/verdicts.json"


def get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        raise LookupError(f"no MLflow run {run_id!r} in this tracking store") from err


def download_records(client: MlflowClient, run_id: str, cache_dir: Path | None = None) -> list[dict]:
    """The run's review records (review/records.json); with `cache_dir`, its panels are downloaded there too and
    each record gets `panel_path`."""
    get_run(client, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        target = cache_dir or Path(tmp)
        target.mkdir(parents=True, exist_ok=True)
        try:
            records = json.loads(Path(client.download_artifacts(run_id, RECORDS, str(target))).read_text())
        except (MlflowException, OSError) as err:
            raise LookupError(f"run {run_id} has no {RECORDS}: not a scoring run or inspection batch of this "
                              "product") from err
        if cache_dir is not None and records:
            client.download_artifacts(run_id, PANEL_DIR, str(cache_dir))
            for record in records:
                record["panel_path"] = str(cache_dir / record["panel_file"])
    return records


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def append_verdicts(client: MlflowClient, run_id: str, verdicts: pd.DataFrame) -> None:
    """Append to review/verdicts.json (who recorded what, when): the history the tags do not keep."""
    if not verdicts.empty:
        client.log_table(run_id, data=verdicts, artifact_file=VERDICTS_TABLE)


def newest_run_with_flags(client: MlflowClient, experiment_ids: list[str]) -> str:
    """The newest finished run (scoring run or inspection batch) that flagged something."""
    runs = client.search_runs(experiment_ids, filter_string="attributes.status = 'FINISHED' and metrics.n_flagged > 0",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise LookupError("no scoring run or inspection batch has flagged anything yet: nothing to review "
                          "(pass a run id: python -m pipeline review <run id>)")
    return runs[0].info.run_id


def runs_of_model(client: MlflowClient, experiment_ids: list[str], model_name: str) -> list:
    """Every run (scoring run or inspection batch) judged by a version of registered model `model_name`."""
    return client.search_runs(experiment_ids, filter_string=f"tags.model_name = '{model_name}'", max_results=5000)
