"""Evaluation of scored, labelled test images: image- and pixel-level metrics, overall and per defect type
(report/evaluation.py draws the figures). `python -m pipeline evaluate` re-runs it on a score output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_curve

from pipeline.data.images import read_mask
from pipeline.data.layout import Sample
from pipeline.scoring import metrics as M
from pipeline.scoring.aupro import aupro
from pipeline.scoring.scores import SCORE_NAMES


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The best F1 over all thresholds (an upper bound on what any threshold could reach)."""
    if np.unique(labels).size < 2:
        return None
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12)))


def masks_for(frame: pd.DataFrame, samples: list[Sample], maps: dict[int, np.ndarray]) -> list[np.ndarray]:
    """Ground-truth masks (bool, the map's size) in frame order; good images and unmasked ones: empty."""
    result = []
    for index in frame["index"]:
        sample, shape = samples[index], maps[index].shape
        result.append(read_mask(sample.mask_path, shape) if sample.mask_path is not None else np.zeros(shape, bool))
    return result


def _pixel_metrics(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float) -> dict:
    return {"pixel_auroc": M.pixel_auroc(masks, maps), "aupro": aupro(masks, maps, fpr_limit)}


def detection_at_alphas(frame: pd.DataFrame, alphas: tuple[float, ...]) -> dict:
    """The factory's number: for each alpha, the share of defective images flagged at the conformal threshold for
    that alpha (p_value <= alpha), overall and per defect type, beside the false-alarm rate on the normal ones.
    {"0.01": {"detection_rate", "false_alarm_rate", "per_defect_type": {type: rate}}, ...}; {} without p-values."""
    if "p_value" not in frame or frame["p_value"].isna().all():
        return {}
    normal = frame["label"].to_numpy() == 0
    result = {}
    for alpha in alphas:
        flagged = frame["p_value"].to_numpy() <= alpha
        result[f"{alpha:g}"] = {
            "detection_rate": float(flagged[~normal].mean()) if (~normal).any() else None,
            "false_alarm_rate": float(flagged[normal].mean()) if normal.any() else None,
            "per_defect_type": {t: float(flagged[(frame["defect_type"] == t).to_numpy()].mean())
                                for t in sorted(frame.loc[~normal, "defect_type"].unique())}}
    return result


def detection_metric_names(detection: dict) -> dict[str, float]:
    """detection_at_alphas' result flat, for a tracking store (MLflow names: no "@"): {"detection_rate_at_0.01": ...,
    "false_alarm_rate_at_0.01": ..., "<defect type>.detection_rate_at_0.01": ...}."""
    flat = {}
    for alpha, entry in (detection or {}).items():
        for key in ("detection_rate", "false_alarm_rate"):
            if entry.get(key) is not None:
                flat[f"{key}_at_{alpha}"] = entry[key]
        flat.update({f"{t}.detection_rate_at_{alpha}": v for t, v in entry.get("per_defect_type", {}).items()})
    return flat


def evaluate(frame: pd.DataFrame, samples: list[Sample], maps: dict[int, np.ndarray], fpr_limit: float = 0.3,
             alphas: tuple[float, ...] = (0.01, 0.05)) -> dict:
    """Metrics of a thresholded score table (columns: index, label, defect_type, score, is_anomaly, p_value, every
    score name); `maps` by sample index at original resolution, used when any sample has a mask. The detection rate
    at each of `alphas` comes first: it is what a threshold with that promise catches."""
    labels, scores = frame["label"].to_numpy(), frame["score"].to_numpy()
    flagged = frame["is_anomaly"].to_numpy()
    has_both = np.unique(labels).size > 1
    result = {"detection_at_alpha": detection_at_alphas(frame, alphas),
              "n_images": int(len(frame)), "n_normal": int((labels == 0).sum()), "n_anomalous": int((labels == 1).sum()),
              "image_auroc": M.image_auroc(labels, scores), "image_f1": float(f1_score(labels, flagged)) if has_both else None,
              "image_f1_max": f1_max(labels, scores), "false_alarm_rate": M.false_alarm_rate(labels, flagged),
              "detection_rate": M.detection_rate(labels, flagged)}
    for name in SCORE_NAMES:
        if name in frame and frame[name].notna().all():
            result[f"image_auroc.{name}"] = M.image_auroc(labels, frame[name].to_numpy())
    with_masks = any(samples[i].mask_path is not None for i in frame["index"])
    masks = masks_for(frame, samples, maps) if with_masks else None
    if masks is not None:
        result.update(_pixel_metrics(masks, [maps[i] for i in frame["index"]], fpr_limit))
    normal = frame["label"].to_numpy() == 0
    per_type = {}
    for defect_type in sorted(frame.loc[~normal, "defect_type"].unique()):
        rows = normal | (frame["defect_type"] == defect_type).to_numpy()
        entry = {"n": int((~normal & rows).sum()), "image_auroc": M.image_auroc(labels[rows], scores[rows]),
                 "detection_rate": float(flagged[~normal & rows].mean())}
        if masks is not None:
            positions = np.flatnonzero(rows)
            entry.update(_pixel_metrics([masks[p] for p in positions],
                                        [maps[frame["index"].iloc[p]] for p in positions], fpr_limit))
        per_type[defect_type] = entry
    result["per_defect_type"] = per_type
    return result


def evaluate_output_folder(out_dir: Path, samples: list[Sample], fpr_limit: float) -> dict:
    """Re-evaluate a score output folder (scores.csv + maps/) against the dataset's labels and masks."""
    frame = pd.read_csv(out_dir / "scores.csv")
    by_path = {s.rel_path: i for i, s in enumerate(samples)}
    missing = sorted(set(frame["image_path"]) - set(by_path))
    if missing:
        raise ValueError(f"{out_dir / 'scores.csv'} lists images that are not in the dataset, e.g. {missing[0]}")
    frame["index"] = frame["image_path"].map(by_path)
    maps = {by_path[p]: np.load(out_dir / "maps" / f"{p}.npy").astype(np.float32) for p in frame["image_path"]}
    result = evaluate(frame, samples, maps, fpr_limit)
    previous = json.loads((out_dir / "metrics.json").read_text()) if (out_dir / "metrics.json").is_file() else {}
    return {**previous, **result}
