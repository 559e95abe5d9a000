"""Small normal sets: the split scheme (one detector; training, selection and calibration shares) against the
cross-conformal scheme (data.split.scheme=cross: K detectors, every image calibrates the one that did not train on
it), on the same images, in one run: the built-in families generated with few normal images and the digits
one-vs-rest tasks (about 125 normal images each). Per task and scheme: image AUROC, the false-alarm rate on the
good test images and the detection rate at each alpha; pooled false alarms of each scheme over the tasks."""

from __future__ import annotations

import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.bench import quality
from pipeline.bench.thresholds import false_alarm_table
from pipeline.config import compose, configure_logging
from pipeline.data.generators import generate_category
from pipeline.data.images import ReadOptions
from pipeline.data.splits import TooFewNormalImages

log = logging.getLogger(__name__)
SCHEMES = ("split", "cross")


def small_set_tasks(bench: DictConfig, work: Path) -> list[tuple[str, list[str]]]:
    """(task name, data overrides): each family in bench.small_sets.categories generated with n_train normal images
    (the default test split), then the digits one-vs-rest tasks, then any data root of bench.small_sets.roots."""
    s, found = bench.small_sets, []
    for category in s.categories:
        root = work / f"small-sets-{int(s.n_train)}" / category
        if not root.exists():
            generate_category(root.parent, category, seed=0, image_size=int(s.image_size), n_train=int(s.n_train),
                              n_test_good=int(s.n_test_good), n_test_defect_per_type=int(s.n_test_defect_per_type))
        found.append((f"{category}_{int(s.n_train)}", [f"data.root={root}"]))
    for digit in s.digits_one_vs_rest:
        found.append((f"digit_{digit}", ["data=digits", "data.protocol=one_vs_rest", f"data.normal_digit={digit}"]))
    return found + [(name, [f"data.root={root}"]) for name, root in (s.get("roots") or {}).items()]


def quality_cross_detector(work: Path, name: str, seed: int, members: int) -> Path | None:
    """The output folder of the quality section's new default on this task and seed, when it trained a
    cross-conformal detector of `members` members there (the digits one-vs-rest tasks at alpha = 0.01): its members'
    training does not depend on alpha, so this section measures it rather than training it again."""
    output = work / f"quality-{name}-new_default-{seed}"
    found = sorted(output.glob("train/*/*/detector/detector.json"))
    if not found:
        return None
    spec = json.loads(found[-1].read_text())
    return output if spec.get("scheme") == "cross" and len(spec.get("members") or []) == members else None


def _job(job: tuple) -> tuple[str, str, dict]:
    """One task under one scheme in a worker process (one thread: the workers share the machine's cores)."""
    name, scheme, overrides, alphas, reuse = job
    configure_logging()
    torch.set_num_threads(1)
    cfg = compose(overrides)
    try:
        split = quality.load_test_split(Path(cfg.data.root), cfg.data.image_size,
                                        ReadOptions.from_config(cfg.data))
        return name, scheme, quality.product_row(cfg, split, alphas, reuse=reuse)
    except TooFewNormalImages as err:
        return name, scheme, {"refused": str(err)}


def measure_small_sets(bench: DictConfig, work: Path, quick_overrides: list[str]) -> dict:
    """Both schemes on every small-set task, `bench.workers` at a time (a task's cross row, the longest, first)."""
    s = bench.small_sets
    base = ["tracking.enabled=false", "trainer.enable_progress_bar=false", f"score.alpha={s.alpha}"]
    jobs = []
    for name, data in small_set_tasks(bench, work):
        cfg = compose([*base, *data, *bench.overrides])
        quality.ensure_dataset(cfg.data, cfg.seed)  # here, not in two workers at once
        for scheme in reversed(SCHEMES):
            output, reuse = work / f"small-{name}-{scheme}", bool(bench.reuse)
            shared = quality_cross_detector(work, name, int(s.seed), int(s.members)) if scheme == "cross" else None
            if shared is not None:  # the quality section trained these members already (alpha changes no weight)
                output, reuse = shared, True
            overrides = [*base, *data, *quick_overrides, *bench.overrides, f"data.split.scheme={scheme}",
                         f"data.split.members={s.members}", f"seed={s.seed}", f"output_root={output}"]
            jobs.append((name, scheme, overrides, list(bench.alphas), reuse))
    rows: dict = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=int(bench.workers), mp_context=context) as pool:
        for name, scheme, row in pool.map(_job, jobs):
            rows.setdefault(name, {})[scheme] = row
            log.info("small sets: %s %s image AUROC %s", name, scheme, row.get("image_auroc"))
    pooled = {scheme: false_alarm_table({n: {"new_default": [r[scheme]]} for n, r in rows.items()
                                         if "refused" not in r.get(scheme, {"refused": 1})}, list(bench.alphas))
              for scheme in SCHEMES}
    gains = {n: r["cross"]["image_auroc"] - r["split"]["image_auroc"] for n, r in rows.items()
             if "image_auroc" in r.get("cross", {}) and "image_auroc" in r.get("split", {})}
    return {"settings": OmegaConf.to_container(s, resolve=True), "tasks": rows, "pooled": pooled,
            "auroc_gain": gains}


def markdown(result: dict) -> list[str]:
    if "skipped" in result:
        return []
    s, alphas = result["settings"], sorted(result["pooled"]["cross"]["pooled"], key=float, reverse=True)
    lines = ["## Small normal sets: one detector or cross-conformal members", "",
             f"Each task trained twice at `score.alpha={s['alpha']}`, seed {s['seed']}: `data.split.scheme=split` (one "
             f"detector; training, selection and calibration shares) and `data.split.scheme=cross` ({s['members']} "
             "detectors; every normal image calibrates the one that did not train on it and trains most of the others). "
             f"The built-in families are generated with {s['n_train']} normal images (test split as the defaults); the "
             "digits one-vs-rest tasks have about 125. False alarms: good test images flagged at each alpha (the "
             "threshold recomputed from the same calibration); detection: defective test images flagged. "
             "`python -m pipeline bench \"bench.sections=[small_sets]\"`.", "",
             "| task | scheme | normal images train / calibrate | image AUROC | "
             + " | ".join(f"false alarms @ {a} | detection @ {a}" for a in alphas) + " |",
             "|---|---|---|---|" + "---|---|" * len(alphas)]
    for name, rows in result["tasks"].items():
        for scheme in SCHEMES:
            row = rows.get(scheme, {})
            if "refused" in row:
                lines.append(f"| {name} | {scheme} | refused: {row['refused'][:80]} |")
                continue
            if not row:
                continue
            cells = []
            for a in alphas:
                fa = (row.get("false_alarm") or {}).get(a)
                cells += ["cannot flag", "-"] if fa is None else [f"{fa['rate']:.3f} ({fa['k']}/{fa['n']})", f"{fa['recall']:.3f}"]
            lines.append(f"| {name} | {scheme} | {row['n_train']} x {row.get('n_members', 1)} / {row['n_calibration']} | "
                         f"{row['image_auroc']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Pooled false alarms over the tasks (the promise: [0.5, 1.5] alpha at 0.05, at most 2 alpha at 0.01):", ""]
    for scheme in SCHEMES:
        cells = []
        for a in alphas:
            p = result["pooled"][scheme]["pooled"].get(a) or {}
            cells.append(f"alpha {a}: " + (f"{p['rate']:.4f} ({p['k']}/{p['n']}, {p['datasets']} tasks, bar "
                                            f"{'met' if p['meets_bar'] else 'NOT met'})" if p.get("rate") is not None
                                            else "cannot flag on any task"))
        lines.append(f"- {scheme}: " + "; ".join(cells))
    gains = result["auroc_gain"]
    if gains:
        lines += ["", "Image AUROC gain of cross over split: " + ", ".join(f"{n} {g:+.3f}" for n, g in gains.items()), ""]
    return lines
