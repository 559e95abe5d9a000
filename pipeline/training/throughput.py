"""Training throughput: images per second over all ranks, per epoch, logged as `perf/train_images_per_second`.

Timed from the start to the end of every training batch (forward, backward, gradient all-reduce,
optimizer step), so process start-up, validation and checkpointing are not counted. Under DDP every
step waits for the slowest rank's all-reduce, so rank 0's step time is the job's step time, and every
rank processes a batch of the same size: images = rank 0's images x world size. (Lightning's
ThroughputMonitor reports a rolling window per logging step; we want one honest figure per epoch.)
"""

from __future__ import annotations

import statistics
import time

import pytorch_lightning as pl


class EpochThroughput(pl.Callback):
    def __init__(self):
        self.per_epoch: list[tuple[int, float]] = []  # (epoch, images/s over all ranks)
        self._seconds = 0.0
        self._images = 0
        self._started = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seconds, self._images = 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seconds += time.perf_counter() - self._started
        self._images += int(batch[0].shape[0])  # batch = (images (B, C, S, S), indices (B,))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._seconds <= 0:
            return
        rate = self._images * trainer.world_size / self._seconds
        self.per_epoch.append((trainer.current_epoch, rate))
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.log_metrics({"perf/train_images_per_second": rate}, step=trainer.current_epoch)

    def steady_rate(self) -> float | None:
        """Median images/s of the epochs after the first (which pays for warm-up), or of the only one."""
        rates = [rate for _, rate in self.per_epoch]
        if not rates:
            return None
        return statistics.median(rates[1:] if len(rates) > 1 else rates)
