"""The quality, threshold and drift sections of BENCHMARKS.md: per family and task, the new default against the
previous default, the plain autoencoder and the baselines; whether the targets are met; the false-alarm rates with
their intervals against the promise; the small-data thresholds; the drift test's error rates."""

from __future__ import annotations

import numpy as np

METRICS = ("image_auroc", "pixel_auroc", "aupro")
ROWS = (("new_default", "new default (two-level VAE + learned map, fused score)"),
        ("learned_map_v1", "default at dd9051f (learned map on the global VAE, smoothed maximum)"),
        ("previous_default", "previous default (balanced reconstruction map)"), ("plain_ae", "plain autoencoder"),
        ("vqvae", "VQ-VAE under the same learned map"),
        ("pca_better", "PCA (its better row)"), ("iforest", "IsolationForest on pixels"))


def _f(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def metric(task: dict, method: str, name: str) -> float | None:
    """A method's metric on one task: the mean over its seed rows (product rows) or the baseline's value."""
    if method in task.get("baselines", {}):
        return task["baselines"][method].get(name)
    return _mean(row.get(name) for row in task.get(method, []))


def families(quality: dict) -> dict[str, list[str]]:
    """{family label: its task names}: each built-in family alone, each digits protocol its tasks."""
    found: dict[str, list[str]] = {}
    for name, task in quality.items():
        found.setdefault(task["family"], []).append(name)
    return found


def family_metric(quality: dict, names: list[str], method: str, name: str) -> float | None:
    return _mean(metric(quality[n], method, name) for n in names if "refused" not in quality[n])


def paired_differences(quality: dict, groups: dict[str, list[str]], method: str, name: str) -> dict[str, float]:
    """{family: new default minus `method`}, over the tasks where both were measured (a stopped run may lack some)."""
    diffs = {}
    for fam, names in groups.items():
        pairs = [(metric(quality[n], "new_default", name), metric(quality[n], method, name))
                 for n in names if "refused" not in quality[n]]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if pairs:
            diffs[fam] = float(np.mean([a - b for a, b in pairs]))
    return diffs


def comparison(quality: dict) -> list[str]:
    """The targets: the new default against each comparison row, mean over families and worst family."""
    groups = families(quality)
    rows = []
    for method, label in ROWS:
        if method == "new_default":
            continue
        diffs = paired_differences(quality, groups, method, "image_auroc")
        if not diffs:
            continue
        worst = min(diffs, key=diffs.get)
        rows.append([label, f"{np.mean(list(diffs.values())):+.3f}", f"{diffs[worst]:+.3f} ({worst})",
                     "yes" if np.mean(list(diffs.values())) >= 0.02 and diffs[worst] >= -0.01 else "**no**"])
    masked = {fam: names for fam, names in groups.items() if quality[names[0]].get("has_masks")}
    pixel = paired_differences(quality, masked, "previous_default", "pixel_auroc")
    if pixel:
        worst = min(pixel, key=pixel.get)
        rows.append(["previous default's map, pixel AUROC", f"{np.mean(list(pixel.values())):+.3f}",
                     f"{pixel[worst]:+.3f} ({worst})",
                     "yes" if np.mean(list(pixel.values())) >= 0.02 and pixel[worst] >= -0.01 else "**no**"])
    return ["Target: the new default beats each row by >= 0.02 image AUROC on the mean over families and is never worse "
            "by more than 0.01 on any one (the new default's seeds averaged; each family over the tasks where both "
            "rows were measured).", "",
            *_table(["new default minus", "mean over families", "worst family", "met"], rows)]


def _detection(task: dict, method: str, alpha: str, key: str = "recall", kind: str | None = None) -> float | None:
    """A product row's detection rate (key 'recall'), false-alarm rate ('rate') or one kind's detection rate at alpha,
    the mean over its seed rows; None where the threshold cannot fire or the run did not measure it."""
    values = []
    for row in task.get(method, []):
        cell = (row.get("false_alarm") or {}).get(alpha)
        if cell is not None:
            values.append(cell.get("per_kind", {}).get(kind) if kind else cell.get(key))
    return _mean(values)


def detection_table(quality: dict, alphas: list[str]) -> list[str]:
    """The factory's number first: per family, the share of defective test images the new default flags at the
    conformal threshold for each alpha, beside the share of good test images it flags, then per defect kind."""
    groups = families(quality)
    rows, kind_rows = [], []
    for fam, names in groups.items():
        live = [n for n in names if "refused" not in quality[n]]
        row = [fam]
        for alpha in alphas:
            det = _mean(_detection(quality[n], "new_default", alpha) for n in live)
            fa = _mean(_detection(quality[n], "new_default", alpha, "rate") for n in live)
            row.append(f"**{_f(det)}** (false alarms {_f(fa)})")
        rows.append(row)
        if len(live) == 1:
            task = quality[live[0]]
            kinds = sorted({k for r in task.get("new_default", []) for c in (r.get("false_alarm") or {}).values()
                            if c for k in c.get("per_kind", {})})
            kind_rows += [[fam, k, *(_f(_detection(task, "new_default", a, kind=k)) for a in alphas)] for k in kinds]
    return ["### Detection rate at the promised false-alarm rate", "",
            "The share of defective test images the new default flags at its conformal threshold for alpha (calibration "
            "images only), mean over its seeds; in brackets the share of good test images flagged at the same "
            "threshold (the promise: at most alpha, up to sampling). Digits: the mean over the protocol's tasks.", "",
            *_table(["family", *(f"alpha = {a}" for a in alphas)], rows),
            "Per defect kind (built-in and report-only families):", "",
            *_table(["family", "defect kind", *(f"alpha = {a}" for a in alphas)], kind_rows)]


def summary_table(quality: dict) -> list[str]:
    groups = families(quality)
    header = ["method", *(f"{fam} ({len(names)} tasks)" if len(names) > 1 or fam != names[0] else fam
                          for fam, names in groups.items())]
    rows = [[label, *(" / ".join(_f(family_metric(quality, names, m, k)) for k in METRICS
                                 if quality[names[0]].get("has_masks") or k == "image_auroc")
                      for names in groups.values())] for m, label in ROWS]
    return ["Image AUROC / pixel AUROC / AUPRO per family (digits: image AUROC, the mean over the protocol's tasks; no masks).", "",
            *_table(header, rows)]


def seeds_table(quality: dict) -> list[str]:
    rows = []
    for name, task in quality.items():
        for row in task.get("new_default", []):
            v = row.get("validation") or {}
            rows.append([name, str(row["seed"]), " / ".join(_f(row.get(k)) for k in METRICS),
                         _f(v.get("image_auroc.fused")), _f(v.get("pixel_auroc")),
                         f"{row.get('reconstruction') or '—'} ({_f(v.get('global_detail_error_ratio'), 2)})",
                         f"{_f(v.get('restoration.anomaly_error_ratio'), 2)} / {_f(v.get('restoration.detail_error_ratio'), 2)}",
                         ", ".join(v.get("fused_components") or []) or "—",
                         f"{row['n_train']} / {row['n_calibration']}", _f(row["train_seconds"], 0)])
    return ["### The new default per task and seed, with its label-free validation", "",
            "Validation: the selection images with synthetic anomalies of a kind neither network trained on "
            "(nothing here looks at test labels). Reconstruction: what the map compares with (global: the VAE's own; "
            "local: the two-level VAE's restoration), chosen by how much of the selection images' detail the global "
            "level misses (in brackets; the limit is 0.5). Restoration: inside the anomalies, |reconstruction - clean| "
            "/ |input - clean| (0 = removed; bar 0.5), and on the images left normal, |reconstruction - image| / "
            "|image - its mean| (1 = a flat blur; bar 0.5).", "",
            *_table(["task", "seed", "image / pixel AUROC / AUPRO", "validation image AUROC (fused)",
                     "validation pixel AUROC", "reconstruction", "restoration: anomaly left / detail missed",
                     "fused components", "train / calibration images", "train s"], rows)]


def digits_table(quality: dict, family: str) -> list[str]:
    names = families(quality).get(family, [])
    if not names:
        return []
    rows = [[n, *(_f(metric(quality[n], m, "image_auroc")) if "refused" not in quality[n] else "refused"
                  for m, _ in ROWS)] for n in names]
    rows.append(["**mean**", *(_f(family_metric(quality, names, m, "image_auroc")) for m, _ in ROWS)])
    missing = [label for m, label in ROWS if family_metric(quality, names, m, "image_auroc") is None]
    note = ([f"Not measured on these tasks: {'; '.join(missing)} (`bench.family_only_methods`: rows the bench "
             "measures on the built-in families only, to fit its time budget).", ""] if missing else [])
    return [f"### {family} (image AUROC per task)", "", *_table(["task", *(label for _, label in ROWS)], rows), *note]


def scores_table(quality: dict) -> list[str]:
    groups = families(quality)
    names = sorted({s for t in quality.values() for r in t.get("new_default", []) for s in r.get("scores", {})})
    rows = [[s, *(_f(_mean(r["scores"].get(s) for n in group for r in quality[n].get("new_default", [])))
                  for group in groups.values())] for s in names]
    return ["### Every score of the new default (image AUROC)", "", *_table(["score", *groups], rows)]


def threshold_section(thresholds: dict) -> list[str]:
    lines = ["## 6. Thresholds: the false-alarm promise", "",
             "The new default's conformal threshold (calibration images only, never used to choose anything) applied to "
             "the held-out normal test images. k / n flagged, the rate with its 95 % interval, and the range a rate of "
             "exactly alpha gives on n images with 99 % probability.", ""]
    alphas = sorted({a for d in thresholds["datasets"].values() for a in d}, key=float, reverse=True)
    rows = []
    for name, cells in thresholds["datasets"].items():
        row = [name]
        for a in alphas:
            c = cells.get(a)
            row.append("cannot flag" if c is None else
                       f"{c['k']}/{c['n']} = {_f(c['rate'])} [{_f(c['interval'][0])}, {_f(c['interval'][1])}], promised "
                       f"[{_f(c['promised_99'][0])}, {_f(c['promised_99'][1])}]" + ("" if c["within"] else " **outside**"))
        rows.append(row)
    pooled = thresholds["pooled"]
    rows.append(["**pooled**", *(f"{pooled[a]['k']}/{pooled[a]['n']} = {_f(pooled[a]['rate'])} "
                                 f"[{_f(pooled[a]['interval'][0])}, {_f(pooled[a]['interval'][1])}], bar met: "
                                 f"{pooled[a]['meets_bar']}" for a in alphas)])
    lines += _table(["dataset", *(f"alpha = {a}" for a in alphas)], rows)
    small = thresholds.get("small_data", {})
    if "trained" in small:
        t, r = small["trained"], small["refused"]
        lines += [f"**Few normal images** ({small['category']}, alpha = {small['alpha']}): with {t.get('n_normal')} normal "
                  f"images the threshold is {'finite' if t.get('threshold_finite') else 'INFINITE'} "
                  f"({t.get('n_calibration')} calibration images), recall {_f(t.get('recall'))} and false-alarm rate "
                  f"{_f(t.get('false_alarm_rate'))} on the test split, against recall {_f(small['recall_1000'])} with "
                  f"1,000 normal images; with {r.get('n_normal')}: "
                  + (f"refused at train time: \"{r['message']}\"" if r.get("refused") else "NOT refused") + ".", ""]
    elif "skipped" in small:
        lines += [f"**Few normal images**: not measured in this run ({small['skipped']}).", ""]
    return lines


def drift_section(drift: dict) -> list[str]:
    if not drift:
        return []
    conditions = list(next(iter(drift.values()))["shifts"]) + [f"{s} defective" for s in
                                                              next(iter(drift.values()))["defect_shares"]]
    rows = []
    for family, r in drift.items():
        cells = [*(r["shifts"][k] for k in r["shifts"]), *(r["defect_shares"][k] for k in r["defect_shares"])]
        rows.append([family, *(f"{100 * c['rate']:.1f} % [{100 * c['ci95'][0]:.1f}, {100 * c['ci95'][1]:.1f}]"
                               for c in cells)])
    any_r = next(iter(drift.values()))
    return ["## 7. Drift told apart from defects", "",
            f"Batches of {any_r['batch_size']} test images ({any_r['n_batches']} per cell): shifted ones (the process "
            "changed: camera closer, gain down or up, focus lost) must be reported as drift; unshifted ones with a "
            "share of defective images must not. Drift reported, with its 95 % interval.", "",
            *_table(["family", *conditions], rows), *sets_section(drift)]


def sets_section(drift: dict) -> list[str]:
    """Whole test sets whose good parts differ from the training parts: reported by `score`'s checks or not."""
    found = {family: r["sets"] for family, r in drift.items() if r.get("sets")}
    if not found:
        return []
    any_r = next(iter(found.values()))
    rows = []
    for family, r in found.items():
        cells = []
        for c in r["conditions"].values():
            promise = "" if c["promise"] is None else f", promise {100 * c['promise']['rate']:.0f}"
            cells.append(f"{100 * c['either']['rate']:.1f} % [{100 * c['either']['ci95'][0]:.1f}, "
                         f"{100 * c['either']['ci95'][1]:.1f}] (drift {100 * c['drift']['rate']:.0f}{promise})")
        seeds = r["seed"]  # promise.pooled: the seed of each detector whose sets were added up
        detector = (f"promise at alpha {r['alpha']} with {r['n_calibration']} calibration images; "
                    f"{len(seeds)} detector{'s' if len(seeds) > 1 else ''}, seed {', '.join(map(str, seeds))}"
                    if r["detector"] else "no detector: drift test only")
        rows.append([f"{family} ({detector})", *cells])
    return ["", f"Whole test sets of {any_r['set_size']} good images ({any_r['n_sets']} per cell, drawn from "
            f"{any_r['n_pool']} test/good images): every good part seen at another scale (camera closer: "
            "scale_x<s>, or farther: scale_x1/<s>) or from other parts of the material (texture contrast times a factor) must be reported by `score` "
            "(drift test or broken promise, at least 95 %); unshifted sets must not (at most 5 %). Reported, with "
            "its 95 % interval, and how often each check fired (%). With a detector per training seed, each measures its "
            "own sets against its own calibration images and the cells add them up (the promise test's level holds over "
            "the calibration draw, not for one detector). The interval counts the sets as independent draws; they are not "
            "(a detector's sets share its pool of good images and its calibration images), so the rate is less certain "
            "than it says: the rate of each detector alone (below) shows how far one draw moves it.", "",
            *_table(["family", *any_r["conditions"]], rows), *per_detector_lines(found)]


def per_detector_lines(found: dict) -> list[str]:
    """Unshifted sets reported by each detector alone, with the share of its pool's good images it flagged."""
    parts = []
    for family, r in found.items():
        if len(r.get("by_detector") or []) < 2:
            continue
        cells = [f"seed {d['seed']} {100 * d['conditions']['unshifted']['either']['rate']:.1f} % (flags "
                 f"{100 * d['conditions']['unshifted']['pool_false_alarm_rate']:.1f} % of its good images)"
                 for d in r["by_detector"] if d["detector"]]
        if cells:
            parts.append(f"{family}: " + ", ".join(cells))
    return ["", "Unshifted sets reported, each detector alone: " + "; ".join(parts) + ".", ""] if parts else []


def later_rows(quality: dict) -> list[str]:
    """One line per later run that measured some rows of the kept section (`bench.quality_rows`): which rows, on
    which tasks."""
    labels, runs = dict(ROWS), {}
    for name, task in quality.items():
        for method, stamp in task.get("rows_from", {}).items():
            run = (stamp["date"], stamp["commit"], stamp.get("cpu") or "an unrecorded machine")
            runs.setdefault(run, {}).setdefault(method, []).append(name)
    return [f"Rows measured in a later run than the rest of this section (`bench.quality_rows`; {date}, commit "
            f"{commit}, on {cpu}): " + "; ".join(f"{labels.get(m, m)} on {', '.join(names)}" for m, names in rows.items())
            + "." for (date, commit, cpu), rows in runs.items()] + ([""] if runs else [])


def quality_section(quality: dict, thresholds: dict, drift: dict) -> list[str]:
    lines = ["## 5. Detection quality", "",
             "Every product row trains through `run_train` on the same split (training images; selection and "
             "calibration images held out) and is scored on the same test images; baselines fit on the same training "
             "images; maps are compared at the original resolution. Families `sand`, `mesh` and `film` are "
             "report-only: no default was chosen on them, their defects include kinds unlike anything the synthetic "
             "anomalies make; `film`'s texture drifts along the roll, its test parts beyond the training ones.", ""]
    lines += later_rows(quality)
    shared = [n for n, t in quality.items() for r in t.get("new_default", []) if r.get("trained_by") == "wall_time"]
    lines += ([f"The new default's seed-0 rows of {', '.join(shared)} measure the detectors section 1 trained (the "
               "README's `make train` at the defaults, 2 threads; their training seconds are those), not a second "
               "training of the same settings.", ""] if shared else [])
    refused = [f"`{n}`: {t['refused']}" for n, t in quality.items() if "refused" in t]
    alphas = sorted({a for t in quality.values() for r in t.get("new_default", []) for a in (r.get("false_alarm") or {})},
                    key=float)
    lines += detection_table(quality, alphas) + summary_table(quality) + comparison(quality)
    lines += [f"Refused tasks: {'; '.join(refused)}", ""] if refused else []
    lines += digits_table(quality, "digits one-vs-rest") + digits_table(quality, "digits leave-one-out")
    lines += seeds_table(quality) + scores_table(quality)
    lines += threshold_section(thresholds) if "skipped" not in thresholds else []
    return lines + (drift_section(drift) if "skipped" not in drift else [])
