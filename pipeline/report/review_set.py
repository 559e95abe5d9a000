"""What a person reviews after a scoring run or an inspection batch: one record per shown image, with its
panel and its card-sized thumbnail, drawn from what the detector already computed (files.Kept).

Shown: the flagged images, highest score first (at most `max_panels`); when nothing is flagged, the
`top_when_none` highest-scoring images, marked "not flagged", so a reviewer always has images; and an
*audit sample*: images drawn at random among all scored ones (flagged or not), marked "audit". Only
verdicts on audit images may feed `calibrate`: they are a random sample of the line's images, so the normal
ones among them are exchangeable with new normal images; flagged false alarms are not (they are the
highest-scoring normals).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.fs import atomic_write, atomic_write_text
from pipeline.report.panels import PanelText, render_panel, render_thumbnail, to_image

FLAGGED, NOT_FLAGGED, AUDIT = "FLAGGED", "not flagged", "audit"
PENDING = "pending"
RECORDS = "review/records.json"
PANEL_DIR = "review/panels"
THUMBNAIL_DIR = "review/thumbnails"


@dataclass
class ReviewRecord:
    rank: int                 # by decision score among the run's scored images, 1 = highest
    sample_id: str            # stable, typeable id for verdicts: 'test/hole/004.png' -> 'test_hole_004'
    key: str                  # '<rank>_<sample id>': sorts by score in MLflow's gallery and file listings
    image_path: str
    status: str               # FLAGGED | not flagged | audit
    audit: bool               # drawn at random for the audit sample (may also be flagged)
    score: float
    threshold: float
    p_value: float
    q_value: float | None
    defect_area: float | None
    label: int | None         # where the data has labels (a test split): 1 = defect
    defect_type: str | None
    panel_file: str           # relative to the run's output folder
    thumbnail_file: str
    review_status: str = PENDING
    decided_by: str | None = None  # the fused component that set the score (scores.csv 'decided_by')

    def as_row(self) -> dict:
        return asdict(self)


def sample_id(image_path: str) -> str:
    """'scratch/003.png' -> 'scratch_003': safe as an MLflow key and a tag name, easy to type."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(image_path).with_suffix(""))).strip("_") or "sample"


def audit_indices(n: int, size: int, seed: int) -> set[int]:
    """A seeded random sample of `size` of range(n), chosen before scoring (so its panels can be kept)."""
    rng = np.random.default_rng(seed)
    return set(rng.choice(n, size=min(size, n), replace=False).tolist()) if n and size > 0 else set()


def choose(frame: pd.DataFrame, audit: set[int], max_panels: int, top_when_none: int) -> list[tuple[int, str]]:
    """[(sample index, status)] to show, highest score first: flagged (or the top unflagged when none is),
    then the audit images not already shown."""
    ranked = frame.sort_values("score", ascending=False, kind="stable")
    flagged = ranked[ranked["is_anomaly"] == 1]
    shown = [(int(i), FLAGGED) for i in flagged["index"].head(max_panels)]
    if flagged.empty:
        shown = [(int(i), NOT_FLAGGED) for i in ranked["index"].head(top_when_none)]
    taken = {i for i, _ in shown}
    shown += [(int(i), AUDIT) for i in ranked["index"] if int(i) in audit and int(i) not in taken]
    return shown


def unique_ids(paths: list[str]) -> list[str]:
    ids, seen = [], set()
    for path in paths:
        base, candidate, n = sample_id(path), sample_id(path), 1
        while candidate in seen:
            n += 1
            candidate = f"{base}-{n}"
        seen.add(candidate)
        ids.append(candidate)
    return ids


def build_review(frame: pd.DataFrame, kept: dict, audit: set[int], out_dir: Path, pixel_threshold: float | None,
                 max_panels: int, top_when_none: int, tile_size: int, thumbnail_width: int) -> list[ReviewRecord]:
    """Render the panels and thumbnails of the chosen images into out_dir/review/; returns their records."""
    ranks = frame["score"].rank(ascending=False, method="first").astype(int)
    rank_of = dict(zip(frame["index"].astype(int), ranks))
    ids = dict(zip(frame["index"].astype(int), unique_ids(frame["image_path"].tolist())))
    rows = frame.set_index("index")
    chosen = [(i, status) for i, status in choose(frame, audit, max_panels, top_when_none) if i in kept]
    maps = [kept[i].map for i, _ in chosen]
    vmax = max(float(np.quantile(np.concatenate([m.ravel() for m in maps]), 0.999)), 1e-12) if maps else 1.0
    records = []
    for index, status in chosen:
        row, material = rows.loc[index], kept[index]
        key = f"{rank_of[index]:03d}_{ids[index]}"
        labelled = "label" in row and not pd.isna(row["label"]) and row.get("defect_type") not in (None, "unknown")
        text = PanelText(rank_of[index], ids[index], status, float(row["score"]), float(row["threshold"]),
                         float(row["p_value"]), None if pd.isna(row["defect_area"]) else float(row["defect_area"]),
                         str(row["defect_type"]) if labelled else None,
                         str(row["decided_by"]) if isinstance(row.get("decided_by"), str) else None)
        image, recon = to_image(material.image), to_image(material.reconstruction)
        panel_file, thumbnail_file = f"{PANEL_DIR}/{key}.png", f"{THUMBNAIL_DIR}/{key}.png"
        for rel, picture in ((panel_file, render_panel(image, recon, material.map, vmax, pixel_threshold, text,
                                                       tile_size)),
                             (thumbnail_file, render_thumbnail(image, material.map, vmax, pixel_threshold, text,
                                                               thumbnail_width))):
            # zlib's fastest level: half the encoding time of the default for 10 % larger files
            atomic_write(out_dir / rel, lambda handle, picture=picture: picture.save(handle, format="PNG",
                                                                                     compress_level=1))
        records.append(ReviewRecord(
            rank_of[index], ids[index], key, str(row["image_path"]), status, index in audit, text.score, text.threshold,
            text.p_value, None if pd.isna(row.get("q_value", np.nan)) else float(row["q_value"]), text.defect_area,
            int(row["label"]) if labelled else None, str(row["defect_type"]) if labelled else None,
            panel_file, thumbnail_file, decided_by=text.decided_by))
    return records


def records_frame(records: list[ReviewRecord]) -> pd.DataFrame:
    return pd.DataFrame([r.as_row() for r in records], columns=list(ReviewRecord.__dataclass_fields__))


def write_records(out_dir: Path, records: list[ReviewRecord]) -> Path:
    """review/records.json: every reviewed image's record (the review page and `review` read it)."""
    return atomic_write_text(out_dir / RECORDS, json.dumps([r.as_row() for r in records], indent=1, default=float))
