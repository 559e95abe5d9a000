"""Progress of a long step (training epochs or steps, scored images) that reads well wherever it goes: a tqdm bar
on a terminal, and where the output is not one (cron, systemd, CI, a bench worker, a log file) a plain log line
every few percent instead of the bar's carriage-return frames, which would fill a log file with thousands of them.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

log = logging.getLogger("pipeline.progress")


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """`total` units of work named `desc`: update(n), note(**numbers) shown beside it, close().

    On a terminal (`stream`, default stderr): a tqdm bar. Otherwise one INFO line each time another
    `every_percent` % is done, and one at the end: 'training vae: 12/40 epochs (30 %), 9.2 s/epoch, loss=712.3'.
    """

    def __init__(self, total: int, desc: str, unit: str, every_percent: float = 10.0, stream: TextIO | None = None):
        if not 0 < every_percent <= 100:
            raise ValueError(f"progress_every_percent must be in (0, 100], got {every_percent}")
        self.total, self.desc, self.unit, self.every = max(int(total), 0), desc, unit, float(every_percent)
        self.done, self.numbers, self._reported, self._started = 0, {}, 0, time.perf_counter()
        stream = sys.stderr if stream is None else stream
        self._bar = (tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True, leave=True, file=stream)
                     if is_terminal(stream) else None)

    def note(self, **numbers) -> None:
        """Numbers shown with the progress (the latest validation loss, ...), as given."""
        self.numbers.update(numbers)
        if self._bar is not None:
            self._bar.set_postfix(self.numbers, refresh=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        step = int(100 * self.done / self.total // self.every) if self.total else 0
        if step > self._reported and self.done < self.total:
            self._reported = step
            self._line()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done:
            self._line()
        self._bar = None

    def _line(self) -> None:
        seconds = time.perf_counter() - self._started
        rate = f", {seconds / self.done:.3g} s/{self.unit}" if self.done else ""
        numbers = "".join(f", {k}={v}" for k, v in self.numbers.items())
        share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        log.info("%s: %d/%d %ss%s%s%s", self.desc, self.done, self.total, self.unit, share, rate, numbers)
