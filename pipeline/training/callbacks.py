"""Small Lightning callbacks the library does not have."""

from __future__ import annotations

import pytorch_lightning as pl


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

