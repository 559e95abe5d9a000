"""Does `score` report it when a whole test set's good parts differ from the training parts, and stay quiet when
they do not?

    python -m pipeline.bench.promise --root data/builtin/fabric [--detector DIR] [--json out.json] [overrides ...]

A shifted set has every good test image seen at another scale (camera `scales` times closer or farther, on the
original image, as a camera would) or taken from other parts of the material (the texture's contrast times each
of `textures`: threads or grains that stand out less or more). Sets of `set_size` images are drawn with
replacement from a pool of test/good images; each set gets the two checks `score` makes (detector/checks.py):
the drift test against the calibration images' statistics and, with a detector, the beta-binomial test of its
false alarms (scoring/promise.py). A set is *reported* when either fires. Statistics and scores are computed
once per image and condition, then resampled, so the only cost is scoring the pool under each condition (no
training: the bench passes the detector its quality section trained). Settings: conf/bench (bench.drift.sets),
conf/inspect (inspect.drift_*), conf/score (score.promise_level).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from pipeline.bench.drift import Shift, zoom
from pipeline.config import compose
from pipeline.data.datamodule import SplitSettings
from pipeline.data.images import ReadOptions, read_image, to_model_tensor
from pipeline.data.layout import GOOD, scan_test, scan_train
from pipeline.data.splits import split_indices
from pipeline.detector import AnomalyDetector
from pipeline.detector import calibration as C
from pipeline.detector.checks import DriftSettings
from pipeline.scoring.drift import drift_test, image_statistics
from pipeline.scoring.promise import false_alarm_test
from pipeline.scoring.threshold import binomial_interval

UNSHIFTED = "unshifted"


def texture(array: np.ndarray, factor: float, sigma: float) -> np.ndarray:
    """(H, W, C) uint8 -> the texture (the image minus its Gaussian blur of `sigma` original pixels) times
    `factor` on the same smooth shading: a part of the material whose structure stands out more or less."""
    x = array.astype(np.float64)
    smooth = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(smooth + factor * (x - smooth)), 0, 255).astype(np.uint8)


def _rate(hits: int, total: int) -> dict:
    """A rate with its exact (Clopper-Pearson) 95 % interval."""
    return {"hits": hits, "sets": total, "rate": hits / total, "ci95": list(binomial_interval(hits, total))}


def set_shifts(scales: Sequence[float], textures: Sequence[float], texture_sigma: float) -> dict[str, Shift]:
    """The shifted conditions by name: scale_x1.2 (closer), scale_x1/1.2 (farther), texture_x0.75, ..."""
    shifts: dict[str, Shift] = {}
    for s in scales:
        shifts[f"scale_x{s:g}"] = partial(zoom, factor=s)
        shifts[f"scale_x1/{s:g}"] = partial(zoom, factor=1.0 / s)
    shifts.update({f"texture_x{t:g}": partial(texture, factor=t, sigma=texture_sigma) for t in textures})
    return shifts


def _inputs(paths: Sequence[Path], image_size: int, options: ReadOptions,
            shifts: dict[str, Shift]) -> dict[str, torch.Tensor]:
    """{condition: (N, C, S, S) model inputs} of every image under every condition (UNSHIFTED included)."""
    shifts = {UNSHIFTED: lambda a: a, **shifts}
    tensors: dict[str, list[torch.Tensor]] = {name: [] for name in shifts}
    for path in paths:
        array = read_image(path, options)  # (H, W, C) uint8, original resolution
        for name, shift in shifts.items():
            tensors[name].append(to_model_tensor(shift(array), image_size))
    return {name: torch.stack(t) for name, t in tensors.items()}


def _reference(root: Path, detector: AnomalyDetector | None, image_size: int, options: ReadOptions,
               split: SplitSettings, seed: int) -> np.ndarray:
    """(M, F): the detector's stored calibration statistics, else those of the held-out calibration share."""
    if detector is not None and detector.spec.drift_reference:
        return np.asarray(detector.spec.drift_reference, dtype=np.float64)
    train = scan_train(root)
    _, _, held_out = split_indices(len(train), split.sizes(len(train)), seed)
    return image_statistics(_inputs([train[i].path for i in held_out.tolist()], image_size, options, {})[UNSHIFTED])


def measure_promise(root: Path, image_size: int, set_size: int, n_sets: int, seed: int, *,
                    shifts: dict[str, Shift], drift: DriftSettings = DriftSettings(), level: float = 0.01,
                    detector: AnomalyDetector | None = None, pool: int = 0, split: SplitSettings = SplitSettings(),
                    read_options: ReadOptions = ReadOptions(), batch_size: int = 32) -> dict:
    """Per condition (UNSHIFTED and each shift): how often a drawn test set is reported by the drift test, by the
    promise test (with a detector) and by either, with exact 95 % intervals; and the pool's false-alarm rate.
    `pool`: test/good images used (0 = all; drawn at random with `seed`). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    good = [s.path for s in scan_test(root) if s.defect_type == GOOD]
    if pool and pool < len(good):
        good = [good[i] for i in sorted(rng.choice(len(good), size=pool, replace=False))]
    if not good:
        raise ValueError(f"{root} has no test/good images: no test set to shift")
    options = read_options if detector is None else detector.spec.read_options
    reference = _reference(root, detector, image_size, options, split, seed)
    inputs = _inputs(good, image_size, options, shifts)
    threshold = n_calibration = None
    if detector is not None:
        [guarantee] = C.guarantees(detector.spec).values()  # the bench's detectors are single-category
        threshold, n_calibration = guarantee["threshold"], guarantee["n_calibration"]
    conditions = {}
    for name, images in inputs.items():
        stats = image_statistics(images)  # (N, F)
        flagged = (None if detector is None else
                   detector.score(images, batch_size=batch_size, keep=())[detector.spec.score] > threshold)  # (N,)
        hits = {"drift": 0, "promise": 0, "either": 0}
        for _ in range(n_sets):
            chosen = rng.integers(0, len(good), size=set_size)
            drifted = drift_test(reference, stats[chosen], drift.alpha, drift.trim, drift.min_images, drift.min_shift,
                                 drift.test)["drifted"]
            broken = flagged is not None and false_alarm_test(int(flagged[chosen].sum()), set_size, n_calibration,
                                                              detector.spec.alpha, level)["broken"]
            hits["drift"] += drifted
            hits["promise"] += broken
            hits["either"] += drifted or broken
        conditions[name] = {"drift": _rate(hits["drift"], n_sets), "either": _rate(hits["either"], n_sets),
                            "promise": None if flagged is None else _rate(hits["promise"], n_sets),
                            "pool_false_alarm_rate": None if flagged is None else float(flagged.mean())}
    return {"dataset": root.name, "root": str(root), "n_pool": len(good), "set_size": set_size, "n_sets": n_sets,
            "seed": seed, "n_reference": len(reference), "detector": None if detector is None else detector.spec.score,
            "alpha": None if detector is None else detector.spec.alpha, "n_calibration": n_calibration,
            "level": level, "conditions": conditions}


def pooled(results: Sequence[dict]) -> dict:
    """measure_promise's results for several detectors of one dataset (one per training seed) as one: each
    condition's sets added up, every detector's own result under `by_detector`. The promise test's level holds over
    the calibration draw, so one detector (one draw) can sit above or below it; the bench reports the pool."""
    first = results[0]
    conditions = {}
    for name in first["conditions"]:
        cells = [r["conditions"][name] for r in results]
        merged = {}
        for check in ("drift", "either", "promise"):
            if any(c[check] is None for c in cells):
                merged[check] = None
                continue
            merged[check] = _rate(sum(c[check]["hits"] for c in cells), sum(c[check]["sets"] for c in cells))
        rates = [c["pool_false_alarm_rate"] for c in cells]
        merged["pool_false_alarm_rate"] = None if None in rates else float(np.mean(rates))
        conditions[name] = merged
    return {**first, "n_sets": sum(r["n_sets"] for r in results), "seed": [r["seed"] for r in results],
            "conditions": conditions, "by_detector": list(results)}


def markdown(result: dict) -> str:
    lines = [f"{result['dataset']}: sets of {result['set_size']} drawn from {result['n_pool']} test/good images, "
             f"{result['n_sets']} per row; drift against {result['n_reference']} calibration images"
             + (f"; promise at alpha {result['alpha']} with {result['n_calibration']} calibration images, level "
                f"{result['level']}" if result["detector"] else "; no detector: the drift test alone"), "",
             "| test set | reported | drift | promise | good flagged (pool) |", "|---|---|---|---|---|"]
    for name, r in result["conditions"].items():
        cells = [f"{100 * r['either']['rate']:.1f} % [{100 * r['either']['ci95'][0]:.1f}, "
                 f"{100 * r['either']['ci95'][1]:.1f}]", f"{100 * r['drift']['rate']:.1f} %",
                 "-" if r["promise"] is None else f"{100 * r['promise']['rate']:.1f} %",
                 "-" if r["pool_false_alarm_rate"] is None else f"{100 * r['pool_false_alarm_rate']:.1f} %"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.promise", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="dataset root in the MVTec AD layout")
    parser.add_argument("--detector", type=Path, help="a detector folder trained on that dataset (promise test)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. bench.drift.sets.n_sets=50")
    args = parser.parse_args(argv)
    cfg = compose(args.overrides)
    data, sets = cfg.data, cfg.bench.drift.sets
    detector = AnomalyDetector.load(args.detector) if args.detector else None
    result = measure_promise(
        args.root.resolve(), data.image_size, sets.set_size, sets.n_sets, cfg.seed,
        shifts=set_shifts(list(sets.scales), list(sets.textures), sets.texture_sigma),
        drift=DriftSettings.from_config(cfg.inspect), level=cfg.score.promise_level, detector=detector,
        pool=sets.pool, split=SplitSettings(alpha=cfg.score.alpha, **data.split),
        read_options=ReadOptions.from_config(data), batch_size=data.batch_size)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
