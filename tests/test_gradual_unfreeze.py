"""GradualUnfreeze: a schedule of unfreezes, and resuming from snapshots."""

import logging

import chainer_finetune  # noqa: F401  (patches Chainer; must precede chainer)

import numpy
import pytest

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import optimizers
from chainer import serializers
from chainer import training
from chainer.training import extensions
from chainer.training import triggers

from chainer_finetune.errors import LinkNotFoundError
from chainer_finetune.freeze import freeze
from chainer_finetune.training import GradualUnfreeze

N_DATA, BATCH = 16, 4          # 4 iterations per epoch
ITERATIONS = 12
SCHEDULE = {3: ['conv2'], 6: ['conv1']}
GROUPS = ('conv1', 'conv2')


class _Net(chainer.Chain):
    """conv1 -> conv2 + BN -> fc; weights from a fixed seed."""

    def __init__(self):
        super().__init__()
        rng = numpy.random.RandomState(0)

        def normal(*shape):
            return (rng.randn(*shape) * 0.3).astype(numpy.float32)

        with self.init_scope():
            self.conv1 = L.Convolution2D(1, 4, 3, pad=1,
                                         initialW=normal(4, 1, 3, 3))
            self.conv2 = chainer.Chain()
            with self.conv2.init_scope():
                self.conv2.conv = L.Convolution2D(
                    4, 4, 3, pad=1, initialW=normal(4, 4, 3, 3))
                self.conv2.bn = L.BatchNormalization(4)
            self.fc = L.Linear(4 * 6 * 6, 3, initialW=normal(3, 144))

    def forward(self, x, t):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2.bn(self.conv2.conv(h)))
        loss = F.softmax_cross_entropy(self.fc(h), t)
        chainer.report({'loss': loss}, self)
        return loss


def _data():
    rng = numpy.random.RandomState(1)
    x = rng.randn(N_DATA, 1, 6, 6).astype(numpy.float32)
    t = rng.randint(0, 3, N_DATA).astype(numpy.int32)
    return list(zip(x, t))


def _state(model):
    """Parameters and BN statistics, copied."""
    state = {name: p.array.copy() for name, p in model.namedparams()}
    state['bn/avg_mean'] = model.conv2.bn.avg_mean.copy()
    state['bn/avg_var'] = model.conv2.bn.avg_var.copy()
    return state


def _enabled(model):
    return {name: p.update_rule.enabled for name, p in model.namedparams()}


def _trainer(tmp_path, make_optimizer, schedule=SCHEDULE, unit='iteration',
             user_freezes=True, stop=ITERATIONS):
    model = _Net()
    optimizer = make_optimizer()
    optimizer.setup(model)
    if user_freezes:
        freeze(model, list(GROUPS))
    it = chainer.iterators.SerialIterator(_data(), BATCH, shuffle=False)
    updater = training.StandardUpdater(it, optimizer)
    trainer = training.Trainer(updater, (stop, 'iteration'), out=tmp_path)
    unfreezer = GradualUnfreeze(model, schedule, unit=unit)
    trainer.extend(unfreezer)
    return trainer, model, unfreezer


class _Recorder(training.Extension):
    """Per iteration: the state after the update (before GradualUnfreeze),
    then the enabled flags and what was reported (after it)."""

    def __init__(self, model):
        self.model = model
        self.states, self.enabled, self.reported = [], [], []

    class _After(training.Extension):
        priority = training.PRIORITY_READER

        def __init__(self, recorder):
            self.recorder = recorder

        def __call__(self, trainer):
            r = self.recorder
            r.enabled.append(_enabled(r.model))
            r.reported.append(trainer.observation.get('unfrozen'))

    priority = training.PRIORITY_WRITER

    def __call__(self, trainer):
        self.states.append(_state(self.model))

    def attach(self, trainer):
        trainer.extend(self, name='record_before')
        trainer.extend(self._After(self), name='record_after')
        return self


def _moved(before, after, prefix):
    names = [n for n in before if n.startswith(prefix)]
    assert names
    return any(not numpy.array_equal(before[n], after[n]) for n in names)


def _unchanged(before, after, prefix):
    names = [n for n in before if n.startswith(prefix)]
    assert names
    return all(numpy.array_equal(before[n], after[n]) for n in names)


OPTIMIZERS = {
    'MomentumSGD': lambda: optimizers.MomentumSGD(lr=0.05),
    'Adam': lambda: optimizers.Adam(alpha=0.01),
}


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_schedule(tmp_path, name, caplog):
    trainer, model, unfreezer = _trainer(tmp_path, OPTIMIZERS[name])
    initial = _state(model)
    rec = _Recorder(model).attach(trainer)
    with caplog.at_level(logging.INFO,
                         logger='chainer_finetune.training.extensions'):
        trainer.run()
    states = rec.states                  # states[i]: after update i + 1
    for i, state in enumerate(states):
        update = i + 1
        assert _moved(initial, state, '/fc/')
        # conv2 (with its BN statistics) is frozen for updates 1-3, conv1
        # for updates 1-6.
        assert _unchanged(initial, state, '/conv2/') == (update <= 3)
        assert _unchanged(initial, state, 'bn/') == (update <= 3)
        assert _unchanged(initial, state, '/conv1/') == (update <= 6)
        if update > 6:
            assert _moved(states[i - 1], state, '/conv1/')
    assert rec.reported == [None, None, 1, None, None, 1] + [None] * 6
    assert all(rec.enabled[i]['/conv2/conv/W'] == (i + 1 >= 3)
               for i in range(ITERATIONS))
    assert unfreezer.done == [3, 6]
    assert 'iteration 3: unfroze conv2' in caplog.text
    assert 'iteration 6: unfroze conv1' in caplog.text


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
@pytest.mark.parametrize('at', [2, 3, 4, 6, 9])
@pytest.mark.parametrize('user_freezes', [True, False])
def test_resume_continues_identically(tmp_path, name, at, user_freezes):
    make = OPTIMIZERS[name]
    # The uninterrupted run, with a trainer snapshot at iteration `at`.
    trainer, model, _ = _trainer(tmp_path / 'a', make)
    rec = _Recorder(model).attach(trainer)
    trainer.extend(extensions.snapshot(filename='snapshot'),
                   trigger=triggers.ManualScheduleTrigger([at], 'iteration'))
    trainer.run()
    final = _state(model)

    # A new process: build everything again, load, run to the end.
    trainer, model, unfreezer = _trainer(tmp_path / 'b', make,
                                         user_freezes=user_freezes)
    serializers.load_npz(str(tmp_path / 'a' / 'snapshot'), trainer)
    assert trainer.updater.iteration == at
    assert unfreezer.done == [s for s in (3, 6) if s <= at]
    # The enabled set is the one the snapshot was taken with.
    assert _enabled(model) == rec.enabled[at - 1]
    resumed = _Recorder(model).attach(trainer)
    trainer.run()
    assert _enabled(model) == rec.enabled[-1]
    for k, v in final.items():
        assert numpy.array_equal(_state(model)[k], v), k
    # Every resumed iteration matches the uninterrupted run bit for bit.
    for i, state in enumerate(resumed.states):
        for k, v in rec.states[at + i].items():
            assert numpy.array_equal(state[k], v), (at + i + 1, k)
    assert resumed.reported == rec.reported[at:]


def test_overlapping_groups_are_not_refrozen(tmp_path):
    schedule = {2: 'conv2/conv', 5: ['conv*', 'conv2']}
    trainer, model, _ = _trainer(tmp_path / 'a', OPTIMIZERS['MomentumSGD'],
                                 schedule=schedule)
    trainer.extend(extensions.snapshot(filename='snapshot'),
                   trigger=triggers.ManualScheduleTrigger([3], 'iteration'))
    trainer.run()
    final = _state(model)
    trainer, model, unfreezer = _trainer(
        tmp_path / 'b', OPTIMIZERS['MomentumSGD'], schedule=schedule)
    serializers.load_npz(str(tmp_path / 'a' / 'snapshot'), trainer)
    enabled = _enabled(model)
    assert enabled['/conv2/conv/W'] and not enabled['/conv1/W']
    trainer.run()
    assert unfreezer.done == [2, 5]
    for k, v in final.items():
        assert numpy.array_equal(_state(model)[k], v), k


def test_epochs_and_step_zero(tmp_path):
    # 4 iterations per epoch: epoch 0.5 ends after iteration 2, epoch 1
    # after iteration 4; step 0 is unfrozen when training starts.
    schedule = {0: 'conv2/bn', 0.5: 'conv2/conv', 1: 'conv1'}
    trainer, model, unfreezer = _trainer(tmp_path, OPTIMIZERS['Adam'],
                                         schedule=schedule, unit='epoch',
                                         stop=6)
    rec = _Recorder(model).attach(trainer)
    trainer.run()
    assert unfreezer.done == [0, 0.5, 1]
    flags = [(e['/conv2/conv/W'], e['/conv1/W']) for e in rec.enabled]
    assert flags == [(False, False), (True, False), (True, False),
                     (True, True), (True, True), (True, True)]
    assert rec.reported == [None, 1, None, 1, None, None]


@pytest.mark.parametrize('kwargs,error', [
    ({'schedule': {1: 'conv9'}}, LinkNotFoundError),
    ({'schedule': {1: 'conv1'}, 'unit': 'epochs'}, ValueError),
    ({'schedule': {}}, ValueError),
    ({'schedule': {-1: 'conv1'}}, ValueError),
    ({'schedule': {1.5: 'conv1'}, 'unit': 'iteration'}, ValueError),
    ({'schedule': {True: 'conv1'}}, ValueError),
])
def test_bad_schedules(kwargs, error):
    with pytest.raises(error):
        GradualUnfreeze(_Net(), **kwargs)


def test_groups_are_frozen_when_created():
    model = _Net()
    optimizers.SGD().setup(model)
    GradualUnfreeze(model, {1: 'conv1'})
    enabled = _enabled(model)
    assert not enabled['/conv1/W'] and enabled['/conv2/conv/W']
