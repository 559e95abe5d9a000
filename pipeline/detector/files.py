"""Scoring image files: the one loop that reads, scores and writes, used by `score`, `inspect` and the benchmarks.

Per batch: decode the files (a bad file becomes an error row, never a stop), one `score_batch` call, then per
image: the map at the image's original resolution written as float16 .npy, its defect regions, and one row
of scores. What the review panels need later (the model input, the reconstruction and the map) is kept for
the highest-scoring images and for a given audit sample, so no image is decoded or scored twice.
Decisions come after the loop (`decide_frame`): Benjamini-Hochberg needs the whole batch's p-values.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from pipeline.data.datasets import ImageDataset
from pipeline.data.fs import atomic_write
from pipeline.data.layout import Sample
from pipeline.detector import calibration as C
from pipeline.progress import Progress
from pipeline.scoring import scores as S
from pipeline.scoring.drift import FEATURES, image_statistics
from pipeline.scoring.fusion import deciding_component
from pipeline.scoring.maps import defect_regions, resize_map

log = logging.getLogger(__name__)


@dataclass
class Kept:
    """What a review panel shows, at model resolution, as the detector computed it."""

    image: np.ndarray           # (C, S, S) model input in [0, 1]
    reconstruction: np.ndarray  # (C, S, S)
    map: np.ndarray             # (S, S) smoothed anomaly map


@dataclass
class ScoredFiles:
    frame: pd.DataFrame         # one row per readable image: index, image_path, label, defect_type, scores, defect area
    errors: list[dict]          # [{'image_path', 'error'}] for files that could not be read
    kept: dict[int, Kept]       # by sample index: the top `keep_top` by decision score, and the `keep_indices`
    maps: dict[int, np.ndarray] = field(default_factory=dict)  # by sample index, original resolution (keep_maps)


def map_file(out_dir: Path, rel_path: str) -> Path:
    return out_dir / "maps" / f"{rel_path}.npy"


def save_map(path: Path, anomaly_map: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.save(handle, anomaly_map.astype(np.float16)))


class _TopK:
    """The k highest-scoring panel materials seen so far (a min-heap), plus every requested index."""

    def __init__(self, k: int, always: set[int]):
        self.k, self.always, self.heap, self.fixed = k, always, [], {}

    def offer(self, score: float, index: int, make) -> None:
        if index in self.always:
            self.fixed[index] = make()
        elif self.k > 0 and (len(self.heap) < self.k or score > self.heap[0][0]):
            item = (score, index, make())
            heapq.heappush(self.heap, item) if len(self.heap) < self.k else heapq.heapreplace(self.heap, item)

    def result(self) -> dict[int, Kept]:
        return {**{index: kept for _, index, kept in self.heap}, **self.fixed}


def score_files(detector, samples: list[Sample], out_dir: Path, batch_size: int, num_workers: int = 0,
                extra: tuple[str, ...] = (), labels: list[int] | None = None, keep_top: int = 0,
                keep_indices: set[int] = frozenset(), keep_maps: bool = False, statistics: bool = False,
                progress: str | None = None, progress_every_percent: float = 10.0) -> ScoredFiles:
    """Score `samples` (maps written under out_dir/maps/); `labels`: each sample's category (conditional);
    `statistics`: add each image's drift statistics (scoring/drift.py) as columns 'stat.<name>'; `progress`: the
    label of a progress display (pipeline/progress.py), None for none."""
    spec = detector.spec
    loader = DataLoader(ImageDataset(samples, spec.image_size, spec.read_options), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers)
    rows, errors, maps, top = [], [], {}, _TopK(keep_top, set(keep_indices))
    computer = detector.computer()
    bar = Progress(len(samples), progress, "image", progress_every_percent) if progress is not None else None
    for batch in loader:
        indices = batch["index"].tolist()
        batch_labels = None if labels is None else torch.tensor([labels[i] for i in indices])
        out = detector.score_batch(batch["image"], batch_labels, extra, computer)
        names = [n for n in S.SCORE_NAMES if n in out]
        stats = image_statistics(batch["image"]) if statistics else None  # (B, F)
        for j, index in enumerate(indices):
            sample = samples[index]
            if batch["error"][j]:
                errors.append({"image_path": sample.rel_path, "error": batch["error"][j]})
                log.warning("cannot score %s: %s", sample.path, batch["error"][j])
                continue
            full = resize_map(out["map"][j].float().cpu(), tuple(batch["orig_hw"][j].tolist())).numpy()  # (H, W)
            save_map(map_file(out_dir, sample.rel_path), full)
            if keep_maps:
                maps[index] = full.astype(np.float16)
            rows.append({"index": index, "image_path": sample.rel_path, "defect_type": sample.defect_type,
                         "label": sample.label, **{n: float(out[n][j]) for n in names},
                         **defect_regions(full, spec.pixel_threshold),
                         **({} if stats is None else {f"stat.{f}": float(v) for f, v in zip(FEATURES, stats[j])})})
            top.offer(float(out[spec.score][j]), index, lambda j=j: Kept(
                batch["image"][j].numpy().astype(np.float16), out["reconstruction"][j].cpu().numpy().astype(np.float16),
                out["map"][j].cpu().numpy().astype(np.float32)))
        if bar is not None:
            bar.update(len(indices))
    if bar is not None:
        bar.close()
    return ScoredFiles(pd.DataFrame(rows), errors, top.result(), maps)


def decide_frame(detector, frame: pd.DataFrame, fdr_q: float | None = None,
                 labels: np.ndarray | None = None) -> pd.DataFrame:
    """Add the decision: score (the decision score), threshold, p_value, q_value (BH, else NaN), is_anomaly, and
    where the decision score is one detector's fused score, decided_by (the component that set it)."""
    frame, spec = frame.copy(), detector.spec
    scores = frame[spec.score].to_numpy(dtype=np.float64)
    frame["score"] = scores
    if spec.score == S.FUSED and spec.standardization and not spec.members and len(frame):
        frame["decided_by"] = deciding_component({n: frame[n].to_numpy() for n in spec.standardization},
                                                 spec.standardization)
    frame["threshold"] = C.image_thresholds(spec, labels, len(frame))
    frame["p_value"] = C.p_values(spec, scores, labels)
    flags, q_values = C.decide(spec, scores, labels, fdr_q)
    frame["q_value"] = np.nan if q_values is None else q_values
    frame["is_anomaly"] = flags
    return frame
