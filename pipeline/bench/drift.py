"""How often the drift test fires on shifted batches, and falsely on normal batches with a few defects.

    python -m pipeline.bench.drift --root data/builtin/fabric [--json out.json] [config overrides ...]
    python -m pipeline.bench.drift --root data/digits/digit_0 data=digits

For a dataset in the MVTec AD layout: the reference is the held-out share of train/good (the images the
detector calibrates on, same split and seed); batches are drawn with replacement from test/good. A
shifted batch has every image shifted (camera closer, gain down or up, focus lost) on the ORIGINAL image,
before the resize to the model's input, as a camera would do it; an unshifted batch holds a share of
images drawn from the defect folders. Statistics are computed once per image and condition, then
resampled, so thousands of batches take seconds. Settings come from conf/bench (bench.drift) and
conf/inspect (inspect.drift_*).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from scipy.stats import binomtest

from pipeline.config import compose
from pipeline.data.datamodule import SplitSettings
from pipeline.data.splits import split_indices
from pipeline.data.images import ImageReadError, ReadOptions, read_image, to_model_tensor
from pipeline.data.layout import GOOD, scan_test, scan_train
from pipeline.detector.checks import DriftSettings
from pipeline.scoring.drift import FEATURES, drift_test, image_statistics

Shift = Callable[[np.ndarray], np.ndarray]


def zoom(array: np.ndarray, factor: float) -> np.ndarray:
    """(H, W, C) uint8 -> the same size, camera `factor` times closer: centre crop of 1/factor of each side,
    resized back (bilinear). A factor below 1 moves the camera away: the image shrunk by it (bilinear), the
    border it leaves filled with the image's own mirror image (a texture continues; a part gains background)."""
    height, width, channels = array.shape
    image = Image.fromarray(array[:, :, 0] if channels == 1 else array)
    if factor < 1.0:
        small_h, small_w = round(height * factor), round(width * factor)
        small = np.asarray(image.resize((small_w, small_h), Image.Resampling.BILINEAR)).reshape(small_h, small_w,
                                                                                              channels)
        top, left = (height - small_h) // 2, (width - small_w) // 2
        return np.pad(small, ((top, height - small_h - top), (left, width - small_w - left), (0, 0)), mode="reflect")
    crop_h, crop_w = round(height / factor), round(width / factor)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = array[top:top + crop_h, left:left + crop_w]
    image = Image.fromarray(crop[:, :, 0] if channels == 1 else crop)
    resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return resized.reshape(height, width, channels)


def gain(array: np.ndarray, factor: float) -> np.ndarray:
    """(H, W, C) uint8 -> intensities times `factor`, clipped to the 8-bit range as a sensor would."""
    return np.clip(np.rint(array.astype(np.float64) * factor), 0, 255).astype(np.uint8)


def blur(array: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, C) uint8 -> Gaussian blur of `sigma` original pixels in each image direction (focus lost)."""
    blurred = ndimage.gaussian_filter(array.astype(np.float64), sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def process_shifts(zoom_factor: float, gains: Sequence[float], blur_sigma: float) -> dict[str, Shift]:
    """The process changes a batch is tested against, by name."""
    shifts: dict[str, Shift] = {f"zoom_x{zoom_factor:g}": partial(zoom, factor=zoom_factor)}
    shifts.update({f"gain_x{g:g}": partial(gain, factor=g) for g in gains})
    shifts[f"blur_sigma{blur_sigma:g}"] = partial(blur, sigma=blur_sigma)
    return shifts


def _statistics(paths: Sequence[Path], image_size: int, options: ReadOptions, min_frequency: float,
                shifts: dict[str, Shift]) -> tuple[dict[str, np.ndarray], int]:
    """Each readable image decoded once and shifted by each shift -> ({name: (N, F)}, unreadable count).
    The name "none" holds the unshifted images."""
    shifts = {"none": lambda a: a, **shifts}
    tensors: dict[str, list[torch.Tensor]] = {name: [] for name in shifts}
    unreadable = 0
    for path in paths:
        try:
            array = read_image(path, options)  # (H, W, C) uint8, original resolution
        except ImageReadError:
            unreadable += 1
            continue
        for name, shift in shifts.items():
            tensors[name].append(to_model_tensor(shift(array), image_size))  # (C, S, S)
    if not tensors["none"]:
        raise ValueError(f"no readable image among {len(paths)} files, e.g. {paths[0] if paths else '-'}")
    return {name: image_statistics(torch.stack(t), min_frequency) for name, t in tensors.items()}, unreadable


def _rate(hits: int, total: int) -> dict:
    """A rate with its exact (Clopper-Pearson) binomial 95 % interval."""
    interval = binomtest(hits, total).proportion_ci(confidence_level=0.95)
    return {"hits": hits, "batches": total, "rate": hits / total, "ci95": [interval.low, interval.high]}


def _draw(good: np.ndarray, defective: np.ndarray | None, batch_size: int, n_defective: int,
          rng: np.random.Generator) -> np.ndarray:
    """One batch's statistics (batch_size, F): n_defective rows drawn from `defective`, the rest from `good`,
    with replacement."""
    rows = [good[rng.integers(0, len(good), size=batch_size - n_defective)]]
    if n_defective:
        rows.append(defective[rng.integers(0, len(defective), size=n_defective)])
    return np.concatenate(rows)


def _run_batches(reference: np.ndarray, draw: Callable[[np.random.Generator], np.ndarray], n_batches: int,
                 rng: np.random.Generator, test_kwargs: dict) -> dict:
    """Drift-test n_batches drawn batches -> rate of drifted batches, and how often each feature moved."""
    drifted, moved = 0, Counter()
    for _ in range(n_batches):
        result = drift_test(reference, draw(rng), **test_kwargs)
        drifted += result["drifted"]
        moved.update(result["moved"])
    return {**_rate(drifted, n_batches), "moved": {name: moved[name] for name in FEATURES if moved[name]}}


def measure_drift(root: Path, image_size: int, n_reference: int, batch_size: int, n_batches: int, seed: int, *,
                  split: SplitSettings = SplitSettings(), read_options: ReadOptions = ReadOptions(),
                  shifts: dict[str, Shift] | None = None, defect_shares: Sequence[float] = (0.0, 0.1, 0.2),
                  drift: DriftSettings = DriftSettings(), min_frequency: float = 1 / 16) -> dict:
    """Detection rate per shift and false-drift rate per defect share on one MVTec-layout dataset.

    Returns {"dataset", "n_reference", "n_test_good", "n_defective", settings..., "shifts": {name: rate},
    "defect_shares": {"10%": rate}}, each rate {"hits", "batches", "rate", "ci95": [low, high], "moved":
    {feature: batches where it moved}}. Deterministic for a given seed.
    """
    root = Path(root)
    shifts = process_shifts(1.15, (0.85, 1.15), 1.0) if shifts is None else shifts  # those of the targets
    train = scan_train(root)
    _, _, held_out = split_indices(len(train), split.sizes(len(train)), seed)  # the detector's calibration images
    reference_paths = [train[i].path for i in held_out.tolist()[:n_reference]]
    reference, _ = _statistics(reference_paths, image_size, read_options, min_frequency, {})
    test_samples = scan_test(root)
    good, _ = _statistics([s.path for s in test_samples if s.defect_type == GOOD], image_size, read_options,
                          min_frequency, shifts)
    defect_paths = [s.path for s in test_samples if s.defect_type != GOOD]
    defective = (_statistics(defect_paths, image_size, read_options, min_frequency, {})[0]["none"]
                 if defect_paths else None)

    test_kwargs = asdict(drift)  # alpha, trim, min_images, min_shift, test: drift_test's keywords
    rng = np.random.default_rng(seed)
    by_shift = {name: _run_batches(reference["none"], partial(_draw, good[name], None, batch_size, 0), n_batches,
                                   rng, test_kwargs) for name in shifts}
    by_share = {}
    for share in defect_shares:
        n_defective = int(round(share * batch_size))
        if n_defective and defective is None:
            continue  # no defect folders: only the 0 % condition is measurable
        draw = partial(_draw, good["none"], defective, batch_size, n_defective)
        by_share[f"{share:.0%}"] = _run_batches(reference["none"], draw, n_batches, rng, test_kwargs)
    return {"dataset": root.name, "root": str(root), "image_size": image_size, "n_reference": len(reference["none"]),
            "n_test_good": len(good["none"]), "n_defective": 0 if defective is None else len(defective),
            "batch_size": batch_size, "n_batches": n_batches, "seed": seed, **test_kwargs,
            "min_frequency": min_frequency, "shifts": by_shift, "defect_shares": by_share}


def markdown(result: dict) -> str:
    """The result as a markdown table: one row per condition, rate and 95 % interval in %."""
    lines = [f"{result['dataset']}: {result['n_reference']} reference images, batches of {result['batch_size']} "
             f"from {result['n_test_good']} test/good and {result['n_defective']} defective images, "
             f"{result['n_batches']} batches per row, alpha {result['alpha']}, trim {result['trim']}, "
             f"min_shift {result['min_shift']}, {result['test']}", "",
             "| batch | drift reported | 95 % interval | features that moved (batches) |", "|---|---|---|---|"]
    rows = [(f"shift {name}", r) for name, r in result["shifts"].items()]
    rows += [(f"unshifted, {share} defective", r) for share, r in result["defect_shares"].items()]
    for label, r in rows:
        moved = ", ".join(f"{k} {v}" for k, v in sorted(r["moved"].items(), key=lambda kv: -kv[1])) or "-"
        lines.append(f"| {label} | {100 * r['rate']:.1f} % | {100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f} % "
                     f"| {moved} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.drift", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="dataset root in the MVTec AD layout")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data=digits inspect.drift_trim=0.1")
    args = parser.parse_args(argv)
    cfg = compose(args.overrides)
    data, bench, inspect = cfg.data, cfg.bench.drift, cfg.inspect
    result = measure_drift(
        args.root.resolve(), data.image_size, bench.n_reference, bench.batch_size, bench.n_batches, cfg.seed,
        split=SplitSettings(alpha=cfg.score.alpha, **data.split), read_options=ReadOptions.from_config(data),
        shifts=process_shifts(bench.zoom, list(bench.gains), bench.blur_sigma),
        defect_shares=list(bench.defect_shares), drift=DriftSettings.from_config(inspect))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
