"""The flagged samples of a scoring run: one review panel per flagged image and the flagged-samples table.

Runs after `score` has written maps/<image path>.npy; reads the flagged images again (a handful) to get
their reconstructions, which scoring does not keep. Writes review/panels/<sample id>.png and
review/flagged.csv under the scoring output folder. No MLflow here (see tracking/review_log.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.data.images import read_image, to_model_tensor
from pipeline.data.layout import Sample
from pipeline.review.panels import PanelText, defect_area, render_panel
from pipeline.scoring.detector import AnomalyDetector

PENDING = "pending"
FLAGGED_COLUMNS = ["sample_id", "image_path", "score", "p_value", "threshold", "defect_area", "review_status",
                   "panel_path"]


def sample_ids(image_paths: list[str]) -> list[str]:
    """Short ids that are safe as MLflow image keys and easy to type: 'scratch/003.png' -> 'scratch_003'.

    Unique within the list: a collision gets a numeric suffix.
    """
    ids, seen = [], set()
    for path in image_paths:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(path).with_suffix(""))).strip("_") or "sample"
        candidate, n = base, 1
        while candidate in seen:
            n += 1
            candidate = f"{base}-{n}"
        seen.add(candidate)
        ids.append(candidate)
    return ids


def reconstruction_image(detector: AnomalyDetector, image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> the detector's posterior-mean reconstruction as (H, W, C) uint8 at the same size."""
    x = to_model_tensor(image, detector.spec.image_size)[None]  # (1, C, S, S)
    x_hat = detector.score_batch(x)["reconstruction"][0].cpu().numpy()  # (C, S, S) in [0, 1]
    pixels = (np.clip(x_hat.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)  # (S, S, C)
    height, width = image.shape[:2]
    resized = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).resize(
        (width, height), Image.Resampling.BILINEAR)
    array = np.asarray(resized)
    return array[:, :, None] if array.ndim == 2 else array


def flagged_panels(detector: AnomalyDetector, frame: pd.DataFrame, samples: list[Sample], out_dir: Path,
                   vmax: float, limit: int, tile_size: int) -> pd.DataFrame:
    """Panels of the `limit` highest-scoring flagged images; returns their table (FLAGGED_COLUMNS).

    frame: scored rows with index (into samples), image_path, score, p_value, threshold, is_anomaly.
    The map of each image is read back from maps/<image path>.npy, as scoring wrote it.
    """
    panel_dir = out_dir / "review" / "panels"
    shutil.rmtree(panel_dir, ignore_errors=True)  # our own output from an earlier run into this folder
    flagged = frame[frame["is_anomaly"] == 1].sort_values("score", ascending=False).head(limit)
    rows = []
    for sample_id, (_, row) in zip(sample_ids(flagged["image_path"].tolist()), flagged.iterrows()):
        sample = samples[int(row["index"])]
        image = read_image(sample.path, detector.spec.read_options)  # (H, W, C)
        anomaly_map = np.load(out_dir / "maps" / f"{sample.rel_path}.npy").astype(np.float32)  # (H, W)
        area = defect_area(anomaly_map, detector.spec.pixel_threshold)
        text = PanelText(sample_id, float(row["score"]), float(row["threshold"]), float(row["p_value"]), area)
        with torch.inference_mode():
            recon = reconstruction_image(detector, image)
        panel = render_panel(image, recon, anomaly_map, vmax, detector.spec.pixel_threshold, text, tile_size)
        path = panel_dir / f"{sample_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        panel.save(path)
        rows.append({"sample_id": sample_id, "image_path": sample.rel_path, "score": float(row["score"]),
                     "p_value": float(row["p_value"]), "threshold": float(row["threshold"]),
                     "defect_area": area, "review_status": PENDING, "panel_path": str(path)})
    table = pd.DataFrame(rows, columns=FLAGGED_COLUMNS)
    (out_dir / "review").mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "review" / "flagged.csv", index=False)
    return table
