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

from pipeline.config import project_root
from pipeline.detector.compute import MAP_KINDS
from pipeline.scoring.scores import SCORE_NAMES

PACKAGES = ("torch", "pytorch-lightning", "mlflow", "numpy", "scikit-learn", "scipy", "pillow", "pyod", "hydra-core")
METHODS = (("product", "VAE (product default)"), ("ae", "plain autoencoder"), ("pca", "PCA reconstruction"),
           ("pca_map_max", "PCA, map-max score"),
           ("iforest", "IsolationForest on pixels"), ("pyod_vae", "PyOD VAE"))


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
            "load_average_before": [round(v, 2) for v in os.getloadavg()], "commit": _git_commit(),
            "versions": versions}


def _f(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _speed(s: dict) -> list[str]:
    t, sc = s["training"], s["scoring"]
    lines = ["## 1. Training throughput", "",
             f"`{s['dataset']}`, {t['n_train']} training images, batch {t['batch_size']}, {t['epochs']} epochs "
             f"(the first is warm-up and not counted; every epoch includes its validation pass), "
             f"{s['torch_threads']} torch threads.", ""]
    lines += _table(["loop", "images/s", "images/CPU-s", "epoch seconds"], [
        ["Lightning pipeline (`run_train`: checkpoints, early stopping, MLflow)",
         _f(t["pipeline"]["images_per_second"], 1), _f(t["pipeline"]["images_per_cpu_second"], 1),
         ", ".join(_f(x, 2) for x in t["pipeline"]["epoch_seconds"])],
        ["raw PyTorch loop (same net, loss, Adam, data in memory)", _f(t["raw"]["images_per_second"], 1),
         _f(t["raw"]["images_per_cpu_second"], 1), ", ".join(_f(x, 2) for x in t["raw"]["epoch_seconds"])]])
    lines += [f"**Training efficiency (pipeline / raw): {_f(t['efficiency'], 2)} by wall time, "
              f"{_f(t['efficiency_cpu'], 2)} by CPU time**", "",
              "## 2. Scoring throughput", "",
              f"{sc['n_images']} test images of `{s['dataset']}`, batch {sc['batch_size']}, "
              f"{sc['num_workers']} DataLoader workers. *Same work* = `score_batch` on in-memory tensors: every "
              "score (incl. the K Monte Carlo decodes of neg_elbo/neg_iwae and the MSGMS map) and the smoothed map. "
              "*Bare forward* = encoder + posterior-mean decoder only.", ""]
    paths = [("end to end (`score_dataset`: read, decode, score, maps, write .npy)", sc["end_to_end"]),
             ("raw, same work, in memory", sc["raw_same_work"]), ("raw, bare encoder+decoder forward", sc["raw_bare_forward"])]
    lines += _table(["path", "images/s", "images/CPU-s", "seconds"],
                    [[label, _f(v["images_per_second"], 1), _f(v["images_per_cpu_second"], 1), _f(v["seconds"], 2)]
                     for label, v in paths])
    lines += [f"**End-to-end / same work: {_f(sc['ratio_same_work'], 2)} by wall time, {_f(sc['ratio_same_work_cpu'], 2)} "
              f"by CPU time; end-to-end / bare forward: {_f(sc['ratio_bare_forward'], 2)} by wall time, "
              f"{_f(sc['ratio_bare_forward_cpu'], 2)} by CPU time**", "",
              "Cost of each stage, measured separately on the same images (CPU time counts this process only, "
              "not DataLoader worker processes):", ""]
    total = sum(v["seconds"] for v in sc["stages"].values())
    lines += _table(["stage", "seconds", "CPU seconds", "images/s", "share of wall time"], [
        [name, _f(v["seconds"], 2), _f(v["cpu_seconds"], 2), _f(v["images_per_second"], 1),
         f"{100 * v['seconds'] / total:.0f}%"] for name, v in sc["stages"].items()])
    m = s["memory"]
    lines += ["## 3. Peak memory of streaming scoring", "",
              "`score_dataset(..., keep_maps=False)` in a fresh process per measurement (peak RSS: `VmHWM` of /proc/self/status, which starts afresh in each process); "
              "the test split is repeated to reach N.", ""]
    lines += _table(["images", "peak RSS (MB)", "RSS before scoring (MB)"],
                    [[str(r["n_images"]), _f(r["peak_rss_mb"], 0), _f(r["peak_rss_mb_before_scoring"], 0)] for r in m])
    lines += [f"Peak at 10N / peak at N: **{_f(m[1]['peak_rss_mb'] / m[0]['peak_rss_mb'], 2)}**", ""]
    return lines


def _quality(q: dict, alpha: float | None) -> list[str]:
    builtin = [n for n, r in q.items() if r["has_masks"]]
    digits = [n for n in q if not q[n]["has_masks"]]
    any_r = next(iter(q.values()))["product"]
    lines = ["## 4. Detection quality", "",
             f"Product default as composed from conf/: model `{any_r['model']}`, score `{any_r['score']}`, map "
             f"`{any_r['map']}`. All methods train on the same split (the product's validation images held out) and "
             "are scored on the same test images; maps are compared at the original resolution.", ""]
    for name in builtin:
        r = q[name]
        lines += [f"### `{name}` ({r['n_train']} train, {r['n_test']} test of which {r['n_anomalous']} defective)", ""]
        rows = []
        for key, label in METHODS:
            res = r[key] if key in ("product", "ae") else r["baselines"].get(key, {})
            if "skipped" in res:
                rows.append([label, "skipped: " + res["skipped"], "", ""])
            elif res:
                rows.append([label, _f(res["image_auroc"]), _f(res["pixel_auroc"]), _f(res["aupro"])])
        lines += _table(["method", "image AUROC", "pixel AUROC", "AUPRO"], rows)
    if digits:
        lines += [f"### digits: {len(digits)} one-class tasks (image AUROC; no masks)", ""]
        header = ["task", *(label for _, label in METHODS)]

        def cell(r, key):
            res = r[key] if key in ("product", "ae") else r["baselines"].get(key, {})
            return res.get("image_auroc")
        rows = [[n, *(_f(cell(q[n], k)) for k, _ in METHODS)] for n in digits]
        rows.append(["**mean**", *(_f(_mean(cell(q[n], k) for n in digits)) for k, _ in METHODS)])
        lines += _table(header, rows)
    lines += _seed_table(q, builtin, digits)
    cols = [*builtin, *(["digits (mean)"] if digits else [])]
    lines += ["### Every score of the product VAE (image AUROC)", ""]
    lines += _table(["score", *cols], [[s, *(_f(q[n]["product"]["scores"][s]) for n in builtin),
                                        *([_f(_mean(q[n]["product"]["scores"][s] for n in digits))] if digits else [])]
                                       for s in SCORE_NAMES])
    lines += ["### Every map kind of the product VAE", "",
              "pixel AUROC / AUPRO / image AUROC of the map's maximum; digits: image AUROC of the map's maximum.", ""]
    lines += _table(["map", *cols], [[k, *(" / ".join(_f(q[n]["product"]["maps"][k][m]) for m in
                                                       ("pixel_auroc", "aupro", "image_auroc")) for n in builtin),
                                      *([_f(_mean(q[n]["product"]["maps"][k]["image_auroc"] for n in digits))] if digits else [])]
                                     for k in MAP_KINDS])
    lines += [f"### False-alarm rate on held-out normal test images at alpha = {alpha}", "",
              "Threshold from the held-out normal validation images (conformal), applied to the normal test images "
              "(— = too few calibration images for this alpha).", "",
              "calibration / normal test images: " + ", ".join(f"`{n}` {q[n]['product']['n_calibration']} / "
                                                                 f"{q[n]['product']['n_normal_test']}" for n in builtin), ""]
    lines += _table(["score", *builtin], [[s, *(_f(q[n]["product"]["false_alarm"][s]) for n in builtin)]
                                          for s in SCORE_NAMES])
    return lines


def _seed_table(q: dict, builtin: list[str], digits: list[str]) -> list[str]:
    """VAE vs plain AE per training seed, default scoring: is the gap larger than the seed-to-seed spread?"""
    if not all("seeds" in r for r in q.values()):
        return []  # results from before seeds were recorded

    def by_seed(names: list[str], model: str) -> dict[int, dict]:
        """seed -> metrics, averaged over the datasets (one dataset: its own metrics)."""
        seeds = [e["seed"] for e in q[names[0]]["seeds"][model]]
        return {seed: {m: _mean(next(e[m] for e in q[n]["seeds"][model] if e["seed"] == seed) for n in names)
                       for m in ("image_auroc", "pixel_auroc", "aupro")} for seed in seeds}

    def triple(r: dict) -> str:
        return " / ".join(_f(r[m]) for m in ("image_auroc", "pixel_auroc", "aupro") if r[m] is not None)

    rows = []
    for label, names in [*((f"`{n}`", [n]) for n in builtin), *((["digits (mean)", digits],) if digits else ())]:
        vae, ae = by_seed(names, "product"), by_seed(names, "ae")
        for seed in vae:
            rows.append([label, str(seed), triple(vae[seed]), triple(ae[seed]),
                         f"{vae[seed]['image_auroc'] - ae[seed]['image_auroc']:+.3f}"])
        mean = {m: {k: _mean(r[k] for r in runs.values()) for k in ("image_auroc", "pixel_auroc", "aupro")}
                for m, runs in (("vae", vae), ("ae", ae))}
        rows.append([label, "**mean**", triple(mean["vae"]), triple(mean["ae"]),
                     f"**{mean['vae']['image_auroc'] - mean['ae']['image_auroc']:+.3f}**"])
    return ["### Product VAE vs plain autoencoder, per training seed", "",
            "Default score and map; one training per seed (the seed changes the weights, the Monte Carlo draws and "
            "the train/validation split; the test images are the same). image AUROC / pixel AUROC / AUPRO; "
            "digits: image AUROC, mean of the tasks.", "",
            *_table(["dataset", "seed", "VAE (product)", "plain autoencoder", "VAE - AE, image AUROC"], rows)]


def _kept_sections(context: dict) -> list[str]:
    """A line naming the sections measured by an earlier run (bench.sections), if any."""
    origin = context.get("sections_from", {})
    kept = [f"{s} ({o['date']}, commit {o['commit']})" for s, o in origin.items() if o.get("date") != context["date"]]
    return [f"Sections kept from earlier runs (`bench.sections`): {'; '.join(kept)}.", ""] if kept else []


def markdown(results: dict, context: dict, alpha: float | None = None) -> str:
    c = context
    lines = ["# Benchmarks", ""]
    if c["quick"]:
        lines += ["> **Quick run** (`make bench QUICK=1`): small sizes and short trainings. Speed figures are "
                  "indicative; quality figures are NOT the product's (its detectors trained a few epochs only).", ""]
    lines += [f"Generated by `{c['command']}` (`make bench`) on {c['date']}, commit {c['commit']}, in "
              f"{c['bench_seconds'] / 60:.1f} min. Performance work and profiles: [PERFORMANCE.md](PERFORMANCE.md).", "",
              f"Machine: {c['cpu']}, {c['logical_cpus']} logical CPUs, {_f(c['memory_gb'], 1)} GB RAM, {c['platform']}, "
              f"Python {c['python']}. Load average (1/5/15 min) before: {c['load_average_before']}, after: "
              f"{c['load_average_after']} — timings on a loaded machine are noisy.", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in c["versions"].items()), "",
              *_kept_sections(c),
              "Studies measured outside this run (how the default map, score and model were chosen; model "
              "variants; multi-process training): [docs/quality-studies.md](docs/quality-studies.md).", ""]
    lines += _speed(results["speed"])
    lines += _quality(results["quality"], alpha)
    w = results["wall_time"]
    lines += ["## 5. Wall time of `make train && make score`", ""]
    lines += ([f"**{w['seconds'] / 60:.1f} min** for: " + "; ".join(f"`{c}`" for c in w["commands"]) +
               " (default settings; outputs and MLflow store in the bench's work folder).", ""]
              if "seconds" in w else [f"Not measured: {w['skipped']}.", ""])
    return "\n".join(lines)


def write(results: dict, context: dict, md_path: Path, json_path: Path, alpha: float | None = None) -> tuple[Path, Path]:
    md_path.write_text(markdown(results, context, alpha))
    json_path.write_text(json.dumps({"context": context, **results}, indent=1, default=float))
    return md_path, json_path
