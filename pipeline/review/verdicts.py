"""Review verdicts: parsing, applying them to a run's review records, and summarizing (pure functions).

A verdict is one of true_defect | false_alarm | unsure: false_alarm says the part is good (for an image that
was not flagged, such as one of the audit sample, too: 'normal' and 'ok' are accepted for it). The precision
of the flags is true_defect / (true_defect + false_alarm) among flagged images; unsure verdicts count as
reviewed but not in the precision.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

TRUE_DEFECT, FALSE_ALARM, UNSURE = "true_defect", "false_alarm", "unsure"
PENDING = "pending"
VERDICTS = (TRUE_DEFECT, FALSE_ALARM, UNSURE)
ALIASES = {"d": TRUE_DEFECT, "defect": TRUE_DEFECT, "true": TRUE_DEFECT, "t": TRUE_DEFECT,
           "f": FALSE_ALARM, "false": FALSE_ALARM, "normal": FALSE_ALARM, "ok": FALSE_ALARM, "good": FALSE_ALARM,
           "u": UNSURE, "?": UNSURE}
VERDICT_COLUMNS = ["sample_id", "image_path", "verdict", "reviewer", "reviewed_at"]


def parse_verdict(text: str, where: str = "verdict") -> str:
    """'d' / 'true_defect' / 'false-alarm' ... -> the canonical verdict, or ValueError naming `where`."""
    key = str(text).strip().lower().replace("-", "_").replace(" ", "_")
    verdict = key if key in VERDICTS else ALIASES.get(key)
    if verdict is None:
        raise ValueError(f"{where}: {text!r} is not a verdict; use one of {', '.join(VERDICTS)} (or d / f / u)")
    return verdict


def parse_inline(items: list[str]) -> dict[str, str]:
    """review.set=[id:verdict, ...] -> {id: verdict}; the id may itself contain ':' (split at the last one)."""
    verdicts = {}
    for item in items:
        sample_id, sep, verdict = str(item).rpartition(":")
        if not sep or not sample_id:
            raise ValueError(f"review.set: {item!r} is not '<sample id>:<verdict>'")
        verdicts[sample_id.strip()] = parse_verdict(verdict, f"review.set item {item!r}")
    return verdicts


def read_verdicts_csv(path: Path | str) -> dict[str, str]:
    """A CSV with columns sample_id and verdict -> {id: verdict}; errors name the file and the row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"review.verdicts: {path} not found")
    table = pd.read_csv(path, dtype=str).fillna("")
    missing = {"sample_id", "verdict"} - set(table.columns)
    if missing:
        raise ValueError(f"review.verdicts: {path} lacks the column(s) {sorted(missing)} (needs sample_id, verdict)")
    return {row.sample_id.strip(): parse_verdict(row.verdict, f"{path} row {i + 2}")
            for i, row in enumerate(table.itertuples()) if row.sample_id.strip()}


def match_ids(verdicts: dict[str, str], flagged: pd.DataFrame) -> dict[str, str]:
    """Keys may be sample ids or image paths; returns {sample_id: verdict}. Unknown keys are an error."""
    by_path = dict(zip(flagged["image_path"], flagged["sample_id"]))
    known = set(flagged["sample_id"])
    matched, unknown = {}, []
    for key, verdict in verdicts.items():
        sample_id = key if key in known else by_path.get(key)
        if sample_id is None:
            unknown.append(key)
        else:
            matched[sample_id] = verdict
    if unknown:
        raise ValueError(f"not shown for review in this run: {', '.join(unknown)}; its sample ids: "
                         f"{', '.join(flagged['sample_id'])}")
    return matched


def apply_verdicts(flagged: pd.DataFrame, verdicts: dict[str, str], reviewer: str,
                   when: datetime | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Set review_status of the reviewed rows; returns (updated table, verdict rows (VERDICT_COLUMNS))."""
    when = (when or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    table = flagged.copy()
    table["review_status"] = [verdicts.get(i, status) for i, status in zip(table["sample_id"], table["review_status"])]
    rows = table[table["sample_id"].isin(verdicts)]
    records = pd.DataFrame({"sample_id": rows["sample_id"], "image_path": rows["image_path"],
                            "verdict": rows["review_status"], "reviewer": reviewer, "reviewed_at": when},
                           columns=VERDICT_COLUMNS)
    return table, records.reset_index(drop=True)


def summarize(table: pd.DataFrame) -> dict:
    """Counts per verdict over a run's review records (columns status, review_status), how many are pending,
    the precision of the flags (among flagged records) and an overall status."""
    statuses = table["review_status"] if len(table) else pd.Series([], dtype=str)
    flagged = table["status"].eq("FLAGGED") if len(table) else pd.Series([], dtype=bool)
    counts = {v: int((statuses == v).sum()) for v in VERDICTS}
    reviewed = sum(counts.values())
    pending = int(len(statuses) - reviewed)
    judged = statuses[flagged]
    true, false = int((judged == TRUE_DEFECT).sum()), int((judged == FALSE_ALARM).sum())
    status = "nothing_to_review" if len(statuses) == 0 else "complete" if pending == 0 else \
        "partial" if reviewed else "pending"
    return {"status": status, "n_shown": int(len(statuses)), "n_flagged": int(flagged.sum()), "n_reviewed": reviewed,
            "n_pending": pending, **{f"n_{v}": n for v, n in counts.items()},
            "flag_precision": true / (true + false) if true + false else None}


def prompt_verdicts(flagged: pd.DataFrame, ask: Callable[[str], str] = input,
                    say: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> dict[str, str]:
    """Ask for a verdict per pending sample: d = true defect, f = false alarm, u = unsure, s = skip, q = stop."""
    verdicts = {}
    for row in flagged.itertuples():
        if row.review_status != "pending":
            continue
        while True:
            answer = ask(f"{row.sample_id} ({row.image_path}, score {row.score:.4g}, panel {row.panel_path})"
                         " [d]efect / [f]alse alarm / [u]nsure / [s]kip / [q]uit: ").strip().lower()
            if answer in ("s", "skip", ""):
                break
            if answer in ("q", "quit"):
                return verdicts
            try:
                verdicts[row.sample_id] = parse_verdict(answer)
                break
            except ValueError as err:
                say(str(err))
    return verdicts
