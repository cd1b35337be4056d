"""The images of a job: the split, the preprocessing and the iterators.

The image set is split once per job (:func:`load_split`); each run gets
Chainer datasets of its own (:func:`transformed`), so that every run draws
the same random crops, and iterators with a seeded order of their own
(:func:`make_iterator`, or the training iterator of
:class:`~chainer_finetune.distributed.GlobalBatchSlice`, which crops each
example with a seed of its own: the same in one process and in N).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import chainer
import numpy

from chainer_finetune import data
from chainer_finetune.caffe.preprocessing import CaffePreprocessor
from chainer_finetune.errors import DataError
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
    """The image set and its training and held-out parts.

    Every image file is decoded once first (:func:`data.check_images`, in
    ``config.loaderjob`` processes): a bad file fails the job before
    training, or is left out with a warning when
    ``config.skip_bad_images``.

    Raises:
        DataError: Bad image files (all listed), or fewer than two classes
            with images.
    """
    images = data.load_images(config.data, data_dir=config.data_dir)
    images = data.check_images(images, processes=config.loaderjob,
                               skip_bad=config.skip_bad_images)
    present = numpy.flatnonzero(images.counts())
    if len(present) < 2:
        # One class trains to a meaningless "accuracy 1.000".
        raise DataError('{}: only one class has images ({!r}, {} images); '
                        'a classifier needs at least two'.format(
                            images.name, images.class_names[present[0]],
                            len(images)))
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


class _LoadFailure:
    """An exception raised while loading an example, carried as the example
    out of a loader worker (Chainer's workers lose it otherwise)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _CarryErrors(chainer.dataset.DatasetMixin):
    """``dataset``, whose examples that fail come out as a
    :class:`_LoadFailure`."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def get_example(self, i: int) -> Any:
        try:
            return self.dataset[i]
        except Exception as e:   # re-raised in the main process
            return _LoadFailure(e)


class _RaisingMultiprocessIterator(chainer.iterators.MultiprocessIterator):
    """A MultiprocessIterator that raises, in the main process, the very
    exception that a worker met loading an example (a one-line
    :class:`~chainer_finetune.errors.DataError` stays one)."""

    def __init__(self, dataset: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(_CarryErrors(dataset), *args, **kwargs)

    def __next__(self) -> Any:
        batch = super().__next__()
        for example in batch:
            if isinstance(example, _LoadFailure):
                raise example.error
        return batch

    next = __next__


def make_iterator(dataset: Any, batchsize: int, train: bool, loaderjob: int,
                  seed: int) -> chainer.dataset.Iterator:
    """A repeating shuffled (``train``) or a single ordered pass iterator.

    The training order comes from a RandomState of its own, so that every
    run (pretrained, scratch) sees the same batches whatever else uses
    NumPy's global state; ``loaderjob`` > 0 loads in worker processes,
    whose errors are raised as they are in the main process.
    """
    kwargs: Dict[str, Any] = dict(repeat=False, shuffle=False)
    if train:
        sampler = chainer.iterators.ShuffleOrderSampler(
            numpy.random.RandomState(seed))
        kwargs = dict(repeat=True, order_sampler=sampler)
    if loaderjob > 0:
        return _RaisingMultiprocessIterator(
            dataset, batchsize, n_processes=loaderjob, **kwargs)
    return chainer.iterators.SerialIterator(dataset, batchsize, **kwargs)
