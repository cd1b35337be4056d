"""The ``finetune`` job's classifier as a deploy net: its Caffe backbone as
the net's own layers, then its new head as Caffe layers.

:class:`~chainer_finetune.finetune.CaffeClassifier` computes either the
backbone's (replaced) classifier output, flattened, or, with a new head,
``Linear(BatchNormalization(mean over H, W of the feature blob))``. The
head is written as::

    head_pool        Pooling AVE, global       (only for a 4-D feature)
    head_norm        BatchNorm, stored mean and variance (factor 1), eps
    head_norm/scale  Scale with bias: gamma, beta
    head             InnerProduct: W, b

(``head_norm`` is ``BatchNormalization(axis=0)`` on ``(N, C)``: one mean and
variance per channel, Caffe's BatchNorm on axis 1.) The scores blob is
``head``, or ``scores`` (a Flatten) for a backbone whose classifier output
has more than two axes.
"""

from __future__ import annotations

from typing import Any, List

import chainer
import numpy

from chainer_finetune.caffe.layers import float32_array
from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.errors import ExportError
from chainer_finetune.export.caffe_net import InputShapes
from chainer_finetune.export.caffe_net import blob_shapes
from chainer_finetune.export.caffe_net import caffe_net_writer
from chainer_finetune.export.caffe_net import input_shapes
from chainer_finetune.finetune.model import CaffeClassifier

#: The blob holding the class scores when the backbone's are not 2-D.
SCORES = 'scores'


def _array(link: chainer.Link, name: str, default: Any, size: int
           ) -> numpy.ndarray:
    value = getattr(link, name, None)
    if value is None:   # use_gamma=False / use_beta=False
        return numpy.full(size, default, numpy.float32)
    return float32_array(value)


def _head_norm_blobs(norm: chainer.Link) -> List[List[numpy.ndarray]]:
    """[BatchNorm blobs, Scale blobs] of a BatchNormalization link."""
    mean = float32_array(norm.avg_mean)
    return [[mean, float32_array(norm.avg_var),
             numpy.ones(1, numpy.float32)],
            [_array(norm, 'gamma', 1.0, mean.size),
             _array(norm, 'beta', 0.0, mean.size)]]


def _add_head(writer: NetWriter, model: CaffeClassifier, feature: str,
              ndim: int) -> None:
    if model.head.W.array is None:
        raise ExportError('cannot export the classifier: its head has no '
                          'weights yet (run it once, or load its trained '
                          'weights)')
    if ndim > 4:
        raise ExportError('cannot export the classifier: its feature blob '
                          '{!r} has {} axes; Caffe pools 4-D blobs'.format(
                              feature, ndim))
    if ndim > 2:
        # F.mean over H and W is global average pooling: (N, C, 1, 1).
        writer.layer('head_pool', 'Pooling', feature, 'head_pool',
                     params={'pooling_param': {'pool': 'AVE',
                                               'global_pooling': True}})
        feature = 'head_pool'
    norm_blobs, scale_blobs = _head_norm_blobs(model.head_norm)
    writer.layer('head_norm', 'BatchNorm', feature, 'head_norm',
                 params={'batch_norm_param': {
                     'use_global_stats': True,
                     'eps': float(model.head_norm.eps)}},
                 blobs=norm_blobs)
    writer.layer('head_norm/scale', 'Scale', 'head_norm', 'head_norm',
                 params={'scale_param': {'bias_term': True}},
                 blobs=scale_blobs)
    head = model.head
    blobs = [float32_array(head.W)]
    if head.b is not None:
        blobs.append(float32_array(head.b))
    writer.layer('head', 'InnerProduct', 'head_norm', 'head',
                 params={'inner_product_param': {
                     'num_output': int(head.W.shape[0]),
                     'bias_term': head.b is not None}},
                 blobs=blobs)


def classifier_writer(model: CaffeClassifier,
                      input_shape: InputShapes = None) -> NetWriter:
    """The deploy net of a fine-tuned classifier (backbone and head).

    Args:
        model: The classifier of a ``finetune`` job (built by
            :func:`~chainer_finetune.finetune.build_classifier`, with its
            trained weights).
        input_shape: The image input's shape, where the backbone declares
            none (the batch is written as 1).

    Returns:
        NetWriter: The net; its input blob is the backbone's, its scores
        blob ``head`` (or ``scores``, or the replaced layer's top).

    Raises:
        ExportError: a head without weights, a feature blob of more than
            four axes, or an input shape the backbone cannot get.
    """
    backbone = model.backbone
    if input_shape is not None and not isinstance(input_shape, dict):
        input_shape = {model.input_name: tuple(input_shape)}
    shapes = {name: shape for name, shape in
              input_shapes(backbone, input_shape).items()
              if name == model.input_name}
    if not shapes:
        raise ExportError('cannot export the classifier: the shape of its '
                          'input {!r} is unknown; give input_shape'.format(
                              model.input_name))
    writer = caffe_net_writer(backbone, shapes, outputs=[model.output])
    # Whether the feature (or scores) blob is 4-D decides the layers that
    # follow; one forward pass of a batch of 1 tells.
    ndim = len(blob_shapes(backbone, shapes, [model.output])[model.output])
    if model.has_head:
        _add_head(writer, model, model.output, ndim)
    elif ndim > 2:
        writer.layer(SCORES, 'Flatten', model.output, SCORES)
    return writer
