"""The images of a job: the split, the preprocessing and the iterators.

The image set is split once per job (:func:`load_split`); each run gets
Chainer datasets of its own (:func:`transformed`), so that every run draws
the same sequence of random crops, and iterators with a seeded order of
their own (:func:`make_iterator`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import chainer
import numpy

from chainer_finetune import data
from chainer_finetune.caffe.preprocessing import CaffePreprocessor
from chainer_finetune.errors import FinetuneError
from chainer_finetune.finetune.config import AUGMENTATIONS
from chainer_finetune.finetune.config import FinetuneConfig
from chainer_finetune.finetune.config import ModelSource
from chainer_finetune.finetune.config import resolve_input_size
from chainer_finetune.finetune.config import resolve_mean
from chainer_finetune.finetune.config import resolve_source


def preprocessors(config: FinetuneConfig, source: ModelSource
                  ) -> Tuple[CaffePreprocessor, CaffePreprocessor]:
    """The training (augmenting) and held-out preprocessors of a job.

    The mean and input size are the configuration's, else the known
    model's declared ones.

    Raises:
        FinetuneError: an unknown ``config.augment``.
    """
    if config.augment not in AUGMENTATIONS:
        raise FinetuneError('augment must be one of {}, not {!r}'.format(
            ', '.join(AUGMENTATIONS), config.augment))
    mean = resolve_mean(config, source)
    size = resolve_input_size(config, source)
    # A known model's input scale (MobileNet-SSD: 1/127.5), after the mean.
    scale = source.declared('input_scale') or 1.0
    if config.augment == 'none':
        train = CaffePreprocessor(mean=mean, resize=size, scale=scale)
    else:
        # Resize to 1/8 more and crop: the scale ratio of Caffe's
        # 256 -> 227 recipe, smaller, since small images shift less.
        big = size + max(1, size // 8)
        train = CaffePreprocessor(mean=mean, resize=big, crop=size,
                                  scale=scale,
                                  mirror=config.augment == 'crop+mirror')
    test = CaffePreprocessor(mean=mean, resize=size, scale=scale)
    return train, test


def load_split(config: FinetuneConfig
               ) -> Tuple[data.ImageSet, data.ImageSet, data.ImageSet]:
    """The image set and its training and held-out parts."""
    images = data.load_images(config.data, data_dir=config.data_dir)
    train_set, test_set = data.split_per_class(
        images, config.train_per_class, config.test_per_class,
        seed=config.seed)
    return images, train_set, test_set


def transformed(config: FinetuneConfig, train_set: data.ImageSet,
                test_set: data.ImageSet,
                source: Optional[ModelSource] = None) -> Tuple[Any, Any]:
    """Chainer datasets of the preprocessed parts, for one run.

    ``source`` None locates the model from ``config`` (for its declared
    mean and input size).
    """
    if source is None:
        source = resolve_source(config)
    prep_train, prep_test = preprocessors(config, source)
    # Worker processes would each repeat one seeded sequence of crops: with
    # loaderjob > 0 every worker draws its own (the run is then not
    # repeatable to the bit).
    train = data.make_dataset(train_set, data.CaffeTransform(
        prep_train, train=True,
        seed=config.seed if config.loaderjob == 0 else None))
    test = data.make_dataset(test_set, data.CaffeTransform(
        prep_test, train=False))
    return train, test


def make_iterator(dataset: Any, batchsize: int, train: bool, loaderjob: int,
                  seed: int) -> chainer.dataset.Iterator:
    """A repeating shuffled (``train``) or a single ordered pass iterator.

    The training order comes from a RandomState of its own, so that every
    run (pretrained, scratch) sees the same batches whatever else uses
    NumPy's global state; ``loaderjob`` > 0 loads in worker processes.
    """
    kwargs: Dict[str, Any] = dict(repeat=False, shuffle=False)
    if train:
        sampler = chainer.iterators.ShuffleOrderSampler(
            numpy.random.RandomState(seed))
        kwargs = dict(repeat=True, order_sampler=sampler)
    if loaderjob > 0:
        return chainer.iterators.MultiprocessIterator(
            dataset, batchsize, n_processes=loaderjob, **kwargs)
    return chainer.iterators.SerialIterator(dataset, batchsize, **kwargs)
