"""The feature cache of a fine-tuning run (``--feature-cache``).

When the whole pretrained backbone is frozen, the new head is all that
trains and the input transform is deterministic (``--augment none``),
every epoch computes the same backbone features for the same images. The
cache computes each image's pooled feature once, in the batches the run
itself would use (so the features are the same to the bit), and the run
trains and evaluates the head on them: the head's parameters are the
model's own, so ``best_model.npz`` is the whole model as without the cache.

Features are kept in memory up to :data:`RAM_LIMIT_BYTES` (``auto``), else
in a NumPy memmap under the run's directory, removed when the run ends.
With random augmentation, unfreezing, a backbone that still trains or one
with Dropout (random in training) the cache is off and the log says why.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, List, Optional, Tuple

import chainer
import chainer.functions as F
import numpy

from chainer_finetune.errors import FinetuneError
from chainer_finetune.freeze import frozen_paths
from chainer_finetune.paths import link_paths

logger = logging.getLogger(__name__)

#: ``--feature-cache`` values: ``auto`` (on where it applies, in memory up
#: to :data:`RAM_LIMIT_BYTES`, else on disk), ``off``, ``ram``, ``disk``.
MODES = ('auto', 'off', 'ram', 'disk')

#: Features held in memory by ``auto`` (bytes, training and held-out
#: together); beyond it they go to a memmap on disk.
RAM_LIMIT_BYTES = 1 << 30

#: The directory under a run's output that holds on-disk features.
CACHE_DIR = 'feature_cache'


def why_not(config: Any, model: Any, pretrained: bool) -> Optional[str]:
    """Why the run cannot use the cache (None: it can).

    Args:
        config: The job's :class:`~chainer_finetune.finetune.FinetuneConfig`.
        model: The run's :class:`~chainer_finetune.finetune.CaffeClassifier`
            (frozen as the run freezes it).
        pretrained: The run starts from the Caffe model.
    """
    mode = getattr(config, 'feature_cache', 'auto')
    if mode not in MODES:
        raise FinetuneError('feature_cache must be one of {}, not {!r}'
                            .format(', '.join(MODES), mode))
    if mode == 'off':
        return 'turned off (--feature-cache off)'
    if config.augment != 'none':
        return ('random augmentation (--augment {}) gives every epoch '
                'other inputs'.format(config.augment))
    if not pretrained:
        return 'the run from scratch trains the backbone'
    if not model.has_head:
        return ("the net's own classifier layer, inside the backbone, is "
                'trained')
    if config.unfreeze_at is not None:
        return 'layers are unfrozen at epoch {:g}'.format(config.unfreeze_at)
    frozen = set(frozen_paths(model.backbone))
    training = [path for path, link in link_paths(model.backbone)
                if path not in frozen and
                any(True for _ in link.params(include_uninit=False))]
    if training:
        return 'backbone layers still train ({})'.format(
            ', '.join(training[:3]) + (' ...' if len(training) > 3 else ''))
    dropout = [name for name, _, _ in model.backbone.layers
               if _type(model.backbone, name) == 'Dropout']
    if dropout:
        return 'the backbone has Dropout ({}), random in training'.format(
            ', '.join(dropout))
    return None


def _type(net: Any, name: str) -> Optional[str]:
    for layer in net.caffe_layers:
        if layer.name == name:
            return layer.type
    return None


class HeadOnly(chainer.Chain):
    """The trainable part of a :class:`CaffeClassifier` on cached features:
    its ``head_norm`` and ``head`` links (shared, not copied)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        with self.init_scope():
            self.head_norm = model.head_norm
            self.head = model.head

    def forward(self, h: Any) -> chainer.Variable:
        return self.head(self.head_norm(h))


def pooled_features(model: Any, x: Any) -> Any:
    """The head's input for a batch: the backbone's output blob averaged
    over its spatial axes, as :class:`CaffeClassifier` computes it."""
    h, = model.backbone(inputs={model.input_name: x}, outputs=[model.output])
    if h.ndim > 2:
        h = F.mean(h, axis=tuple(range(2, h.ndim)))
    return h.array


class FeatureSet(chainer.dataset.DatasetMixin):
    """``(feature, label)`` examples from an array (or memmap)."""

    def __init__(self, features: numpy.ndarray, labels: numpy.ndarray
                 ) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def get_example(self, i: int) -> Tuple[numpy.ndarray, Any]:
        return numpy.array(self.features[i]), self.labels[i]


def _store(mode: str, shape: Tuple[int, ...], path: str) -> numpy.ndarray:
    if mode == 'disk':
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return numpy.lib.format.open_memmap(path, mode='w+',
                                            dtype=numpy.float32, shape=shape)
    return numpy.empty(shape, numpy.float32)


def extract(model: Any, dataset: Any, batchsize: int, device: Any,
            mode: str, path: str) -> FeatureSet:
    """Every example's pooled feature, computed in batches of
    ``batchsize`` in order, without a graph."""
    features = None
    labels: List[Any] = []
    with chainer.no_backprop_mode():
        for start in range(0, len(dataset), batchsize):
            batch = [dataset[i] for i in range(
                start, min(start + batchsize, len(dataset)))]
            x, t = chainer.dataset.concat_examples(batch)
            h = chainer.backend.CpuDevice().send(
                pooled_features(model, device.send(x)))
            if features is None:
                features = _store(mode, (len(dataset),) + h.shape[1:], path)
            features[start:start + len(batch)] = h
            labels.extend(t)
    return FeatureSet(features, numpy.asarray(labels))


class FeatureCache:
    """A run's cached training and held-out features (see :func:`prepare`).

    Attributes:
        train, test: :class:`FeatureSet` datasets.
        predictor: :class:`HeadOnly` on the run's model.
        where: ``'ram'`` or ``'disk'``.
    """

    def __init__(self, train: FeatureSet, test: FeatureSet,
                 predictor: HeadOnly, where: str, directory: str) -> None:
        self.train = train
        self.test = test
        self.predictor = predictor
        self.where = where
        self.directory = directory

    def close(self) -> None:
        """Drops the features (and their files, on disk)."""
        self.train = self.test = None
        if self.where == 'disk':
            shutil.rmtree(self.directory, ignore_errors=True)


def _mode(config: Any, model: Any, example: Any, n: int) -> str:
    mode = getattr(config, 'feature_cache', 'auto')
    if mode != 'auto':
        return mode
    with chainer.no_backprop_mode():
        x, _ = chainer.dataset.concat_examples([example])
        size = pooled_features(model, model.xp.asarray(x)).size
    return 'ram' if size * 4 * n <= RAM_LIMIT_BYTES else 'disk'


def prepare(config: Any, name: str, model: Any, train: Any, test: Any,
            out: str, device: Any, pretrained: bool
            ) -> Optional[FeatureCache]:
    """The run's feature cache, or None (with the reason logged).

    Call after the model is frozen, initialized and on ``device``.
    """
    reason = why_not(config, model, pretrained)
    if reason is not None:
        if pretrained:
            logger.info('%s: feature cache off: %s', name, reason)
        return None
    mode = _mode(config, model, train[0], len(train) + len(test))
    directory = os.path.join(out, CACHE_DIR)
    cache_train = extract(model, train, config.batchsize, device, mode,
                          os.path.join(directory, 'train.npy'))
    # The held-out features in the Evaluator's batches.
    cache_test = extract(model, test, max(config.batchsize, 50), device,
                         mode, os.path.join(directory, 'test.npy'))
    logger.info('%s: feature cache on (%s): the frozen backbone ran once '
                'over %d training and %d held-out images; the head trains '
                'on %s features', name, mode, len(train), len(test),
                'x'.join(map(str, cache_train.features.shape[1:])))
    return FeatureCache(cache_train, cache_test, HeadOnly(model), mode,
                        directory)
