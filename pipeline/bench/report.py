"""Write the benchmark results as BENCHMARKS.md (for people) and BENCHMARKS.json (for tools)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from pipeline.bench import small_sets
from pipeline.bench.report_quality import quality_section
from pipeline.config import project_root

# The product before the detector API (commit 2e25f1f, its BENCHMARKS.md section 2, on an AMD EPYC 2-core): every
# image computed all eight scores, the Monte Carlo decodes and the MSGMS map included.
PREVIOUS_SCORING = ("For comparison, the product before the detector API (commit 2e25f1f, every score for every "
                    "image; measured on an AMD EPYC 2-core): 123.6 images/s end to end on 550 `fabric` images, 0.10 of "
                    "its bare encoder+decoder forward (1276.6 images/s).")
PACKAGES = ("torch", "pytorch-lightning", "mlflow", "numpy", "scikit-learn", "scipy", "pillow", "hydra-core")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return None


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=project_root(), capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_root(),
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_context(quick: bool) -> dict:
    """Machine, versions and command, recorded before the measurements start."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": bool(quick),
            "command": ("python -m pipeline " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"]
                        else "python -m pipeline bench" + (" bench.quick=true" if quick else "") + " (called in-process)"),
            "platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(), "memory_gb": _memory_gb(),
            "load_average_before": [round(v, 2) for v in os.getloadavg()], "commit": _git_commit(), "versions": versions}


def f(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def _wall_time(w: dict) -> list[str]:
    lines = ["## 1. Wall time of `make train && make score`", ""]
    if "seconds" not in w:
        return lines + [f"Not measured: {w['skipped']}.", ""]
    per = "; ".join(f"`{c}` {s:.0f} s" for c, s in zip(w["commands"], w.get("per_command", [])))
    return lines + [f"**{w['seconds'] / 60:.1f} min** at the default settings (outputs and MLflow store in the bench's "
                    f"work folder, the built-in data generated before): {per}.", ""]


def _speed(s: dict) -> list[str]:
    t, sc = s["training"], s["scoring"]
    lines = ["## 2. Training throughput", "",
             f"`{s['dataset']}`, {t['n_train']} training images, batch {t['batch_size']}, {t['epochs']} VAE epochs (the "
             f"first is warm-up and not counted; every epoch includes its validation pass), {s['torch_threads']} torch "
             f"threads. The learned map: {t['head_steps']} steps in {f(t['head_seconds'], 1)} s.", ""]
    hs = t.get("head_step") or {}
    if hs:
        lines += [f"Learned-map step in the product's training (anomalies drawn, reconstructed, the head's forward, "
                  f"backward and Adam, Lightning, one validation): {f(1000 * hs['step_seconds'], 1)} ms; the same head's "
                  f"forward + backward + Adam on a ready batch: {f(1000 * hs['ready_step_seconds'], 1)} ms: **ratio "
                  f"{f(hs['ratio'], 2)}**. Drawing one batch's anomalies costs {f(1000 * hs['synthesis_seconds'], 1)} ms, "
                  f"reconstructing it {f(1000 * hs['reconstruction_seconds'], 1)} ms.", ""]
    lines += table(["loop", "images/s", "images/CPU-s", "epoch seconds"], [
        ["Lightning pipeline (`run_train`: checkpoints, early stopping, MLflow)", f(t["pipeline"]["images_per_second"], 1),
         f(t["pipeline"]["images_per_cpu_second"], 1), ", ".join(f(x, 2) for x in t["pipeline"]["epoch_seconds"])],
        ["raw PyTorch loop (same net, loss, Adam, data in memory)", f(t["raw"]["images_per_second"], 1),
         f(t["raw"]["images_per_cpu_second"], 1), ", ".join(f(x, 2) for x in t["raw"]["epoch_seconds"])]])
    lines += [f"**Training efficiency (pipeline / raw): {f(t['efficiency'], 2)} by wall time, "
              f"{f(t['efficiency_cpu'], 2)} by CPU time**", "", "## 3. Scoring throughput", "",
              f"{sc['n_images']} test images of `{s['dataset']}`, batch {sc['batch_size']}, {sc['num_workers']} DataLoader "
              f"workers; each path run {sc.get('repeats', 1)} times, interleaved, its median run shown (every run's "
              "seconds in BENCHMARKS.json). *Same work* = the detector's batch computation on in-memory tensors (its "
              "network calls, the map, the scores its decision needs). *Bare forward* = its networks once each, "
              "nothing else. Network calls per image (images through each network): "
              + ", ".join(f"{k} {v:g}" for k, v in sc["network_calls_per_image"].items()) + ".", ""]
    paths = [("end to end (`score_files`: read, decode, score, maps, write .npy)", sc["end_to_end"]),
             ("same work, in memory", sc["raw_same_work"]), ("bare forward of the networks", sc["raw_bare_forward"])]
    lines += table(["path", "images/s", "images/CPU-s", "seconds"],
                   [[label, f(v["images_per_second"], 1), f(v["images_per_cpu_second"], 1), f(v["seconds"], 2)]
                    for label, v in paths])
    for name, ref in (sc.get("references") or {}).items():
        lines += [f"In the same loop, end to end with the `{name}` detector (`bench.speed_reference`, trained with the "
                  f"same short schedule): {f(ref['images_per_second'], 1)} images/s "
                  f"({f(ref['images_per_cpu_second'], 1)} per CPU-s): **the new default / it: {f(ref['ratio'], 2)}**.", ""]
    lines += [PREVIOUS_SCORING, ""]
    lines += [f"**End-to-end / same work: {f(sc['ratio_same_work'], 2)} by wall time, {f(sc['ratio_same_work_cpu'], 2)} "
              f"by CPU time; end-to-end / bare forward: {f(sc['ratio_bare_forward'], 2)} by wall time, "
              f"{f(sc['ratio_bare_forward_cpu'], 2)} by CPU time**", "", "Cost of each stage on the same images:", ""]
    total = sum(v["seconds"] for v in sc["stages"].values())
    lines += table(["stage", "seconds", "CPU seconds", "images/s", "share of wall time"], [
        [name, f(v["seconds"], 2), f(v["cpu_seconds"], 2), f(v["images_per_second"], 1),
         f"{100 * v['seconds'] / total:.0f}%"] for name, v in sc["stages"].items()])
    m = s["memory"]
    lines += ["## 4. Peak memory of streaming scoring", "",
              "`score_files` in a fresh process per measurement (peak RSS: `VmHWM` of /proc/self/status); the test split "
              "is repeated to reach N.", ""]
    lines += table(["images", "peak RSS (MB)", "RSS before scoring (MB)"],
                   [[str(r["n_images"]), f(r["peak_rss_mb"], 0), f(r["peak_rss_mb_before_scoring"], 0)] for r in m])
    return lines + [f"Peak at 10N / peak at N: **{f(m[1]['peak_rss_mb'] / m[0]['peak_rss_mb'], 2)}**", ""]


def _kept_sections(context: dict) -> list[str]:
    origin = context.get("sections_from", {})
    kept = [f"{s} ({o['date']}, commit {o['commit']}, {'on ' + o['cpu'] if o.get('cpu') else 'machine not recorded'}"
            f"{', a run stopped before its end' if o.get('stopped_early') else ''})"
            for s, o in origin.items() if o.get("date") != context["date"]]
    return [f"Sections kept from earlier runs (`bench.sections`; times compare only within one machine): "
            f"{'; '.join(kept)}.", ""] if kept else []


def _time_per_section(c: dict) -> list[str]:
    """Where this run's minutes went, against the budget a full run must fit (bench.budget_minutes)."""
    spent = c.get("section_seconds") or {}
    if not spent:
        return []
    budget = c.get("budget_minutes")
    verdict = (f" A full run must fit in {budget:g} min: {'within' if c['bench_seconds'] <= 60 * budget else '**over**'}"
               f" the budget." if budget and c.get("full_run") else "")
    if c.get("reused"):
        verdict += (" A resumed run (`bench.reuse`): the detectors an earlier run trained in its work folder were "
                    "measured, not trained again, so these minutes are not a whole run's.")
    return ["Minutes per section of this run: " + ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in spent.items())
            + "." + verdict, ""]


def markdown(results: dict, context: dict) -> str:
    c = context
    lines = ["# Benchmarks", ""]
    if c["quick"]:
        lines += ["> **Quick run** (`make bench QUICK=1`): small sizes and short trainings. Speed figures are "
                  "indicative; quality figures are NOT the product's.", ""]
    if c.get("partial"):
        lines += ["> **Partial run**: the report of a run still going or stopped; sections not yet measured are "
                  "named below.", ""]
    lines += [f"Generated by `{c['command']}` (`make bench`) on {c['date']}, commit {c['commit']}, in "
              f"{c['bench_seconds'] / 60:.1f} min. How every default was chosen: [docs/defaults.md](docs/defaults.md).", "",
              f"Machine of this run: {c['cpu']}, {c['logical_cpus']} logical CPUs, {f(c['memory_gb'], 1)} GB RAM, {c['platform']}, "
              f"Python {c['python']}. Load average (1/5/15 min) before: {c['load_average_before']}, after: "
              f"{c['load_average_after']}.", "", "Versions: " + ", ".join(f"{k} {v}" for k, v in c["versions"].items()),
              "", *_time_per_section(c), *_kept_sections(c)]
    skipped = {name: value["skipped"] for name, value in results.items() if "skipped" in value}
    lines += [f"Not measured in this run: {'; '.join(f'{n} ({why})' for n, why in skipped.items())}.", ""] if skipped else []
    if c.get("quality_left_out"):
        lines += [f"**Left out to keep the quality section within `bench.quality_minutes`** (not started when its time "
                  f"was up; their rows are missing below): {'; '.join(c['quality_left_out'])}.", ""]
    lines += _wall_time(results["wall_time"])
    lines += _speed(results["speed"]) if "speed" not in skipped else []
    if "quality" not in skipped:  # thresholds and drift are shown where measured (each section on its own)
        lines += quality_section(results["quality"], results["thresholds"], results["drift"])
    lines += small_sets.markdown(results.get("small_sets") or {"skipped": "not in this report"})
    return "\n".join(lines)


def write(results: dict, context: dict, md_path: Path, json_path: Path) -> tuple[Path, Path]:
    md_path.write_text(markdown(results, context))
    json_path.write_text(json.dumps({"context": context, **results}, indent=1, default=float))
    return md_path, json_path
