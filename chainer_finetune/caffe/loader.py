"""``load_caffe``: a Caffe model file becomes a Chainer ``CaffeFunction``."""

from __future__ import annotations

import logging
import os
import time
from typing import Optional, Sequence, Union

import numpy

from chainer_finetune.caffe import reader
from chainer_finetune.caffe import upgrade
from chainer_finetune.caffe.function import CaffeNet
from chainer_finetune.caffe.function import select_layers
from chainer_finetune.errors import CaffeModelError

logger = logging.getLogger(__name__)

PathLike = Union[str, 'os.PathLike[str]']


def describe_model(model: Optional[PathLike] = None,
                   prototxt: Optional[PathLike] = None
                   ) -> upgrade.NetDescription:
    """Reads files into a :class:`NetDescription` (structure + weights).

    Args:
        model: A binary caffemodel (V1 or V2).
        prototxt: A text net description; with it, the structure comes from
            here and weights are taken from ``model`` by layer name.
    """
    if model is None:
        raise CaffeModelError('a caffemodel is needed for the weights')
    binary = reader.read_caffemodel(model)
    text = None
    if prototxt is not None:
        text = reader.read_prototxt(prototxt)
    return upgrade.describe(binary, text,
                            None if prototxt is None else os.fspath(prototxt))


def build_net(description: upgrade.NetDescription,
              stop_at: Union[str, Sequence[str], None] = None) -> CaffeNet:
    """Builds the Chainer network of a description (see :func:`load_caffe`)."""
    return CaffeNet(select_layers(description, stop_at))


def load_caffe(model: Optional[PathLike] = None,
               prototxt: Optional[PathLike] = None, *,
               stop_at: Union[str, Sequence[str], None] = None) -> CaffeNet:
    """Loads a Caffe model as a Chainer ``CaffeFunction``.

    Args:
        model: Path of a binary ``.caffemodel`` (V1 ``layers`` or V2
            ``layer`` format).
        prototxt: Optional ``deploy.prototxt`` (text, V1 or V2). When given,
            the network's structure comes from it and each layer's weights
            are taken from ``model`` by layer name; layers the caffemodel
            has beyond it (training heads, data layers) are ignored. Without
            it, the caffemodel's own structure is used.
        stop_at: A layer name, or a list of layer/blob names: only the
            layers needed to compute them are built (so a backbone loads
            even when the head has unsupported layers).

    Returns:
        CaffeNet: A :class:`chainer.links.caffe.CaffeFunction` subclass;
        call it as ``net(inputs={'data': x}, outputs=['prob'])``.

    Raises:
        CaffeModelError: unreadable files, missing or mis-shaped weights.
        UnsupportedLayerError: a layer type (or option) without a faithful
            conversion among the layers needed.
    """
    start = time.perf_counter()
    description = describe_model(model, prototxt)
    net = build_net(description, stop_at)
    logger.info('loaded %s: %d layers, %d parameters in %.2f s',
                description.source, len(net.layers),
                sum(p.size for p in net.params()),
                time.perf_counter() - start)
    return net


def load_mean(path: PathLike) -> numpy.ndarray:
    """Reads a Caffe mean file (``mean.binaryproto``).

    Returns:
        numpy.ndarray: The mean as float32, shaped ``(C, H, W)`` (the
        stored leading batch axis of 1 is dropped).

    Raises:
        CaffeModelError: if the file is not a readable BlobProto.
    """
    blob = reader.read_binaryproto(path)
    array = blob.array
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise CaffeModelError('{}: holds {} mean images, expected 1'.format(
                os.fspath(path), array.shape[0]))
        array = array[0]
    return array
