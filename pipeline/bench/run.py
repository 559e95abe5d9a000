"""`python -m pipeline bench`: assemble the speed, memory and quality measurements into one report.

Every product configuration is composed from conf/ (the defaults as they are when the bench runs,
plus `bench.overrides` and, in quick mode, `bench.sizes.quick.quality_overrides`); nothing here
hard-codes a model or score setting. Outputs go to a work folder; MLflow goes to a store inside it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from pipeline.bench import memory, quality, report, speed
from pipeline.config import compose, project_root
from pipeline.data.layout import scan_test
from pipeline.detector import AnomalyDetector

log = logging.getLogger(__name__)


def _isolated(work: Path, tag: str) -> list[str]:
    """Overrides that keep a product run's files and MLflow store inside the work folder."""
    return [f"output_root={work / tag}", f"tracking.store_dir={work / tag / 'mlruns'}", "tracking.uri=null"]


def measure_speed(bench: DictConfig, sizes: DictConfig, work: Path) -> dict:
    epochs = int(sizes.train_epochs)
    cfg = compose([*bench.overrides, f"data.category={bench.categories[0]}", f"trainer.max_epochs={epochs}",
                   f"trainer.min_epochs={epochs}", f"trainer.early_stopping_patience={epochs + 1}",
                   *_isolated(work, "speed"), f"tracking.enabled={str(bool(bench.speed_tracking)).lower()}"])
    training = speed.training_throughput(cfg)
    detector = AnomalyDetector.load(training["detector_dir"])
    samples = scan_test(cfg.data.root)
    if sizes.score_images:
        samples = samples[:int(sizes.score_images)]
    scoring = speed.scoring_throughput(detector, samples, work / "speed-scoring", cfg.data.batch_size,
                                       cfg.data.num_workers, bench.warmup_batches)
    n = int(sizes.memory_n)
    peaks = [memory.measure(Path(training["detector_dir"]), Path(cfg.data.root), count, cfg.data.batch_size,
                            work / f"memory-{count}") for count in (n, 10 * n)]
    return {"dataset": cfg.data.name, "torch_threads": torch.get_num_threads(),
            "training": training, "scoring": scoring, "memory": peaks}


def measure_quality(bench: DictConfig, sizes: DictConfig, work: Path) -> dict:
    base = [*sizes.quality_overrides, *bench.overrides, "tracking.enabled=false",
            "trainer.enable_progress_bar=false"]
    tasks = [(c, ["data=builtin", f"data.category={c}"]) for c in bench.categories]
    tasks += [(f"digit_{d}", ["data=digits", f"data.normal_digit={d}"]) for d in sizes.digits]
    results = {}
    for name, data in tasks:
        other_seeds = [_vae_and_ae(base, data, work, name, seed) for seed in sizes.extra_seeds]
        results[name] = quality.evaluate_dataset(*_vae_and_ae(base, data, work, name), bench, sizes, other_seeds)
    return results


def _vae_and_ae(base: list[str], data: list[str], work: Path, name: str,
                seed: int | None = None) -> tuple[DictConfig, DictConfig]:
    """The product VAE's and the plain AE's configs for one quality task (at `seed`, or the configured
    one), each in its own work folder."""
    seeded, tag = ([f"seed={seed}"], f"-seed{seed}") if seed is not None else ([], "")
    return tuple(compose([*base, *data, *model, *seeded, *_isolated(work, f"quality-{name}-{kind}{tag}")])
                 for kind, model in (("vae", []), ("ae", ["model=ae"])))


def measure_wall_time(bench: DictConfig, work: Path) -> dict:
    """`make train && make score` as the Makefile runs them (one command per category), at the
    default settings; only the output folder and the MLflow store are moved into the work folder."""
    isolated = _isolated(work, "wall")
    commands = [[sys.executable, "-m", "pipeline", step, f"data.category={c}", *isolated]
                for step in ("train", "score") for c in bench.categories]
    started = time.perf_counter()
    for command in commands:
        subprocess.run(command, cwd=project_root(), check=True, capture_output=True)
    return {"seconds": time.perf_counter() - started,
            "commands": [" ".join(["python", *c[1:5]]) for c in commands]}


SECTIONS = ("speed", "quality", "wall_time")


def previous_results(json_path: Path, keep: list[str]) -> tuple[dict, dict]:
    """The sections in `keep` from the committed BENCHMARKS.json, and the run each came from ({date, commit})."""
    if not keep:
        return {}, {}
    try:
        previous = json.loads(json_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"bench.sections leaves out {keep}, but {json_path} cannot be read to keep them: {err}") from err
    missing = [s for s in keep if s not in previous or previous.get("partial")]
    if missing:
        raise ValueError(f"bench.sections leaves out {missing}, but {json_path} has no complete result for them: "
                         "run them too")
    origin = previous["context"].get("sections_from", {})
    that_run = {"date": previous["context"]["date"], "commit": previous["context"]["commit"]}
    return {s: previous[s] for s in keep}, {s: origin.get(s) or that_run for s in keep}


def run_bench(cfg: DictConfig) -> dict:
    bench = cfg.bench
    sizes = bench.sizes.quick if bench.quick else bench.sizes.full
    sections = list(bench.sections)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"bench.sections must be a non-empty subset of {list(SECTIONS)}, got {sections}")
    kept, kept_from = previous_results(Path(bench.json), [s for s in SECTIONS if s not in sections])
    work = Path(bench.work_dir) if bench.work_dir else Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    context = report.machine_context(bench.quick)
    # Which run measured each section: this one, or (bench.sections) an earlier one kept from BENCHMARKS.json.
    context["sections_from"] = {s: kept_from.get(s) or {"date": context["date"], "commit": context["commit"]}
                                for s in SECTIONS}
    started = time.perf_counter()
    results = dict(kept)
    try:
        if "speed" in sections:
            results["speed"] = measure_speed(bench, sizes, work)
            # The quality phase is long: keep the speed figures on disk should it be interrupted.
            Path(bench.json).write_text(json.dumps({"context": context, "partial": True, **results}, indent=1,
                                                   default=float))
        if "quality" in sections:
            results["quality"] = measure_quality(bench, sizes, work)
        if "wall_time" in sections:
            results["wall_time"] = (measure_wall_time(bench, work) if sizes.wall_time
                                    else {"skipped": "not run in quick mode (bench.sizes.quick.wall_time=false)"})
    finally:
        if not bench.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    context["bench_seconds"] = time.perf_counter() - started
    context["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    written = report.write({s: results[s] for s in SECTIONS}, context, Path(bench.markdown), Path(bench.json),
                           bench.alpha_false_alarm)
    return {"markdown": str(written[0]), "json": str(written[1]), "seconds": context["bench_seconds"],
            "sections": sections}
