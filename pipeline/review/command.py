"""`python -m pipeline review <run>`: show a scoring run's flagged samples and record verdicts into it.

Verdicts come from review.verdicts=<csv>, review.set=[id:verdict,...], or, when neither is given and
stdin is a terminal, from a prompt per pending sample. Without verdicts it only shows the table.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pipeline.config import require
from pipeline.review import verdicts as V

log = logging.getLogger(__name__)

SHOWN_COLUMNS = ["sample_id", "image_path", "score", "p_value", "defect_area", "review_status", "panel_path"]


def format_table(table: pd.DataFrame) -> str:
    """The flagged samples as a plain-text table (one row per sample, with the local panel path)."""
    if table.empty:
        return "(no flagged samples in this run)"
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


def run_review(cfg: DictConfig) -> dict:
    from pipeline.tracking.review_log import load_flagged, record_review
    from pipeline.tracking.store import open_store

    run_id = str(require(cfg, "review.run"))
    client = open_store(cfg)
    table = load_flagged(client, run_id, Path(cfg.review.cache_dir) / run_id)
    print(format_table(table))
    verdicts = collect_verdicts(cfg, table)
    if not verdicts:
        return {"run_id": run_id, "recorded": 0, **V.summarize(table["review_status"])}
    table, records = V.apply_verdicts(table, verdicts, str(cfg.review.reviewer))
    summary = V.summarize(table["review_status"])
    record_review(client, run_id, table, records, summary, str(cfg.review.reviewer))
    log.info("recorded %d verdict(s) in run %s: %s", len(records), run_id, summary)
    print(format_table(table))
    return {"run_id": run_id, "recorded": len(records), **summary}
