"""`python -m pipeline sweep [overrides] [key=v1,v2 ...]`: a grid of training runs, compared on the test split.

Our CLI composes configs with Hydra's compose API (no `@hydra.main`), so Hydra's own `--multirun`
launcher is not available; this module gives the same thing: it parses the overrides with Hydra's
override parser, expands every sweep override (`model.beta=0.5,1,2`, also `range(...)`, `choice(...)`)
into the cartesian product like Hydra's basic sweeper, and trains one detector per grid point with
the config composed for that point. Sweep overrides on the command line replace the key's entry in
`sweep.params` (conf/sweep/default.yaml), and a plain override of a swept key pins it to one value;
`--multirun`/`-m` are accepted and ignored.

Every run lands in the MLflow experiment `sweep.experiment`, nested under one summary run that holds
sweep.csv (one row per grid point: test AUROC per score, validation losses, active latent dims, time)
and sweep_auroc.png (AUROC against latent size, one line per beta).
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from sklearn.metrics import roc_auc_score

from pipeline.commands.train import run_train
from pipeline.config import compose
from pipeline.data.datasets import load_images
from pipeline.data.layout import scan_test
from pipeline.detector import AnomalyDetector
from pipeline.report.sweep import sweep_figure
from pipeline.scoring import scores as S
from pipeline.tracking.sweep_run import finish_summary_run, log_sweep_point, start_summary_run

log = logging.getLogger(__name__)

MULTIRUN_FLAGS = ("--multirun", "-m")


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(plain overrides, {key: [values]} of the sweep overrides such as model.beta=0.5,1,2)."""
    parser = OverridesParser.create()
    base, axes = [], {}
    for line in overrides:
        if line in MULTIRUN_FLAGS:
            continue
        (parsed,) = parser.parse_overrides([line])
        if parsed.is_sweep_override():
            axes[parsed.key_or_group] = list(parsed.sweep_string_iterator())
        else:
            base.append(line)
    return base, axes


def expand_grid(overrides: list[str], params: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """(base overrides, [the overrides of each grid point]): sweep overrides in `overrides` replace
    `params` entries (key -> 'v1,v2,...'); the grid is their cartesian product, in key order."""
    base, cli_axes = split_overrides(overrides)
    axes = {}
    for key, values in params.items():
        axes[key] = split_overrides([f"{key}={values}"])[1].get(key, [str(values)])
    axes.update(cli_axes)
    for line in list(base):  # a plain override of a swept key (model.latent_dim=3) pins that axis
        key = line.split("=", 1)[0].lstrip("+~")
        if key in axes:
            axes[key] = [line.split("=", 1)[1]]
            base.remove(line)
    keys = list(axes)
    points = [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*(axes[k] for k in keys))]
    return base, points


def test_aurocs(detector: AnomalyDetector, data_root: Path, score_names: list[str], batch_size: int) -> dict[str, float]:
    """Image AUROC of each named score on the test split of data_root (single-category detectors)."""
    images, kept, _ = load_images(scan_test(data_root), detector.spec.image_size, detector.spec.read_options)
    labels = np.array([s.label for s in kept])
    extra = tuple(n for n in score_names if n not in (*S.BASE_SCORES, S.FUSED))
    scores = detector.score(images, batch_size=batch_size, extra=extra, keep=())
    return {name: float(roc_auc_score(labels, scores[name])) for name in score_names}


def run_sweep(overrides: list[str]) -> dict:
    base_cfg = compose(split_overrides(overrides)[0])
    base, points = expand_grid(overrides, dict(base_cfg.sweep.params))
    sweep = base_cfg.sweep
    fixed = [f"tracking.train_experiment={sweep.experiment}", f"report.enabled={str(sweep.report).lower()}",
             f"++tracking.register={str(sweep.register).lower()}"]
    parent = start_summary_run(base_cfg, points) if base_cfg.tracking.enabled else None
    rows = []
    for i, point in enumerate(points, start=1):
        log.info("sweep point %d/%d: %s", i, len(points), " ".join(point))
        cfg = compose([*base, *point, *fixed])
        started = time.perf_counter()
        summary = run_train(cfg)
        detector = AnomalyDetector.load(summary["detector_dir"])
        aurocs = test_aurocs(detector, Path(detector.spec.extra["data_root"]), list(sweep.scores), cfg.data.batch_size)
        row = {**{o.split("=", 1)[0]: o.split("=", 1)[1] for o in point}, "beta": cfg.model.beta,
               "latent_dim": cfg.model.latent_dim, **{f"auroc.{k}": v for k, v in aurocs.items()},
               **{f"validation.{k}": v for k, v in detector.spec.validation.items() if isinstance(v, float)},
               "auroc": aurocs.get(cfg.score.score, np.nan), "score": cfg.score.score,
               **_run_numbers(summary), "seconds": time.perf_counter() - started, "run_id": summary["run_id"]}
        rows.append(row)
        if parent is not None:
            log_sweep_point(cfg, summary["run_id"], parent, aurocs)
    frame = pd.DataFrame(rows)
    out_dir = Path(sweep.output_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / "sweep.csv", index=False)
    sweep_figure(frame, [f"auroc.{s}" for s in sweep.scores], out_dir / "sweep_auroc.png")
    if parent is not None:
        finish_summary_run(base_cfg, parent, out_dir, frame)
    best = frame.loc[frame["auroc"].idxmax()] if frame["auroc"].notna().any() else None
    return {"output_dir": str(out_dir), "n_runs": len(frame), "summary_run_id": parent,
            "best": None if best is None else {k: best[k] for k in ("beta", "latent_dim", "auroc", "run_id")},
            "table": frame.drop(columns=["run_id"]).round(4).to_dict(orient="records")}


def _run_numbers(summary: dict) -> dict:
    report = summary.get("report") or {}
    return {"epochs": summary.get("epochs"), "train_seconds": summary.get("train_seconds"),
            "threshold": summary.get("threshold"), "active_dims": report.get("active_dims")}


