"""Scoring across several processes with Lightning: `trainer.predict` over a multi-device strategy.

Lightning gives each rank a disjoint shard of the test images (an *unrepeated* distributed sampler: no
padding duplicates, shards may differ by one). Each rank scores its shard with the detector's own
`score_batch` (so every rank scores exactly as one process does), writes each map itself, and at the end
its rows and its panel material to `<out_dir>/.ranks/<job>-rank<k>.*`; after a barrier rank 0 merges them,
checking that every image appears exactly once, into the `ScoredFiles` that `score_files` returns.
Multi-node scoring therefore needs `score.output_dir` on a shared filesystem.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from pipeline.data.datasets import ImageDataset
from pipeline.data.layout import Sample
from pipeline.detector.files import Kept, ScoredFiles, _TopK, map_file, save_map
from pipeline.scoring import scores as S
from pipeline.scoring.drift import FEATURES, image_statistics
from pipeline.scoring.maps import defect_regions, resize_map
from pipeline.training.distributed import build_strategy

RANKS_DIR = ".ranks"


def fingerprint(weights_sha256: str, samples: list[Sample]) -> str:
    """What every rank must agree on before scoring: the weights and the ordered list of test images."""
    digest = hashlib.sha256(weights_sha256.encode())
    for sample in samples:
        digest.update(sample.rel_path.encode() + b"\0")
    return digest.hexdigest()


class DetectorScoring(pl.LightningModule):
    """The detector's `score_batch` as a predict step."""

    def __init__(self, detector, extra: tuple[str, ...], labels: list[int] | None):
        super().__init__()
        self.detector, self.extra, self.labels = detector, extra, labels
        # registered so Lightning moves every network (each member's, the fitted levels) to the rank's device
        self.networks = torch.nn.ModuleList(detector.networks())

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        indices = batch["index"].tolist()
        labels = None if self.labels is None else torch.tensor([self.labels[i] for i in indices])
        out = self.detector.score_batch(batch["image"], labels, self.extra)
        return {k: v.float().cpu() for k, v in out.items() if k != "mu"}


class RankScoresWriter(BasePredictionWriter):
    """Writes this rank's maps as it goes, its rows and kept panel material at the end, then waits for the others."""

    def __init__(self, samples: list[Sample], out_dir: Path, fingerprint: str, score_name: str, keep_top: int,
                 keep_indices: set[int], pixel_threshold: float | None):
        super().__init__(write_interval="batch")
        self.samples, self.out_dir, self.fingerprint, self.score_name = samples, out_dir, fingerprint, score_name
        self.pixel_threshold = pixel_threshold
        self.rows, self.errors, self.top = [], [], _TopK(keep_top, set(keep_indices))
        self.job = uuid.uuid4().hex[:12]  # names this job's files; rank 0's value is broadcast in setup

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Every rank resolved the detector and listed the test images on its own: refuse to score if any
        # rank holds other weights or another image list than rank 0 (all ranks raise together).
        reference = trainer.strategy.broadcast(self.fingerprint, src=0)
        if not trainer.strategy.reduce_boolean_decision(reference == self.fingerprint, all=True):
            raise RuntimeError("distributed scoring: the ranks disagree on the detector weights or the list of "
                               "test images (a model or dataset changed while the job started); run it again")
        self.job = trainer.strategy.broadcast(self.job, src=0)

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices, batch: dict,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        names = [n for n in S.SCORE_NAMES if n in prediction]
        stats = image_statistics(batch["image"])  # (B, F): the drift test's statistics, as score_files adds them
        for j, index in enumerate(batch["index"].tolist()):
            sample, error = self.samples[index], batch["error"][j]
            if error:
                self.errors.append({"index": index, "image_path": sample.rel_path, "error": error})
                continue
            full = resize_map(prediction["map"][j], tuple(batch["orig_hw"][j].tolist())).numpy()  # (H, W)
            save_map(map_file(self.out_dir, sample.rel_path), full)
            self.rows.append({"index": index, "image_path": sample.rel_path, "defect_type": sample.defect_type,
                              "label": sample.label, **{n: float(prediction[n][j]) for n in names},
                              **defect_regions(full, self.pixel_threshold),
                              **{f"stat.{f}": float(v) for f, v in zip(FEATURES, stats[j])}})
            self.top.offer(float(prediction[self.score_name][j]), index, lambda j=j: Kept(
                batch["image"][j].numpy().astype(np.float16), prediction["reconstruction"][j].numpy().astype(np.float16),
                prediction["map"][j].numpy()))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.rank_file(trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = {int(i): {k: torch.from_numpy(np.asarray(getattr(m, k))) for k in ("image", "reconstruction", "map")}
                for i, m in self.top.result().items()}
        # Plain containers and tensors only, so rank 0 reads it back with torch.load(weights_only=True).
        torch.save({"rows": self.rows, "errors": self.errors, "kept": kept}, path)
        trainer.strategy.barrier("rank_scores_written")  # rank 0 must not merge before every file exists

    def rank_file(self, rank: int) -> Path:
        return self.out_dir / RANKS_DIR / f"{self.job}-rank{rank}.pt"


def merge_rank_rows(parts: list[pd.DataFrame], n_samples: int) -> pd.DataFrame:
    """All ranks' rows (scored and unreadable) in sample order, after checking that every sample index
    0..n-1 is there exactly once: a duplicate or a gap is an error naming the indices, never a silent fix."""
    merged = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["index"])
    counts = merged["index"].value_counts()
    duplicated = sorted(int(i) for i in counts[counts > 1].index)
    missing = sorted(set(range(n_samples)) - {int(i) for i in counts.index})
    extra = sorted(int(i) for i in counts.index if not 0 <= int(i) < n_samples)
    if duplicated or missing or extra:
        raise RuntimeError(f"distributed scoring: merged rows do not cover the {n_samples} images exactly once "
                           f"(duplicated {duplicated[:10]}, missing {missing[:10]}, unknown {extra[:10]})")
    return merged.sort_values("index", kind="stable").reset_index(drop=True)


def score_distributed(cfg: DictConfig, detector, samples: list[Sample], out_dir: Path, extra: tuple[str, ...],
                      labels: list[int] | None, keep_indices: set[int]) -> ScoredFiles | None:
    """`score_files` over the configured devices/nodes: the merged result on rank 0, None on other ranks."""
    t = cfg.trainer
    loader = DataLoader(ImageDataset(samples, detector.spec.image_size, detector.spec.read_options),
                        batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    writer = RankScoresWriter(samples, out_dir, fingerprint(detector.spec.weights_sha256 or "", samples),
                              detector.spec.score, cfg.review.max_panels, keep_indices, detector.spec.pixel_threshold)
    # Always float32: the threshold was calibrated on float32 scores, whatever precision training used.
    trainer = pl.Trainer(accelerator=t.accelerator, devices=t.devices, strategy=build_strategy(t), num_nodes=t.num_nodes,
                         precision="32-true", logger=False, callbacks=[writer], enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=False)
    trainer.predict(DetectorScoring(detector, extra, labels), dataloaders=loader, return_predictions=False)
    if not trainer.is_global_zero:
        return None
    files = [writer.rank_file(rank) for rank in range(trainer.world_size)]
    parts = []
    for path in files:
        parts.append(torch.load(path, weights_only=True))
        path.unlink()
    if not any(files[0].parent.iterdir()):
        files[0].parent.rmdir()
    rows = pd.DataFrame([r for p in parts for r in p["rows"]])
    errors = [e for p in parts for e in p["errors"]]
    merge_rank_rows([rows[["index"]], pd.DataFrame(errors, columns=["index"])], len(samples))
    top = _TopK(cfg.review.max_panels, set(keep_indices))
    for kept in (p["kept"] for p in parts):
        for index, m in kept.items():
            row = rows.loc[rows["index"] == index].iloc[0]
            top.offer(float(row[detector.spec.score]), index,
                      lambda m=m: Kept(m["image"].numpy(), m["reconstruction"].numpy(), m["map"].numpy()))
    maps = {int(i): np.load(map_file(out_dir, samples[int(i)].rel_path)) for i in rows["index"]}
    return ScoredFiles(rows.sort_values("index").reset_index(drop=True),
                       [{"image_path": e["image_path"], "error": e["error"]} for e in errors], top.result(), maps)
