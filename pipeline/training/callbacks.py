"""Small Lightning callbacks the library does not have."""

from __future__ import annotations

import pytorch_lightning as pl

from pipeline.progress import Progress


class EpochHistory(pl.Callback):
    """Keeps every epoch-level metric as [(epoch, value)] in memory, for the loss-curve figure."""

    def __init__(self, prefixes: tuple[str, ...] = ("train/", "val/")):
        self.prefixes = prefixes
        self.history: dict[str, list[tuple[int, float]]] = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._record(trainer, ("val/",))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, ("train/",))

    def _record(self, trainer: pl.Trainer, prefixes: tuple[str, ...]) -> None:
        for name, value in trainer.callback_metrics.items():
            if name.startswith(prefixes) and not name.endswith("kl_weight"):
                self.history.setdefault(name, []).append((trainer.current_epoch, float(value)))



class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message says where and what is kept."""


class StopOnNonFiniteLoss(pl.Callback):
    """Stop at the first NaN/inf training loss with a clear message (Lightning would otherwise go on
    and only EarlyStopping would notice, an epoch later). The checkpoints written so far are the
    last good ones and are left as they are."""

    def __init__(self, checkpoint_dir: str):
        self.checkpoint_dir = checkpoint_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not bool(loss.isfinite()):
            raise NonFiniteLossError(
                f"training stopped: the loss became {float(loss)} at epoch {trainer.current_epoch}, batch {batch_idx} "
                f"(try a lower model.lr or check the data); the last good checkpoints are kept in {self.checkpoint_dir}")


class ProgressBar(pl.Callback):
    """One line of progress per fit, ours: epochs (or steps) done, of how many, and the numbers that say
    how it goes; rank 0 only. A bar on a terminal, a log line every `every_percent` % otherwise
    (pipeline/progress.py). Lightning's own bar (a bar per epoch and per validation) is switched off."""

    def __init__(self, label: str, unit: str = "epoch", shown: tuple[str, ...] = ("val/loss",), enabled: bool = True,
                 every_percent: float = 10.0):
        self.label, self.unit, self.shown, self.enabled, self.every_percent = label, unit, shown, enabled, every_percent
        self._progress: Progress | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        total = trainer.max_steps if self.unit == "step" else trainer.max_epochs
        self._progress = Progress(total, self.label, self.unit, self.every_percent)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._progress is not None and self.unit == "step":
            self._progress.update(1)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._progress is None or trainer.sanity_checking:
            return
        self._progress.note(**{name.split("/", 1)[-1]: f"{float(trainer.callback_metrics[name]):.4g}"
                               for name in self.shown if name in trainer.callback_metrics})
        if self.unit == "epoch":
            self._progress.update(1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
