"""Small Lightning callbacks the library does not have."""

from __future__ import annotations

import pytorch_lightning as pl

from pipeline.progress import Progress


class EpochHistory(pl.Callback):
    """Keeps every epoch-level metric whose name starts with one of `prefixes` as [(epoch, value)] in memory, for the
    loss-curve figure: "train/..." and "val/..." of the VAE, "local/..." of the local level, "head/..." of the map."""

    def __init__(self, prefixes: tuple[str, ...] = ("train/", "val/")):
        self.prefixes = tuple(prefixes)
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._finished_epoch: int | None = None

    # Lightning calls a callback's epoch-end hooks before the module's, whose metrics (the learned map's pixel AUROC, its
    # summed training loss) they would miss: validation metrics are read when the validation ends (where checkpoints
    # read them), an epoch's training metrics when the next epoch starts or the fit ends.
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, trainer.current_epoch, validation=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finished_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_finished_epoch(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_finished_epoch(trainer)

    def _record_finished_epoch(self, trainer: pl.Trainer) -> None:
        if self._finished_epoch is not None:
            self._record(trainer, self._finished_epoch, validation=False)

    def _record(self, trainer: pl.Trainer, epoch: int, validation: bool) -> None:
        for name, value in trainer.callback_metrics.items():
            if not name.startswith(self.prefixes) or name.endswith("kl_weight") or is_validation(name) != validation:
                continue
            series = self.history.setdefault(name, [])
            if not series or series[-1][0] < epoch:
                series.append((epoch, float(value)))


def is_validation(name: str) -> bool:
    """"val/loss", "local/val_loss", "head/val_pixel_auroc": measured on the selection images."""
    return name.startswith("val/") or "/val_" in name


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
