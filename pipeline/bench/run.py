"""`python -m pipeline bench`: assemble the measurements into one report (BENCHMARKS.md and .json).

Every product configuration is composed from conf/ (the defaults as they are when the bench runs, plus
`bench.overrides`, the method's overrides and, in quick mode, `bench.sizes.quick.quality_overrides`); nothing
here hard-codes a model or score setting. Outputs go to a work folder; MLflow goes to a store inside it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.bench import drift, memory, promise, quality, report, small_sets, speed, thresholds
from pipeline.commands.train import run_train
from pipeline.config import compose, configure_logging, project_root
from pipeline.data.layout import scan_test
from pipeline.data.splits import TooFewNormalImages
from pipeline.detector import AnomalyDetector
from pipeline.detector.checks import DriftSettings

log = logging.getLogger(__name__)
SECTIONS = ("wall_time", "speed", "quality", "thresholds", "small_sets", "drift")  # the report's order
# The most important and the longest first, but the README's commands before the quality section: their trainings are
# the new default's seed-0 rows of the built-in categories there (trained once, measured twice).
RUN_ORDER = ("wall_time", "quality", "thresholds", "small_sets", "drift", "speed")


def _isolated(work: Path, tag: str) -> list[str]:
    """Overrides that keep a product run's files and MLflow store inside the work folder."""
    return [f"output_root={work / tag}", f"tracking.store_dir={work / tag / 'mlruns'}", "tracking.uri=null"]


def tasks(bench: DictConfig, sizes: DictConfig) -> list[tuple[str, str, list[str]]]:
    """(task name, family label, data overrides): the built-in families, then the digits tasks of both protocols."""
    found = [(c, c, ["data=builtin", f"data.category={c}"]) for c in bench.families]
    found += [(f"digit_{d}", "digits one-vs-rest", ["data=digits", "data.protocol=one_vs_rest", f"data.normal_digit={d}"])
              for d in sizes.digits_one_vs_rest]
    found += [(f"loco_{d}", "digits leave-one-out", ["data=digits", "data.protocol=leave_one_out",
                                                     f"data.anomaly_digit={d}"]) for d in sizes.digits_leave_one_out]
    return found


class QualityJob(NamedTuple):
    """One task's trainings for a worker process: plain values only (it is pickled)."""
    task: str
    family: str
    runs: dict[str, list[list[str]]]  # method -> the overrides of each seed's run
    bench: dict
    alphas: list[float]
    extra_maps: tuple[str, ...]
    first_seed: bool                  # every method at its first seed (else: the new default's further seeds)
    baselines: bool                   # also fit the baselines on this task
    trained: dict = {}                # a run's output_root -> the detector another section trained (measure_wall_time)


def _quality_job(job: QualityJob) -> tuple[str, dict]:
    """One task in a worker process (one thread: the workers share the machine's cores)."""
    configure_logging()
    torch.set_num_threads(1)
    configs = {method: [compose(o) for o in lists] for method, lists in job.runs.items()}
    try:
        return job.task, {"family": job.family, **quality.evaluate_task(
            job.task, configs, OmegaConf.create(job.bench), job.alphas, job.extra_maps, job.baselines, job.trained)}
    except TooFewNormalImages as err:  # a task the split cannot serve is reported, never silently dropped
        return job.task, {"family": job.family, "dataset": job.task, "refused": str(err)}


def quality_jobs(bench: DictConfig, sizes: DictConfig, work: Path, rows: list[str] | None = None,
                 kept_tasks: frozenset[str] = frozenset(), trained: dict | None = None,
                 longest_first: bool = False) -> list[QualityJob]:
    """One job per task with every method at its first seed, then one job per task with the new default's further
    seeds: a run stopped early has every task at one seed rather than some tasks at two. `rows`: only these methods
    (bench.quality_rows); the baselines then run only on a task not in `kept_tasks` (the kept report has them).
    `trained`: {category: {detector_dir, train_seconds, trained_by, seed}} the wall-time section trained at the
    defaults: the new default's row of that category at that seed measures it rather than training it again. `longest_first` (no time
    budget to respect): the built-in families' further seeds before the shorter digits tasks, so the two workers
    finish together."""
    base = ["tracking.enabled=false", "trainer.enable_progress_bar=false", f"score.alpha={bench.alpha_sizes}"]
    last = [*sizes.quality_overrides, *bench.overrides]  # after the method's: quick sizes shorten every row
    plain = OmegaConf.to_container(bench, resolve=True)
    first_jobs, later_jobs = [], []
    for name, family, data in tasks(bench, sizes):
        seeds = list(sizes.seeds if family == name else sizes.digits_seeds)  # a built-in family, or a digits task

        def runs(method: str, chosen: list[int]) -> list[list[str]]:
            return [[*base, *data, *bench.methods[method], *last, f"seed={s}",
                     *_isolated(work, f"quality-{name}-{method}-{s}")] for s in chosen]

        first = {m: runs(m, seeds[:1] if m == "new_default" else list(sizes.baseline_seeds)) for m in bench.methods
                 if (rows is None or m in rows) and (family == name or m not in bench.family_only_methods)}
        if not first:  # every row asked for is a family-only one
            continue
        reused = {}
        if name in (trained or {}) and "new_default" in first and seeds[0] == trained[name]["seed"] \
                and not bench.overrides and not sizes.quality_overrides:  # the wall-time run is exactly this row's
            reused = {str(work / f"quality-{name}-new_default-{seeds[0]}"): trained[name]}
        cfg = compose(next(iter(first.values()))[0])
        quality.ensure_dataset(cfg.data, cfg.seed)  # here, not in two workers at once
        extra_maps = ("map.balanced",) if family == name else ()
        first_jobs.append(QualityJob(name, family, first, plain, list(bench.alphas), extra_maps, first_seed=True,
                                     baselines=name not in kept_tasks, trained=reused))
        if seeds[1:] and "new_default" in first:
            later_jobs.append(QualityJob(name, family, {"new_default": runs("new_default", seeds[1:])}, plain,
                                         list(bench.alphas), (), first_seed=False, baselines=False))
    if longest_first:
        families = [job for job in first_jobs if job.family == job.task]
        return families + later_jobs + [job for job in first_jobs if job.family != job.task]
    return first_jobs + later_jobs


def job_label(job: QualityJob) -> str:
    """'<task> <method> seed <s>, ...' for each run a quality job would train."""
    return ", ".join(f"{job.task} {method} seed {o.split('=', 1)[1]}" for method, lists in job.runs.items()
                     for config in lists for o in config if o.startswith("seed="))


def merged(first: dict, further: dict, order: list[str] | None = None) -> dict:
    """Each task's first-seed result with the new default's further seeds appended in seed order, whichever
    finished first; tasks in `order` (the jobs' order), not in the order they finished."""
    rank = {name: i for i, name in enumerate(order or [])}
    results = {name: {**first[name]} for name in sorted(first, key=lambda n: rank.get(n, len(rank)))}
    for name, rows in further.items():
        if "new_default" in results.get(name, {}):
            results[name]["new_default"] = sorted(results[name]["new_default"] + rows, key=lambda r: r.get("seed", 0))
    return results


def merge_rows(kept: dict, measured: dict, rows: list[str], stamp: dict) -> dict:
    """The kept quality section with the rows (methods) in `rows` of every measured task replaced by this run's, each
    named in the task's `rows_from` with `stamp` (the run that measured it); a task the kept section lacks (or
    refused) joins as measured. Nothing else of the kept section changes."""
    out = {name: {**task} for name, task in kept.items()}
    for name, task in measured.items():
        if name not in out or "refused" in out[name] or "refused" in task:
            out[name] = {**task, "rows_from": {m: stamp for m in rows if m in task}}
            continue
        for method in rows:
            if method in task:
                out[name][method] = task[method]
                out[name]["rows_from"] = {**out[name].get("rows_from", {}), method: stamp}
    return out


def measure_quality(bench: DictConfig, sizes: DictConfig, work: Path, progress=None,
                    minutes: float | None = None, left_out: list | None = None, rows: list[str] | None = None,
                    kept_tasks: frozenset[str] = frozenset(), trained: dict | None = None) -> dict:
    """Every job in `bench.workers` processes, the built-in families first (the longest). With `minutes`, no job
    starts after that many minutes: the runs of the jobs never started are appended to `left_out`. `rows`,
    `kept_tasks`, `trained`: see quality_jobs."""
    jobs = quality_jobs(bench, sizes, work, rows, kept_tasks, trained, longest_first=minutes is None)
    order = list(dict.fromkeys(job.task for job in jobs))
    deadline = None if minutes is None else time.monotonic() + 60 * float(minutes)
    left_out = [] if left_out is None else left_out
    first, further, waiting, running = {}, {}, list(enumerate(jobs)), {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=int(bench.workers), mp_context=context) as pool:
        def start_jobs() -> None:
            while waiting and len(running) < int(bench.workers):
                if deadline is not None and time.monotonic() >= deadline:
                    left_out.extend(job_label(job) for _, job in waiting)
                    waiting.clear()
                    return
                index, job = waiting.pop(0)
                running[pool.submit(_quality_job, job)] = index

        start_jobs()
        done = 0
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name, result = future.result()
                if jobs[running.pop(future)].first_seed:
                    first[name] = result
                else:  # the new default's further seeds of a task
                    further.setdefault(name, []).extend(result.get("new_default", []))
                done += 1
                log.info("bench quality: %d/%d jobs done (%s)", done, len(jobs), name)
            start_jobs()
            if progress is not None and running:
                progress(merged(first, further, order))
    if left_out:
        log.warning("bench quality: %d jobs left out (bench.quality_minutes=%s): %s", len(left_out), minutes,
                    "; ".join(left_out))
    return merged(first, further, order)


def measure_speed(bench: DictConfig, sizes: DictConfig, work: Path) -> dict:
    epochs = int(sizes.train_epochs)

    def config(method: list[str], tag: str) -> DictConfig:
        return compose([*bench.overrides, f"data.category={bench.families[0]}", *method, f"trainer.max_epochs={epochs}",
                        f"trainer.min_epochs={epochs}", f"trainer.early_stopping_patience={epochs + 1}",
                        f"head.steps={sizes.head_steps}", f"head.validate_every={sizes.head_steps}",
                        "trainer.enable_progress_bar=false", *_isolated(work, tag)])

    cfg = config([], "speed")
    training = speed.training_throughput(cfg)
    detector = AnomalyDetector.load(training["detector_dir"])
    # The detector the speed issue must never fall behind, trained with the same short schedule, timed beside it.
    name = bench.speed_reference
    references = ({name: AnomalyDetector.load(run_train(config(list(bench.methods[name]), f"speed-{name}"))["detector_dir"])}
                  if name else {})
    samples = scan_test(cfg.data.root)
    if sizes.score_images:
        samples = samples[:int(sizes.score_images)]
    scoring = speed.scoring_throughput(detector, samples, work / "speed-scoring", cfg.data.batch_size,
                                       cfg.data.num_workers, bench.warmup_batches, int(bench.scoring_repeats),
                                       references)
    n = int(sizes.memory_n)
    peaks = [memory.measure(Path(training["detector_dir"]), Path(cfg.data.root), count, cfg.data.batch_size,
                            work / f"memory-{count}") for count in (n, 10 * n)]
    return {"dataset": cfg.data.name, "torch_threads": torch.get_num_threads(), "training": training,
            "scoring": scoring, "memory": peaks}


def measure_wall_time(bench: DictConfig, work: Path) -> dict:
    """`make train && make score` as the Makefile runs them (one command per built-in category), at the defaults;
    only the output folder and the MLflow store are moved into the work folder."""
    isolated = _isolated(work, "wall")
    defaults = compose([])
    categories = list(defaults.data.generate.categories)
    commands = [[sys.executable, "-m", "pipeline", step, f"data.category={c}", *isolated]
                for step in ("train", "score") for c in categories]
    started, seconds = time.perf_counter(), []
    for command in commands:
        begun = time.perf_counter()
        subprocess.run(command, cwd=project_root(), check=True, capture_output=True)
        seconds.append(time.perf_counter() - begun)
    trained = {}  # the defaults: the quality section's new default on these categories at this seed
    for category, train_seconds in zip(categories, seconds):
        detector = quality.newest_detector(work / "wall" / "train" / category, "*/detector/detector.json")
        if detector is not None:
            trained[category] = {"detector_dir": str(detector), "train_seconds": train_seconds,
                                 "trained_by": "wall_time", "seed": int(defaults.seed)}
    return {"seconds": time.perf_counter() - started, "per_command": seconds,
            "commands": [" ".join(["python", *c[1:5]]) for c in commands], "trained": trained}


def measure_thresholds(bench: DictConfig, sizes: DictConfig, work: Path, quality_results: dict) -> dict:
    table = thresholds.false_alarm_table({k: v for k, v in quality_results.items() if "refused" not in v},
                                         list(bench.alphas))
    if not sizes.small_data:
        return {**table, "small_data": {"skipped": "bench.sizes.<size>.small_data is false (quick mode, or left out)"}}
    reference = quality_results.get(bench.small_data.category, {}).get("new_default", [{}])[0]
    recall = ((reference.get("false_alarm") or {}).get(str(bench.alpha_sizes)) or {}).get("recall")
    base = [*bench.overrides, "tracking.enabled=false", "trainer.enable_progress_bar=false"]
    table["small_data"] = thresholds.small_data(base, work, bench, float(bench.alpha_sizes), recall)
    return table


def set_detectors(bench: DictConfig, family: str, quality_results: dict | None) -> list[AnomalyDetector]:
    """The detectors whose promise the test-set check measures: bench.drift.sets.detectors[family] (a folder or a
    list of folders), else every detector this run's quality section trained (the new default at each seed); none
    when neither exists."""
    given = bench.drift.sets.detectors.get(family)
    rows = ((quality_results or {}).get(family) or {}).get("new_default") or []
    folders = ([given] if isinstance(given, str) else list(given)) if given else [r.get("detector_dir") for r in rows]
    return [AnomalyDetector.load(folder) for folder in folders if folder and Path(folder).is_dir()]


def measure_drift(bench: DictConfig, work: Path, quality_results: dict | None = None) -> dict:
    cfg = compose([*bench.overrides])
    d, i, sets = bench.drift, cfg.inspect, bench.drift.sets
    split = drift.SplitSettings(alpha=float(bench.alpha_sizes), **cfg.data.split)
    results = {}
    for family in bench.families:
        root = quality.ensure_dataset(compose([*bench.overrides, f"data.category={family}"]).data, cfg.seed)
        results[family] = drift.measure_drift(
            root, cfg.data.image_size, d.n_reference, d.batch_size, d.n_batches, cfg.seed, split=split,
            shifts=drift.process_shifts(d.zoom, list(d.gains), d.blur_sigma), defect_shares=list(d.defect_shares),
            drift=DriftSettings.from_config(i))
        # One measurement per detector, each against its own calibration images (the split of its seed)
        detectors = set_detectors(bench, family, quality_results) or [None]
        results[family]["sets"] = promise.pooled([promise.measure_promise(
            root, cfg.data.image_size, sets.set_size, sets.n_sets,
            cfg.seed if detector is None else int(detector.spec.extra.get("seed", cfg.seed)),
            shifts=promise.set_shifts(list(sets.scales), list(sets.textures), sets.texture_sigma),
            drift=DriftSettings.from_config(i), level=cfg.score.promise_level, detector=detector, pool=sets.pool,
            split=split, batch_size=cfg.data.batch_size) for detector in detectors])
    return results


def previous_results(json_path: Path, keep: list[str]) -> tuple[dict, dict]:
    """The sections in `keep` from the committed BENCHMARKS.json, and the run each came from ({date, commit})."""
    if not keep:
        return {}, {}
    try:
        previous = json.loads(json_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"bench.sections leaves out {keep}, but {json_path} cannot be read to keep them: {err}") from err
    # A stopped run's sections are kept as they are: a section it never reached says so ("skipped"), and its
    # quality section holds the tasks it finished; the report names the run each section comes from.
    missing = [s for s in keep if s not in previous]
    if missing:
        raise ValueError(f"bench.sections leaves out {missing}, but {json_path} has no result for them: run them too")
    origin = previous["context"].get("sections_from", {})
    that_run = {"date": previous["context"]["date"], "commit": previous["context"]["commit"],
                "cpu": previous["context"].get("cpu"), "stopped_early": bool(previous["context"].get("partial"))}
    return {s: previous[s] for s in keep}, {s: origin.get(s) or that_run for s in keep}


def run_bench(cfg: DictConfig) -> dict:
    bench = cfg.bench
    sizes = bench.sizes.quick if bench.quick else bench.sizes.full
    sections = list(bench.sections)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"bench.sections must be a non-empty subset of {list(SECTIONS)}, got {sections}")
    if bench.speed_reference and bench.speed_reference not in bench.methods:
        raise ValueError(f"bench.speed_reference={bench.speed_reference} is not one of bench.methods {list(bench.methods)}")
    rows = list(bench.quality_rows) if bench.quality_rows else None
    if rows is not None and ("quality" not in sections or set(rows) - set(bench.methods)):
        raise ValueError(f"bench.quality_rows={rows} needs the quality section in bench.sections and names among "
                         f"bench.methods {list(bench.methods)}")
    # quality_rows: the quality section is the committed one, with those rows measured again
    kept, kept_from = previous_results(Path(bench.json), [s for s in SECTIONS if s not in sections or
                                                          (s == "quality" and rows is not None)])
    work = Path(bench.work_dir) if bench.work_dir else Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    context = report.machine_context(bench.quick)
    context["budget_minutes"] = float(bench.budget_minutes)
    context["reused"] = bool(bench.reuse)  # a resumed run: its minutes leave out what the earlier run trained
    context["full_run"] = (not bench.quick and set(sections) == set(SECTIONS) and rows is None
                           and bench.quality_minutes is None and not context["reused"])
    context["sections_from"] = {s: kept_from.get(s) or {"date": context["date"], "commit": context["commit"],
                                                       "cpu": context["cpu"]} for s in SECTIONS}
    started, results = time.perf_counter(), dict(kept)
    kept_quality = results.pop("quality", {}) if rows is not None else {}
    stamp = {key: context[key] for key in ("date", "commit", "cpu")}

    def with_kept_rows(measured: dict) -> dict:
        return merge_rows(kept_quality, measured, rows, stamp) if rows is not None else measured

    def save(partial: bool) -> tuple[Path, Path]:
        """Report what is measured so far: a long run stopped half-way still leaves a readable report."""
        context["bench_seconds"] = time.perf_counter() - started
        context["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
        context["partial"] = partial
        shown = {s: results.get(s, {"skipped": "the run stopped before this section"}) for s in SECTIONS}
        return report.write(shown, context, Path(bench.markdown), Path(bench.json))

    def quality_progress(partial: dict) -> None:
        results["quality"] = with_kept_rows(partial)
        save(partial=True)

    measures = {"wall_time": lambda: (measure_wall_time(bench, work) if not bench.quick
                                      else {"skipped": "not run in quick mode"}),
                "speed": lambda: measure_speed(bench, sizes, work),
                "quality": lambda: with_kept_rows(measure_quality(
                    bench, sizes, work, quality_progress, bench.quality_minutes,
                    context.setdefault("quality_left_out", []), rows, frozenset(kept_quality),
                    (results.get("wall_time") or {}).get("trained") if "wall_time" in sections else None)),
                "thresholds": lambda: measure_thresholds(bench, sizes, work, results["quality"]),
                "small_sets": lambda: (small_sets.measure_small_sets(bench, work, list(sizes.quality_overrides))
                                       if sizes.small_sets else {"skipped": "bench.sizes.<size>.small_sets is false"}),
                "drift": lambda: measure_drift(bench, work, results.get("quality"))}
    try:
        for section in RUN_ORDER:
            if section in sections:
                log.info("bench: %s", section)
                begun = time.perf_counter()
                results[section] = measures[section]()
                context.setdefault("section_seconds", {})[section] = time.perf_counter() - begun
                save(partial=True)
    finally:
        if not bench.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    written = save(partial=False)
    return {"markdown": str(written[0]), "json": str(written[1]), "seconds": context["bench_seconds"],
            "sections": sections}
