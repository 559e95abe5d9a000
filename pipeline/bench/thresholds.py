"""Does the threshold keep its promise? The false-alarm rate on held-out normal test images, per dataset and pooled,
against the promised alpha; and what a small set of normal images gets: 300 images (a finite threshold that
flags defects; its recall beside the 1,000-image recall) and 30 images (a clear refusal at train time)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from scipy.stats import binom

from pipeline.bench.quality import load_test_split, train_or_reuse
from pipeline.config import compose
from pipeline.data.generators import generate_category
from pipeline.data.splits import TooFewNormalImages
from pipeline.detector import AnomalyDetector
from pipeline.scoring.threshold import binomial_interval

log = logging.getLogger(__name__)


def promised_interval(n: int, alpha: float, confidence: float = 0.99) -> tuple[float, float]:
    """The range of false-alarm rates among n normal images that a rate of exactly alpha gives with `confidence`."""
    low, high = binom.interval(confidence, n, alpha)
    return float(low / n), float(high / n)


def false_alarm_table(quality: dict, alphas: list[float]) -> dict:
    """Per dataset and alpha: k of n normal test images flagged by the new default (seed rows pooled), its
    interval, the promised 99 % range; pooled over the datasets: the rate and whether it meets the bar
    ([0.5, 1.5] alpha at 0.05, at most 2 alpha at 0.01)."""
    table: dict = {"datasets": {}, "pooled": {}}
    for name, result in quality.items():
        if not result.get("new_default"):  # not measured (a stopped run): no row, rather than "cannot flag"
            continue
        for alpha in map(str, alphas):
            counts = [row["false_alarm"].get(alpha) for row in result["new_default"]]
            counts = [c for c in counts if c is not None]
            if not counts:
                table["datasets"].setdefault(name, {})[alpha] = None  # the threshold cannot fire at this alpha
                continue
            k, n = sum(c["k"] for c in counts), sum(c["n"] for c in counts)
            low, high = promised_interval(n, float(alpha))
            table["datasets"].setdefault(name, {})[alpha] = {"k": k, "n": n, "rate": k / n,
                                                             "interval": binomial_interval(k, n),
                                                             "promised_99": [low, high], "within": low <= k / n <= high}
    for alpha in map(str, alphas):
        cells = [d[alpha] for d in table["datasets"].values() if d.get(alpha)]
        k, n = sum(c["k"] for c in cells), sum(c["n"] for c in cells)
        rate = k / n if n else None
        a = float(alpha)
        bar = (0.5 * a <= rate <= 1.5 * a) if a >= 0.05 else (rate <= 2 * a) if rate is not None else None
        table["pooled"][alpha] = {"k": k, "n": n, "rate": rate, "interval": binomial_interval(k, n),
                                  "datasets": len(cells), "meets_bar": bar}
    return table


def small_data(base: list[str], work: Path, bench: DictConfig, alpha: float, reference_recall: float | None) -> dict:
    """Train at the defaults on `bench.small_data.category` generated with few normal images: with `n_train` of them
    the threshold at alpha is finite and its recall is measured; with `n_refused` training refuses."""
    s = bench.small_data
    result = {"category": s.category, "alpha": alpha, "recall_1000": reference_recall}
    for n, key in ((int(s.n_train), "trained"), (int(s.n_refused), "refused")):
        root = work / f"small-{n}" / s.category
        if not root.exists():
            generate_category(root.parent, s.category, seed=0, image_size=int(s.image_size), n_train=n,
                              n_test_good=int(s.n_test_good), n_test_defect_per_type=int(s.n_test_defect_per_type))
        cfg = compose([*base, f"data.root={root}", f"score.alpha={alpha}", f"output_root={work / f'small-{n}-out'}"])
        try:
            summary = train_or_reuse(cfg, bool(bench.reuse))
        except TooFewNormalImages as err:
            result[key] = {"n_normal": n, "refused": True, "message": str(err)}
            continue
        detector = AnomalyDetector.load(summary["detector_dir"])
        split = load_test_split(root, cfg.data.image_size, detector.spec.read_options)
        flagged = detector.predict(split.images).astype(bool)
        result[key] = {"n_normal": n, "refused": False, "n_calibration": detector.spec.extra["n_calibration"],
                       "threshold_finite": bool(np.isfinite(detector.threshold_)),
                       "recall": float(flagged[split.labels == 1].mean()),
                       "false_alarm_rate": float(flagged[split.labels == 0].mean())}
    return result
