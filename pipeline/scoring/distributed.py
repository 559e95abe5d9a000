"""Distributed `score`: the test images are scored across ranks (pipeline/training/predict.py), then
rank 0 merges the per-rank rows into the same (frame, errors, maps) that `score_dataset` returns, so
everything after it (threshold, scores.csv, metrics, overlays, the MLflow run) is the single-process code.

Used only when the trainer asks for more than one process (`trainer.devices x trainer.num_nodes > 1`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.data.layout import Sample
from pipeline.scoring.detector import AnomalyDetector

log = logging.getLogger(__name__)


def wants_distributed(trainer_cfg: DictConfig) -> bool:
    """True when the trainer config asks for more than one process in total."""
    from pipeline.training.distributed import requested_world_size

    size = requested_world_size(trainer_cfg)
    return size is None or size > 1  # 'auto' or a device list: let Lightning decide how many


def fingerprint(weights_sha256: str, samples: list[Sample]) -> str:
    """What every rank must agree on before scoring: the weights and the ordered list of test images."""
    digest = hashlib.sha256(weights_sha256.encode())
    for sample in samples:
        digest.update(sample.rel_path.encode() + b"\0")
    return digest.hexdigest()


def merge_rank_rows(parts: list[pd.DataFrame], n_samples: int) -> pd.DataFrame:
    """All ranks' rows in sample order, after checking that every sample index 0..n-1 is there exactly once.

    The predict sampler shards without padding, so a duplicate or a gap means a rank scored another
    image list or a file went missing: that is an error naming the indices, never a silent fix.
    """
    merged = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["index"])
    counts = merged["index"].value_counts()
    duplicated = sorted(int(i) for i in counts[counts > 1].index)
    missing = sorted(set(range(n_samples)) - {int(i) for i in counts.index})
    extra = sorted(int(i) for i in counts.index if not 0 <= int(i) < n_samples)
    if duplicated or missing or extra:
        raise RuntimeError(f"distributed scoring: merged rows do not cover the {n_samples} test images exactly once "
                           f"(duplicated {duplicated[:10]}, missing {missing[:10]}, unknown {extra[:10]})")
    return merged.sort_values("index", kind="stable").reset_index(drop=True)


def split_rows(merged: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """(scored rows in score_dataset's columns, [{'image_path', 'error'}] for unreadable files)."""
    failed = merged["error"].fillna("").astype(str) != ""
    errors = [{"image_path": row.image_path, "error": row.error} for row in merged[failed].itertuples()]
    frame = merged[~failed].drop(columns=["error"]).reset_index(drop=True)
    frame["index"] = frame["index"].astype(int)
    frame["label"] = frame["label"].astype(int)
    return frame, errors


def score_distributed(cfg: DictConfig, detector: AnomalyDetector, samples: list[Sample], out_dir: Path,
                      weights_sha256: str) -> tuple[pd.DataFrame, list[dict], dict[int, np.ndarray]] | None:
    """(frame, errors, maps by sample index) on rank 0, like `score_dataset(keep_maps=True)`; None on other ranks."""
    from pipeline.scoring.run import map_file
    from pipeline.training.predict import predict_distributed

    files = predict_distributed(cfg, detector, samples, out_dir, fingerprint(weights_sha256, samples))
    if files is None:
        return None
    frame, errors = split_rows(merge_rank_rows([pd.read_parquet(path) for path in files], len(samples)))
    for path in files:  # our own scratch files; the merged result goes to scores.csv
        path.unlink()
    if not any(files[0].parent.iterdir()):
        files[0].parent.rmdir()
    for error in errors:
        log.warning("cannot score %s: %s", error["image_path"], error["error"])
    maps = {int(i): np.load(map_file(out_dir, samples[int(i)])) for i in frame["index"]}  # float16 (H, W)
    log.info("merged %d scored images and %d unreadable files from %d ranks", len(frame), len(errors), len(files))
    return frame, errors, maps
