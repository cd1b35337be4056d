"""EpochTrigger: at most once per interval of wall time, always at the end
of the last epoch, only at epoch ends; on a real Trainer."""

import chainer_finetune  # noqa: F401  (before chainer: compat patches)

import chainer
import chainer.links as L
from chainer import training
import numpy
import pytest

from chainer_finetune.training.triggers import EpochTrigger


class _Clock:
    """A clock the test moves: each read returns the current value."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Recorder(training.Extension):
    """Notes the epoch and iteration each time it runs."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, trainer):
        self.calls.append((trainer.updater.epoch, trainer.updater.iteration))


def _run(epochs, seconds_per_iteration, min_seconds, last_epoch):
    """4 examples, batch 2: 2 iterations per epoch; the clock advances by
    ``seconds_per_iteration`` per iteration."""
    x = numpy.arange(8, dtype=numpy.float32).reshape(4, 2)
    t = numpy.array([0, 1, 0, 1], numpy.int32)
    model = L.Classifier(L.Linear(2, 2))
    optimizer = chainer.optimizers.SGD()
    optimizer.setup(model)
    it = chainer.iterators.SerialIterator(
        chainer.datasets.TupleDataset(x, t), 2, shuffle=False)
    trainer = training.Trainer(
        training.updaters.StandardUpdater(it, optimizer), (epochs, 'epoch'))
    clock = _Clock()
    recorder = _Recorder()

    @training.make_extension(trigger=(1, 'iteration'), priority=1000)
    def tick(trainer):
        clock.now += seconds_per_iteration

    trainer.extend(tick)
    trainer.extend(recorder, trigger=EpochTrigger(min_seconds, last_epoch,
                                                  clock=clock))
    trainer.run()
    return recorder.calls


def test_short_epochs_fire_once_per_interval_and_at_the_last_epoch():
    # 1 s per epoch, 3.5 s apart: epochs 1, 5, 9 and the last one, 10.
    calls = _run(10, 0.5, 3.5, last_epoch=10)
    assert calls == [(1, 2), (5, 10), (9, 18), (10, 20)]


def test_long_epochs_fire_every_epoch_at_its_end():
    calls = _run(4, 3.0, 5.0, last_epoch=4)
    assert calls == [(1, 2), (2, 4), (3, 6), (4, 8)]


def test_without_last_epoch_only_the_interval_counts():
    calls = _run(6, 0.5, 2.5, last_epoch=None)
    assert calls == [(1, 2), (4, 8)]


def test_zero_interval_is_every_epoch_and_negative_is_refused():
    assert _run(3, 0.5, 0.0, last_epoch=None) == [(1, 2), (2, 4), (3, 6)]
    with pytest.raises(ValueError, match='min_seconds'):
        EpochTrigger(-1.0, None)
