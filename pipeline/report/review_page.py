"""The review page of a run: one self-contained HTML file (review/index.html) with every reviewed image's
panel at full size, highest score first, its decision details, and how to record a verdict. The panels are
embedded (data URIs), so the page renders as it is in MLflow's Artifacts tab (a sandboxed iframe: no
scripts are needed, the verdict tag's name is selected with one click), in a browser, or mailed on.

Also the plain-text summary of a run (`summary_lines`, `status_of`) that the run's MLflow description repeats.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from pipeline.data.fs import atomic_write_text
from pipeline.report.review_set import AUDIT, FLAGGED, NOT_FLAGGED, ReviewRecord
from pipeline.scoring.fusion import in_words

PAGE = "review/index.html"
VERDICT_VALUES = "true_defect | false_alarm | unsure"
STATUS_TITLE = {"ok": "ok", "unable_to_flag": "UNABLE TO FLAG", "promise_broken": "PROMISE BROKEN", "drift": "DRIFT"}
CONSEQUENCE = {"unable_to_flag": "This run could not flag any image: an image it did not flag is not known to be good.",
               "promise_broken": "Good parts are flagged far more often than alpha promises: these good images are not "
                                 "like the ones the threshold was calibrated on (another camera distance, lighting or "
                                 "focus, other parts of the material), so most flags are false alarms and an image "
                                 "that is not flagged is not known to be good. What to do: if the imaging changed, "
                                 "restore it (the drift line says what moved); if these are normal production parts, "
                                 "add good images like them to train/good and train again.",
               "drift": "The images differ from the calibration images: neither the flags nor their absence can be "
                        "trusted until the cause (camera, lighting, focus) is fixed, or, if these are normal "
                        "production parts, until the detector is trained again with good images like them."}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin: 0 0 6px 0; }
.status { padding: 2px 8px; border-radius: 4px; color: white; }
.ok { background: #2e7d32; } .bad { background: #c62828; }
.banner { border: 2px solid #c62828; background: #ffebee; padding: 8px 12px; border-radius: 6px; }
.note { border: 1px solid #999; background: #f5f5f5; padding: 8px 12px; border-radius: 6px; }
.card { border: 1px solid #ccc; border-radius: 6px; margin: 14px 0; padding: 8px; }
.panel { overflow-x: auto; }
.panel img { display: block; max-width: none; }  /* full size: one image pixel per screen pixel */
.FLAGGED { border-left: 6px solid #c62828; } .audit { border-left: 6px solid #1565c0; }
.not-flagged { border-left: 6px solid #9e9e9e; }
.badge { display: inline-block; padding: 1px 6px; border-radius: 4px; font-size: 13px; margin-left: 6px; }
.badge.good-flagged { background: #ff9800; color: black; } .badge.audit { background: #1565c0; color: white; }
.badge.not-flagged { background: #9e9e9e; color: white; } .badge.FLAGGED { background: #c62828; color: white; }
code { background: #f3f3f3; padding: 1px 4px; } code.tag { user-select: all; font-weight: bold; }
table { border-collapse: collapse; } td, th { padding: 1px 10px 1px 0; font-size: 14px; text-align: left; }
table.index td, table.index th { border-bottom: 1px solid #eee; }
"""


def _image_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return "inf (cannot flag)" if math.isinf(value) else f"{value:.{digits}g}"
    return html.escape(str(value))


def _badges(record: ReviewRecord) -> str:
    badges = [(record.status.replace(" ", "-"), record.status)]
    if record.audit:
        badges.append(("audit", "random audit sample"))
    if record.status == FLAGGED and record.label == 0:
        badges.append(("good-flagged", "good part, flagged (a false alarm by the labels)"))
    return "".join(f'<span class="badge {c}">{html.escape(t)}</span>' for c, t in badges)


def _card(record: ReviewRecord, out_dir: Path, run_id: str | None) -> str:
    rows = [("image", html.escape(record.image_path)), ("score", _fmt(record.score)),
            ("threshold", _fmt(record.threshold)), ("p-value", _fmt(record.p_value, 3)),
            ("BH q-value", _fmt(record.q_value, 3)),
            ("defect area", "—" if record.defect_area is None else f"{100 * record.defect_area:.1f} %")]
    if record.decided_by:
        rows.insert(2, ("set by", html.escape(f"{in_words(record.decided_by)} ({record.decided_by})")))
    if record.label is not None:
        rows.append(("label", html.escape("good" if record.label == 0 else f"defect ({record.defect_type})")))
    command = f"python -m pipeline review {run_id or '<run id>'} review.set=[{record.sample_id}:true_defect]"
    details = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return (f'<div class="card {html.escape(record.status.replace(" ", "-"))}" id="{html.escape(record.key)}">'
            f"<h2>#{record.rank:03d} {html.escape(record.sample_id)}{_badges(record)}</h2>"
            f'<div class="panel"><img alt="{html.escape(record.key)}" src="{_image_uri(out_dir / record.panel_file)}">'
            f'</div><table class="details">{details}</table>'
            f'<div>verdict: tag <code class="tag">verdict.{html.escape(record.sample_id)}</code> = {VERDICT_VALUES} '
            f"on this run, or <code>{html.escape(command)}</code></div></div>")


def _index(records: list[ReviewRecord]) -> str:
    """One line per shown image, by rank, linking to its card."""
    head = "<tr><th>rank</th><th>sample id</th><th>status</th><th>score</th><th>p-value</th><th>label</th></tr>"
    rows = "".join(
        f'<tr><td>{r.rank}</td><td><a href="#{html.escape(r.key)}">{html.escape(r.sample_id)}</a></td>'
        f"<td>{html.escape(r.status)}{' (audit)' if r.audit and r.status != AUDIT else ''}</td>"
        f"<td>{_fmt(r.score)}</td><td>{_fmt(r.p_value, 3)}</td>"
        f"<td>{'—' if r.label is None else 'good' if r.label == 0 else html.escape(str(r.defect_type))}</td></tr>"
        for r in records)
    return f'<table class="index">{head}{rows}</table>'


def status_of(summary: dict) -> tuple[str, str]:
    """(detection status, reason) of a run's summary: unable_to_flag beats promise_broken beats drift beats ok."""
    if summary.get("unable_to_flag"):
        return "unable_to_flag", str(summary["unable_to_flag"])
    promise, drift = summary.get("promise") or {}, summary.get("drift") or {}
    if promise.get("broken"):
        also = (f"; the images also drifted from the calibration images: {drift.get('reason')}"
                if drift.get("drifted") else "")
        return "promise_broken", str(promise.get("reason") or "too many good images flagged") + also
    if drift.get("drifted"):
        return "drift", str(drift.get("reason") or "the batch's images drifted from the calibration images")
    return "ok", ""


def check_lines(summary: dict) -> list[str]:
    """One line per trust check the run made (detector/checks.py): the promise on labelled good images, drift."""
    lines = []
    promise = summary.get("promise") or {}
    groups = [g for g in (promise.get("groups") or {}).values() if g.get("tested")]
    if groups:
        alarms, normal = sum(g["n_false_alarms"] for g in groups), sum(g["n_normal"] for g in groups)
        allowed = sum(g["max_allowed"] for g in groups)
        verdict = "BROKEN" if promise.get("broken") else "kept"
        lines.append(f"promise on labelled good images: {verdict}: {alarms} of {normal} flagged "
                     f"({alarms / normal:.1%}) at alpha = {groups[0]['alpha']:g}; the calibration set's chance allows at most {allowed} "
                     f"(beta-binomial test at level {promise.get('level')})")
    elif promise.get("reason"):
        lines.append(f"promise on labelled good images: {promise['reason']}")
    drift = summary.get("drift") or {}
    if drift.get("tested") or drift.get("reason"):
        on = " (good images)" if drift.get("images") == "good" else ""
        verdict = (f"DRIFTED: {drift.get('reason')}" if drift.get("drifted") else "none" if drift.get("tested")
                   else str(drift.get("reason")))
        lines.append(f"drift{on}: {verdict}")
    return lines


def alias_when_used(summary: dict) -> str:
    """The alias the model was chosen by (inspect: champion), else the aliases its version had then."""
    if summary.get("model_alias"):
        return str(summary["model_alias"])
    return str(summary.get("model_aliases") or "none")


def summary_lines(summary: dict, kind: str) -> tuple[str, list[str]]:
    """(title, lines) that say what a run judged, with which model, and what its threshold promises."""
    model = summary.get("model_name")
    version = f"{model} version {summary.get('model_version')}" if model else str(summary.get("model_source"))
    n_images = summary.get("n_images", summary.get("n_scored", 0))
    title = f"{kind}: {summary.get('n_flagged', 0)} of {n_images} images flagged"
    n_cal = summary.get("n_calibration")
    floor = f"; the smallest p-value is 1/(n+1) = {1 / (int(n_cal) + 1):.3g}, so images are ranked by score" \
        if isinstance(n_cal, (int, float)) and n_cal >= 0 else ""
    return title, [*detection_lines(summary), f"model: {version} (alias when used: {alias_when_used(summary)}), trained by run "
                   f"{summary.get('model_run_id')}",
                   f"decision: score {summary.get('score')}, threshold {_fmt(summary.get('threshold', float('nan')))}, "
                   f"{summary.get('false_alarm_control')}",
                   f"guarantee: {summary.get('guarantee_statement') or 'at most alpha of new normal images flagged'}: "
                   f"{summary.get('guarantee')}; {n_cal} calibration images, alpha = {summary.get('alpha')}{floor}",
                   *check_lines(summary),
                   f"unreadable files: {summary.get('n_errors', 0)}"]


def detection_lines(summary: dict) -> list[str]:
    """With labelled images (a test split): what the threshold for each alpha catches, per defect type, then AUROC."""
    lines = []
    for alpha, entry in (summary.get("detection_at_alpha") or {}).items():
        kinds = ", ".join(f"{t} {_fmt(v, 2)}" for t, v in entry.get("per_defect_type", {}).items())
        lines.append(f"detection rate at alpha = {alpha}: {_fmt(entry.get('detection_rate'), 3)} of the defective "
                     f"images ({kinds}); false alarms on the good ones {_fmt(entry.get('false_alarm_rate'), 3)}")
    if lines and summary.get("image_auroc") is not None:
        lines.append(f"image AUROC {_fmt(summary['image_auroc'], 3)} (a ranking: it does not say what a threshold catches)")
    return lines


def _links(summary: dict) -> str:
    """The run and its experiment in the MLflow UI ("Model training" view), once the run is logged."""
    if not summary.get("mlflow_run"):
        return ""
    run, runs = (html.escape(summary.get(k) or "", quote=True) for k in ("mlflow_run", "mlflow_experiment"))
    return (f'<li>in MLflow: <a href="{run}" target="_blank">this run</a>'
            + (f', <a href="{runs}" target="_blank">all runs of its experiment</a>' if runs else "")
            + " (Model training view)</li>")


def write_review_page(out_dir: Path, records: list[ReviewRecord], summary: dict, kind: str,
                      run_id: str | None = None, path: Path | None = None) -> Path:
    """Write the review page of a run's summary and review records (out_dir/review/index.html unless `path`);
    panel files are read from out_dir."""
    title, lines = summary_lines(summary, kind)
    status, reason = status_of(summary)
    badge = f'<span class="status {"ok" if status == "ok" else "bad"}">{STATUS_TITLE.get(status, status)}</span>'
    problem = (f'<p class="banner"><b>{STATUS_TITLE.get(status, status)}</b>: {html.escape(reason)}. '
               f"{CONSEQUENCE.get(status, '')}</p>") if reason else ""
    records = sorted(records, key=lambda r: r.rank)
    if not records:
        shown = "<p>No image to review.</p>"
    elif any(r.status == NOT_FLAGGED for r in records):
        shown = (f'<p class="note">Nothing was flagged. The {sum(r.status == NOT_FLAGGED for r in records)} '
                 "highest-scoring images are shown, marked <b>not flagged</b>, with the random audit sample.</p>")
    else:
        shown = ""
    how = (f'<p class="note">Record a verdict from the MLflow UI: on this run\'s Overview, Tags, edit (pencil), add '
           f"the tag <code>verdict.&lt;sample id&gt;</code> with the value {VERDICT_VALUES} (click the tag name on a "
           "card to select it). `python -m pipeline review` reads these tags. Only verdicts on images of the "
           "<b>random audit sample</b> feed `calibrate`.</p>")
    head = "".join(f"<li>{html.escape(line)}</li>" for line in lines) + _links(summary)
    cards = "".join(_card(r, out_dir, run_id) for r in records)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)} {badge}</h1>{problem}<ul>{head}</ul>"
            f"{shown}{how}{_index(records) if records else ''}{cards}</body></html>")
    return atomic_write_text(path or out_dir / PAGE, page)
