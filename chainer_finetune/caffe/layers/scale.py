"""Scale and Bias: a learned (or second-bottom) factor or offset broadcast
over the bottom from ``axis``."""

from __future__ import annotations

from typing import List, Optional

import chainer
import chainer.functions as F
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.layers.base import BuildContext
from chainer_finetune.caffe.layers.base import Built
from chainer_finetune.caffe.layers.base import LayerFunction
from chainer_finetune.caffe.layers.base import named_blobs
from chainer_finetune.caffe.layers.base import set_params
from chainer_finetune.caffe.layers.registry import register
from chainer_finetune.errors import CaffeModelError


class _ScaleOrBias(LayerFunction):
    """y = x * s (+ b) or y = x + b, with s/b broadcast from ``axis``."""

    def __init__(self, link_name: Optional[str], multiply: bool, axis: int,
                 has_bias: bool) -> None:
        self.link_name = link_name
        self.multiply = multiply
        self.axis = axis
        self.has_bias = has_bias

    @staticmethod
    def _expand(v, x, axis):
        axis = axis if axis >= 0 else axis + x.ndim
        shape = (1,) * axis + v.shape + (1,) * (x.ndim - axis - v.ndim)
        if x.shape[axis:axis + v.ndim] != v.shape:
            raise CaffeModelError(
                'cannot broadcast shape {} onto {} from axis {}'.format(
                    v.shape, x.shape, axis))
        return F.broadcast_to(F.reshape(v, shape), x.shape)

    def __call__(self, net, x, *second):
        link = self.link(net) if self.link_name is not None else None
        if self.multiply:
            scale = second[0] if second else link.W
            y = x * self._expand(scale, x, self.axis)
            if self.has_bias:
                y = y + self._expand(link.b, x, self.axis)
            return y,
        bias = second[0] if second else link.b
        return x + self._expand(bias, x, self.axis),


def _broadcast_blob(ctx: BuildContext, index: int, num_axes: int, what: str,
                    like: Optional[numpy.ndarray] = None) -> numpy.ndarray:
    """A Scale/Bias blob: shaped like ``num_axes`` axes of the bottom."""
    if index >= len(ctx.blobs):
        raise ctx.error('blob {} ({}) is missing'.format(index, what))
    blob = ctx.blobs[index]
    array = blob.array
    if blob.legacy:   # (1, 1, 1, C) and the like: drop the padding ones
        dims = list(array.shape)
        while len(dims) > 1 and dims[0] == 1:
            dims.pop(0)
        array = array.reshape(dims)
    if num_axes == 0 and array.size == 1:
        # A scalar (num_axes: 0) is a 0-axis blob, which Caffe writes
        # without a shape: it reads back as (1,).
        array = array.reshape(())
    if num_axes != -1 and array.ndim != num_axes:
        raise ctx.error('blob {} ({}) has shape {}, expected {} axes '
                        '(num_axes)'.format(index, what, array.shape,
                                            num_axes))
    if like is not None and array.shape != like.shape:
        raise ctx.error('blob {} ({}) has shape {}, expected {} like the '
                        'scale'.format(index, what, array.shape, like.shape))
    return array


def _scale_blobs(layer: caffe_pb2.LayerParameter) -> List[str]:
    # With a second bottom the scale is an input, not a blob.
    bias = ['b'] if layer.scale_param.bias_term else []
    return bias if len(layer.bottom) > 1 else ['W'] + bias


def _bias_blobs(layer: caffe_pb2.LayerParameter) -> List[str]:
    # With a second bottom the bias is an input, not a blob.
    return [] if len(layer.bottom) > 1 else ['b']


@register('Scale', invert=named_blobs(_scale_blobs), param_names=_scale_blobs)
def _build_scale(ctx: BuildContext) -> Built:
    n = ctx.expect_bottoms(1, 2)
    p = ctx.layer.scale_param
    if p.num_axes < -1:
        raise ctx.error('num_axes {} must be >= -1'.format(p.num_axes))
    ctx.expect_blobs(([] if n == 2 else ['scale']) +
                     (['bias'] if p.bias_term else []))
    params = {}
    if n == 1:
        params['W'] = _broadcast_blob(ctx, 0, p.num_axes, 'scale')
    if p.bias_term:
        # With a second bottom the bias has that bottom's shape (Caffe sets
        # the inner Bias layer's num_axes to bottom[1]'s), checked when
        # called; num_axes applies only to the 1-bottom form.
        params['b'] = _broadcast_blob(ctx, len(params),
                                      p.num_axes if n == 1 else -1, 'bias',
                                      like=params.get('W'))
    if not params:
        return Built(_ScaleOrBias(None, True, p.axis, False), None)
    link = chainer.Link()
    set_params(link, **params)
    return Built(_ScaleOrBias('', True, p.axis, p.bias_term), link)


@register('Bias', invert=named_blobs(_bias_blobs), param_names=_bias_blobs)
def _build_bias(ctx: BuildContext) -> Built:
    n = ctx.expect_bottoms(1, 2)
    p = ctx.layer.bias_param
    if p.num_axes < -1:
        raise ctx.error('num_axes {} must be >= -1'.format(p.num_axes))
    if n == 2:
        ctx.expect_blobs([])
        return Built(_ScaleOrBias(None, False, p.axis, False), None)
    ctx.expect_blobs(['bias'])
    link = chainer.Link()
    set_params(link, b=_broadcast_blob(ctx, 0, p.num_axes, 'bias'))
    return Built(_ScaleOrBias('', False, p.axis, True), link)
