"""`python -m pipeline review [run]`: the images a scoring run or an inspection batch shows for review, and
verdicts recorded into that run. Without a run id: the newest run (of either kind) that flagged something.

Verdicts come from review.verdicts=<csv>, review.set=[id:verdict,...], the run's `verdict.<id>` tags (set in
the MLflow UI), or, when nothing is given and stdin is a terminal, a prompt per pending image.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pipeline.review import loop as L
from pipeline.review import verdicts as V
from pipeline.tracking.review_log import newest_run_with_flags
from pipeline.tracking.store import experiment_id, open_store

log = logging.getLogger(__name__)

SHOWN_COLUMNS = ["key", "status", "image_path", "score", "p_value", "defect_area", "review_status", "panel_path"]


def format_table(table: pd.DataFrame) -> str:
    """The reviewed images as a plain-text table (one row per image, with the local panel path)."""
    if table.empty:
        return "(no image to review in this run)"
    shown = table[SHOWN_COLUMNS].copy()
    shown["defect_area"] = shown["defect_area"].map(lambda a: "-" if pd.isna(a) else f"{100 * a:.1f}%")
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def collect_verdicts(cfg: DictConfig, table: pd.DataFrame) -> dict[str, str]:
    """Verdicts from the CSV and the inline list (inline wins), else from the prompt when interactive."""
    given: dict[str, str] = {}
    if cfg.review.verdicts:
        given.update(V.read_verdicts_csv(Path(str(cfg.review.verdicts)).expanduser()))
    given.update(V.parse_inline(list(cfg.review.set or [])))
    interactive = str(cfg.review.interactive).lower()
    if not given and (interactive == "true" or (interactive == "auto" and sys.stdin.isatty())):
        given = V.prompt_verdicts(table)
    return V.match_ids(given, table) if given else {}


def review_experiments(client, cfg: DictConfig) -> list[str]:
    return [experiment_id(client, cfg, cfg.tracking.score_experiment), experiment_id(client, cfg, cfg.inspect.experiment)]


def run_review(cfg: DictConfig) -> dict:
    client = open_store(cfg)
    run_id = str(cfg.review.run) if cfg.review.run else newest_run_with_flags(client, review_experiments(client, cfg))
    table = L.load_review(client, run_id, Path(cfg.review.cache_dir) / run_id)
    print(format_table(table))
    verdicts = collect_verdicts(cfg, table)
    table, records = V.apply_verdicts(table, verdicts, str(cfg.review.reviewer))
    summary = V.summarize(table)
    # Also without new verdicts: the summary then counts the verdicts a reviewer added as tags in the UI.
    L.record_review(client, run_id, records, summary, str(cfg.review.reviewer) if verdicts else None)
    if not verdicts:
        return {"run_id": run_id, "recorded": 0, **summary}
    log.info("recorded %d verdict(s) in run %s: %s", len(records), run_id, summary)
    print(format_table(table))
    return {"run_id": run_id, "recorded": len(records), **summary}
