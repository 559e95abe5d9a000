"""Distributed scoring with Lightning: `trainer.predict` over a multi-device strategy, one file per rank.

Lightning gives each rank a disjoint shard of the test images (an *unrepeated* distributed sampler:
no padding duplicates, shards may differ by one). Each rank scores its shard with the detector, writes
every anomaly map itself and its rows to `<out_dir>/.ranks/<job>-rank<k>.parquet`; after a barrier,
rank 0 alone gets the list of files to merge (pipeline/scoring/distributed.py checks that every image
appears exactly once). Multi-node scoring therefore needs `score.output_dir` on a shared filesystem.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from pipeline.data.datasets import ImageDataset
from pipeline.data.layout import Sample
from pipeline.scoring.detector import AnomalyDetector
from pipeline.scoring.maps import resize_map
from pipeline.scoring.scores import SCORE_NAMES
from pipeline.training.distributed import build_strategy

RANKS_DIR = ".ranks"


class DetectorScoring(pl.LightningModule):
    """The detector's own `score_batch` as a predict step, so every rank scores exactly as one process does."""

    def __init__(self, detector: AnomalyDetector):
        super().__init__()
        self.detector = detector
        self.net = detector.net  # registered so that Lightning moves it to the rank's device

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = self.detector.score_batch(batch["image"])  # images (B, C, S, S)
        return {**{name: out[name].cpu() for name in SCORE_NAMES},  # (B,) each
                "map": out["map"].float().cpu()}  # (B, S, S)


class RankScoresWriter(BasePredictionWriter):
    """Writes this rank's maps as it goes and its rows at the end, then waits for the other ranks."""

    def __init__(self, samples: list[Sample], out_dir: Path, fingerprint: str):
        super().__init__(write_interval="batch")
        self.samples, self.out_dir, self.fingerprint = samples, out_dir, fingerprint
        self.rows: list[dict] = []
        self.job = uuid.uuid4().hex[:12]  # names this job's files; rank 0's value is broadcast in setup

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Every rank resolved the detector and listed the test images on its own: refuse to score
        # if any rank holds other weights or another image list than rank 0 (all ranks raise together).
        reference = trainer.strategy.broadcast(self.fingerprint, src=0)
        if not trainer.strategy.reduce_boolean_decision(reference == self.fingerprint, all=True):
            raise RuntimeError("distributed scoring: the ranks disagree on the detector weights or the list of "
                               "test images (a model or dataset changed while the job started); run it again")
        self.job = trainer.strategy.broadcast(self.job, src=0)

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices, batch: dict,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        from pipeline.scoring.run import defect_regions, map_file, save_map

        for j, index in enumerate(batch["index"].tolist()):
            sample, error = self.samples[index], batch["error"][j]
            row = {"index": index, "image_path": sample.rel_path, "defect_type": sample.defect_type,
                   "label": sample.label, "error": error, **{name: float("nan") for name in SCORE_NAMES},
                   "defect_area": float("nan"), "defect_regions": -1}
            if not error:
                full = resize_map(prediction["map"][j], tuple(batch["orig_hw"][j].tolist())).numpy()  # (H, W)
                save_map(map_file(self.out_dir, sample), full)
                row.update({name: float(prediction[name][j]) for name in SCORE_NAMES})
                row.update(defect_regions(full, pl_module.detector.spec.pixel_threshold))
            self.rows.append(row)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = self.out_dir / RANKS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = self.rank_file(trainer.global_rank)
        columns = ["index", "image_path", "defect_type", "label", "error", *SCORE_NAMES, "defect_area", "defect_regions"]
        pd.DataFrame(self.rows, columns=columns).to_parquet(path, index=False)
        trainer.strategy.barrier("rank_scores_written")  # rank 0 must not merge before every file exists

    def rank_file(self, rank: int) -> Path:
        return self.out_dir / RANKS_DIR / f"{self.job}-rank{rank}.parquet"


def predict_distributed(cfg: DictConfig, detector: AnomalyDetector, samples: list[Sample], out_dir: Path,
                        fingerprint: str) -> list[Path] | None:
    """Score `samples` over the configured devices/nodes; the per-rank files on rank 0, None elsewhere."""
    t = cfg.trainer
    loader = DataLoader(ImageDataset(samples, detector.spec.image_size, detector.spec.read_options),
                        batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    writer = RankScoresWriter(samples, out_dir, fingerprint)
    # Always float32: the threshold was calibrated on float32 scores, whatever precision training used.
    trainer = pl.Trainer(accelerator=t.accelerator, devices=t.devices, strategy=build_strategy(t),
                         num_nodes=t.num_nodes, precision="32-true", logger=False, callbacks=[writer],
                         enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=t.enable_progress_bar)
    trainer.predict(DetectorScoring(detector), dataloaders=loader, return_predictions=False)
    # With ddp_spawn this process only launched the ranks; it still knows the job's file names.
    return [writer.rank_file(rank) for rank in range(trainer.world_size)] if trainer.is_global_zero else None
