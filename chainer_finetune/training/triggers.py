"""Trainer triggers for fine-tuning."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional


class EpochTrigger(object):

    """Fires at the end of an epoch, at most once every ``min_seconds``,
    and always at the end of epoch ``last_epoch``.

    For extensions whose cost does not shrink with the epoch, such as
    ``PlotReport`` (about 0.15 s per figure): once a feature cache makes an
    epoch take a few hundredths of a second, redrawing the figures after
    every epoch would be most of the run. Epochs longer than
    ``min_seconds`` fire every time, as ``(1, 'epoch')`` does, and the last
    epoch's values are always drawn.

    Args:
        min_seconds: Least wall time between two firings.
        last_epoch: The run's last epoch (its end always fires); None: no
            such guarantee.
        clock: The time source (``time.monotonic``).
    """

    def __init__(self, min_seconds: float, last_epoch: Optional[int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if min_seconds < 0:
            raise ValueError('min_seconds must be >= 0, got {!r}'.format(
                min_seconds))
        self.min_seconds = float(min_seconds)
        self.last_epoch = last_epoch
        self.clock = clock
        self._last_fired: Optional[float] = None

    def __call__(self, trainer: Any) -> bool:
        updater = trainer.updater
        if not updater.is_new_epoch:
            return False
        now = self.clock()
        due = (self._last_fired is None or
               now - self._last_fired >= self.min_seconds or
               (self.last_epoch is not None and
                updater.epoch >= self.last_epoch))
        if due:
            self._last_fired = now
        return due


__all__ = ['EpochTrigger']
