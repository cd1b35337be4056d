"""The Caffe model a job fine-tunes, located once: :class:`ModelSource`.

A model named by :data:`chainer_finetune.hub.MODELS` is fetched (or
found in the cache, its digests checked) by :func:`resolve_source`, once
per job; building the networks, setting up the optimizer and writing the
report then read the resulting :class:`ModelSource`. A known model also
declares its preprocessing and head (mean, input size, input blob,
classifier layer); for a model of the user's own these are guessed as
before: the ImageNet mean, :data:`~.config.DEFAULT_INPUT_SIZE`, the net's
one input and its last InnerProduct layer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Optional

from chainer_finetune import hub
from chainer_finetune.caffe.loader import load_mean
from chainer_finetune.finetune.config import DEFAULT_INPUT_SIZE
from chainer_finetune.finetune.config import FinetuneConfig
from chainer_finetune.finetune.config import IMAGENET_MEAN_BGR

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a job's Caffe model is and what it declares.

    Attributes:
        name: The model as the configuration names it (a path or a known
            model's name), for the report.
        caffemodel: Path of the ``.caffemodel``.
        prototxt: Path of the deploy prototxt, or None.
        known: The declaration of a known model
            (:class:`~chainer_finetune.hub.KnownModel`), or None for a
            model of the user's own.
    """

    name: str
    caffemodel: str
    prototxt: Optional[str]
    known: Optional[hub.KnownModel] = None

    def declared(self, field: str) -> Any:
        """A known model's declaration (a
        :class:`~chainer_finetune.hub.KnownModel` field such as
        ``'mean_bgr'``, ``'input_size'``, ``'input_blob'``,
        ``'feature_blob'``, ``'classifier_layer'``); None for a model of
        the user's own or a fact it does not declare."""
        return getattr(self.known, field) if self.known else None


def resolve_source(config: FinetuneConfig) -> ModelSource:
    """Locates the configuration's model, fetching a known one by name.

    ``config.caffemodel`` names a known model when it is a key of
    :data:`~chainer_finetune.hub.MODELS` and no such file exists; its
    files are then fetched (once, into the cache) with
    :func:`chainer_finetune.hub.fetch_model`, and ``config.prototxt``,
    if given, replaces the fetched prototxt.

    Raises:
        ModelFetchError: a known model that cannot be fetched.
    """
    name = config.caffemodel
    if name in hub.MODELS and not os.path.exists(name):
        files = hub.fetch_model(name)
        source = ModelSource(name, files.caffemodel,
                             config.prototxt or files.prototxt,
                             hub.MODELS[name])
    else:
        source = ModelSource(name, name, config.prototxt)
    if config.mean is None and source.declared('mean_bgr') is None:
        logger.info('%s declares no mean and no --mean was given: '
                    'subtracting the ImageNet mean %s (BGR)', name,
                    IMAGENET_MEAN_BGR)
    return source


def resolve_mean(config: FinetuneConfig, source: ModelSource) -> Any:
    """The mean subtracted from the input: the configuration's mean file,
    else the known model's declared mean, else :data:`IMAGENET_MEAN_BGR`."""
    if config.mean:
        return load_mean(config.mean)
    declared = source.declared('mean_bgr')
    return declared if declared is not None else IMAGENET_MEAN_BGR


def resolve_input_size(config: FinetuneConfig, source: ModelSource) -> int:
    """The input side: the configuration's, else the known model's
    declared size, else :data:`DEFAULT_INPUT_SIZE`."""
    if config.input_size is not None:
        return config.input_size
    declared = source.declared('input_size')
    return declared if declared is not None else DEFAULT_INPUT_SIZE
