"""Training utilities for fine-tuning, laid out like ``chainer.training``.

:mod:`chainer_finetune.training.extensions` holds the Trainer extensions
(:class:`~chainer_finetune.training.extensions.GradualUnfreeze`),
:mod:`chainer_finetune.training.triggers` the triggers
(:class:`~chainer_finetune.training.triggers.EpochTrigger`).
"""

from chainer_finetune.training import extensions  # NOQA
from chainer_finetune.training import triggers  # NOQA
from chainer_finetune.training.extensions import GradualUnfreeze  # NOQA
