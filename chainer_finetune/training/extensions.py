"""Trainer extensions for fine-tuning."""

from __future__ import annotations

import logging
import numbers
from typing import Dict, List, Mapping, Sequence, Union

import chainer
from chainer import serializer as serializer_module
from chainer.training import extension
import numpy

from chainer_finetune.freeze import freeze
from chainer_finetune.freeze import unfreeze
from chainer_finetune.paths import as_list
from chainer_finetune.paths import match_links

logger = logging.getLogger(__name__)

Step = Union[int, float]
_UNITS = ('epoch', 'iteration')


class GradualUnfreeze(extension.Extension):

    """Trainer extension to unfreeze groups of layers on a schedule.

    Gradual unfreezing (fastai's ``freeze_to``, Lightning's
    ``BackboneFinetuning``): training starts with the scheduled groups
    frozen (see :func:`chainer_finetune.freeze.freeze`) and unfreezes
    each group when its epoch or iteration comes::

        trainer.extend(GradualUnfreeze(net, {2: 'conv5',
                                             4: ['conv4', 'conv3']}))

    Here conv5 is trainable from the first update after epoch 2 completes,
    conv3 and conv4 from the first update after epoch 4; everything the
    schedule names is frozen until then. Epochs may be fractional
    (``0.5``: halfway through the first epoch, by ``updater.epoch_detail``).
    A step at 0 is unfrozen when training starts.

    On each unfreeze the extension logs the links at INFO level and reports
    ``unfrozen`` (the number of links unfrozen) for
    :class:`~chainer.training.extensions.LogReport`.

    **Snapshots.** The steps done are saved with the trainer
    (:meth:`serialize`). Every scheduled group is frozen *when the
    extension is created* (create it after ``optimizer.setup``, before
    loading the snapshot: Chainer loads the optimizer state of a frozen
    parameter only while its update rule is disabled), and
    :meth:`initialize` replays the schedule, so a resumed run has the
    enabled set of the snapshot. The details: :doc:`training`.

    Args:
        model (~chainer.Link): The model the optimizer updates.
        schedule (dict): Step (epoch or iteration count, >= 0) to the link
            paths or patterns to unfreeze then (a string or a list; see
            :func:`chainer_finetune.paths.match_links`).
        unit (str): ``'epoch'`` or ``'iteration'``.

    Attributes:
        trigger: ``(1, 'iteration')``: the schedule is checked after
            every update.
        priority: ``PRIORITY_EDITOR``: runs before the readers
            (``LogReport``) and snapshots of the same iteration.
        done (list): The steps unfrozen so far.
    """

    trigger = 1, 'iteration'
    priority = extension.PRIORITY_EDITOR

    def __init__(self, model: chainer.Link,
                 schedule: Mapping[Step, Union[str, Sequence[str]]],
                 unit: str = 'epoch') -> None:
        if unit not in _UNITS:
            raise ValueError("unit must be 'epoch' or 'iteration', got "
                             '{!r}'.format(unit))
        if not isinstance(schedule, Mapping) or not schedule:
            raise ValueError('schedule must be a non-empty dict of step to '
                             'link patterns, got {!r}'.format(schedule))
        groups: Dict[float, List[str]] = {}
        for step, patterns in schedule.items():
            if isinstance(step, bool) or \
                    not isinstance(step, numbers.Real) or \
                    not numpy.isfinite(step) or step < 0:
                raise ValueError('schedule steps must be numbers >= 0, got '
                                 '{!r}'.format(step))
            if unit == 'iteration' and step != int(step):
                raise ValueError('iteration steps must be whole numbers, got '
                                 '{!r}'.format(step))
            patterns = as_list(patterns)
            match_links(model, patterns)   # a typo fails here, not later
            groups[float(step)] = patterns
        self._model = model
        self._unit = unit
        self._steps = sorted(groups)
        self._groups = groups
        self._done: List[float] = []
        # Frozen now, before a snapshot's optimizer state is loaded (see
        # the class documentation).
        self._freeze_all()

    @property
    def done(self) -> List[Step]:
        return [_plain(step) for step in self._done]

    def _freeze_all(self) -> None:
        for step in self._steps:
            freeze(self._model, self._groups[step])

    def _apply_due(self, trainer) -> None:
        updater = trainer.updater
        count = (updater.iteration if self._unit == 'iteration'
                 else updater.epoch_detail)
        n_links = 0
        for step in self._steps:
            if step in self._done or count < step:
                continue
            paths = unfreeze(self._model, self._groups[step])
            self._done.append(step)
            n_links += len(paths)
            logger.info('%s %s, iteration %d: unfroze %s', self._unit,
                        _plain(step), updater.iteration,
                        ', '.join(paths))
        if n_links:
            # Once per call: several steps due at once (a step at 0 and
            # one at epoch 0.0001) report their sum.
            chainer.report({'unfrozen': n_links})

    def _replay(self) -> None:
        # The enabled set of the live run: everything scheduled frozen,
        # then the steps done unfrozen in order (so that a group unfrozen
        # early stays unfrozen inside a later, larger one).
        self._freeze_all()
        for step in self._done:
            paths = unfreeze(self._model, self._groups[step])
            logger.debug('resumed: %s %s unfrozen again (%s)', self._unit,
                         _plain(step), ', '.join(paths))

    def initialize(self, trainer) -> None:
        """Replays the schedule up to the current (possibly resumed) step."""
        self._replay()
        self._apply_due(trainer)

    def __call__(self, trainer) -> None:
        if len(self._done) < len(self._steps):
            self._apply_due(trainer)

    def serialize(self, serializer) -> None:
        # One flag per scheduled step (never an empty array, which not
        # every serializer stores), with the steps to match them on load.
        if isinstance(serializer, serializer_module.Serializer):
            serializer('steps', numpy.array(self._steps, numpy.float64))
            serializer('done', numpy.array(
                [step in self._done for step in self._steps], numpy.bool_))
            return
        try:
            saved_steps = serializer('steps', None)
            saved_done = serializer('done', None)
        except KeyError:
            saved_steps = saved_done = None
        if saved_steps is None or saved_done is None:
            logger.warning('the snapshot holds no GradualUnfreeze state; '
                           'steps are done by the restored %s count',
                           self._unit)
            return
        saved = {float(s) for s, d in zip(numpy.asarray(saved_steps),
                                          numpy.asarray(saved_done)) if d}
        unknown = saved.difference(self._steps)
        if unknown:
            logger.warning('the snapshot had unfrozen steps %s, which the '
                           'schedule no longer has',
                           sorted(_plain(s) for s in unknown))
        self._done = [step for step in self._steps if step in saved]
        self._replay()


def _plain(step: float) -> Step:
    return int(step) if step == int(step) else step
