"""The review page of a run: one self-contained HTML file (review/index.html) with every reviewed image's
panel at full size, highest score first, its decision details, and how to record a verdict. The panels are
embedded (data URIs), so the page renders as it is in MLflow's Artifacts tab, in a browser, or mailed on."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from pipeline.report.review_set import AUDIT, FLAGGED, ReviewRecord

PAGE = "review/index.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; } .status { padding: 2px 8px; border-radius: 4px; color: white; }
.ok { background: #2e7d32; } .bad { background: #c62828; }
.card { border: 1px solid #ccc; border-radius: 6px; margin: 12px 0; padding: 8px; }
.card img { max-width: 100%; height: auto; image-rendering: pixelated; display: block; }
.FLAGGED { border-left: 6px solid #c62828; } .audit { border-left: 6px solid #1565c0; }
.good-flagged { background: #fff3e0; } code { background: #f3f3f3; padding: 1px 4px; }
table.details td { padding: 1px 10px 1px 0; font-size: 14px; }
"""


def _image_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return "inf (cannot flag)" if math.isinf(value) else f"{value:.{digits}g}"
    return html.escape(str(value))


def _card(record: ReviewRecord, out_dir: Path, run_id: str | None) -> str:
    good_flagged = record.status == FLAGGED and record.label == 0
    rows = [("status", record.status + (" (audit sample)" if record.audit and record.status != AUDIT else "")),
            ("image", record.image_path), ("score", _fmt(record.score)), ("threshold", _fmt(record.threshold)),
            ("p-value", _fmt(record.p_value, 3)), ("BH q-value", _fmt(record.q_value, 3)),
            ("defect area", "—" if record.defect_area is None else f"{100 * record.defect_area:.1f} %")]
    if record.label is not None:
        rows.append(("truth", f"{record.defect_type}" + (" — a good part that was flagged" if good_flagged else "")))
    run = run_id or "<run id>"
    command = f"python -m pipeline review {run} review.set=[{record.sample_id}:true_defect]"
    details = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return (f'<div class="card {html.escape(record.status.replace(" ", "-"))}{" good-flagged" if good_flagged else ""}" '
            f'id="{html.escape(record.key)}"><b>#{record.rank:03d} {html.escape(record.sample_id)}</b>'
            f'<img alt="{html.escape(record.key)}" src="{_image_uri(out_dir / record.panel_file)}">'
            f'<table class="details">{details}</table>'
            f"<div>verdict: tag <code>verdict.{html.escape(record.sample_id)}</code> = true_defect | false_alarm | unsure "
            f"on this run, or <code>{html.escape(command)}</code></div></div>")


def status_of(summary: dict) -> tuple[str, str]:
    """(detection status, reason) of a run's summary: unable_to_flag beats drift beats ok."""
    if summary.get("unable_to_flag"):
        return "unable_to_flag", str(summary["unable_to_flag"])
    drift = summary.get("drift") or {}
    if drift.get("drifted"):
        return "drift", str(drift.get("reason") or "the batch's images drifted from the calibration images")
    return "ok", ""


def summary_lines(summary: dict, kind: str) -> tuple[str, list[str]]:
    """(title, lines) that say what a run judged, with which model, and what its threshold promises."""
    model = summary.get("model_name")
    version = f"{model} version {summary.get('model_version')}" if model else str(summary.get("model_source"))
    alias = summary.get("model_alias") or summary.get("model_aliases") or "none"
    title = (f"{kind}: {summary.get('n_flagged', 0)} of {summary.get('n_images', summary.get('n_scored', 0))} "
             "images flagged")
    threshold = summary.get("threshold", float("nan"))
    return title, [f"model: {version} (alias when used: {alias}), trained by run {summary.get('model_run_id')}",
                   f"decision: score {summary.get('score')}, threshold {_fmt(threshold)}, "
                   f"{summary.get('false_alarm_control')}",
                   f"guarantee: {summary.get('guarantee')}; {summary.get('n_calibration')} calibration images, "
                   f"alpha = {summary.get('alpha')}",
                   f"unreadable files: {summary.get('n_errors', 0)}"]


def write_review_page(out_dir: Path, records: list[ReviewRecord], summary: dict, kind: str,
                      run_id: str | None = None) -> Path:
    """Write out_dir/review/index.html for a run's summary and its review records."""
    title, lines = summary_lines(summary, kind)
    status, reason = status_of(summary)
    badge = f'<span class="status {"ok" if status == "ok" else "bad"}">{html.escape(status.replace("_", " "))}</span>'
    head = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    problem = f"<p><b>{html.escape(reason)}</b></p>" if reason else ""
    cards = "".join(_card(r, out_dir, run_id) for r in sorted(records, key=lambda r: r.rank))
    empty = "" if records else "<p>No image to review.</p>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)} {badge}</h1>{problem}<ul>{head}</ul>"
            f"{cards}{empty}</body></html>")
    path = out_dir / PAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
