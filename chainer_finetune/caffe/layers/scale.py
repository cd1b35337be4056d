"""Scale and Bias: a learned (or second-bottom) factor or offset broadcast
over the bottom from ``axis``."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import chainer
import chainer.functions as F
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.layers import base
from chainer_finetune.caffe.layers.registry import register
from chainer_finetune.errors import CaffeModelError


@dataclasses.dataclass(eq=False)
class _ScaleOrBias(base.LinkedFunction):
    """y = x * s (+ b) or y = x + b, with s/b broadcast from ``axis``."""

    multiply: bool
    axis: int
    has_bias: bool

    @staticmethod
    def _expand(v, x, axis):
        axis = base.canonical_axis(axis, x.ndim)
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


def _broadcast_blob(ctx: base.BuildContext, index: int, num_axes: int,
                    what: str, like: Optional[numpy.ndarray] = None
                    ) -> numpy.ndarray:
    """A Scale/Bias blob: shaped like ``num_axes`` axes of the bottom."""
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


def _bottom_count(ctx: base.BuildContext, p) -> int:
    """1 or 2 bottoms, with ``p.num_axes`` (Scale's or Bias's) checked."""
    n = ctx.expect_bottoms(1, 2)
    if p.num_axes < -1:
        raise ctx.error('num_axes {} must be >= -1'.format(p.num_axes))
    return n


def _built(params: Dict[str, numpy.ndarray], multiply: bool, axis: int,
           has_bias: bool) -> base.Built:
    """A link holding ``params`` (none when empty) and its function."""
    if not params:
        return base.Built(_ScaleOrBias(None, multiply, axis, False), None)
    link = chainer.Link()
    base.set_params(link, **params)
    return base.Built(_ScaleOrBias('', multiply, axis, has_bias), link)


@register('Scale', invert=base.named_blobs(_scale_blobs),
          param_names=_scale_blobs)
def _build_scale(ctx: base.BuildContext) -> base.Built:
    p = ctx.layer.scale_param
    n = _bottom_count(ctx, p)
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
    return _built(params, True, p.axis, p.bias_term)


@register('Bias', invert=base.named_blobs(_bias_blobs),
          param_names=_bias_blobs)
def _build_bias(ctx: base.BuildContext) -> base.Built:
    p = ctx.layer.bias_param
    if _bottom_count(ctx, p) == 2:
        ctx.expect_blobs([])
        return _built({}, False, p.axis, False)
    ctx.expect_blobs(['bias'])
    return _built({'b': _broadcast_blob(ctx, 0, p.num_axes, 'bias')}, False,
                  p.axis, True)
