"""Pooling: Caffe's output sizes (rounded up, dropping a last window that
starts in the padding) and AVE's divisor, on Chainer's pooling functions."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from chainer import backend
import chainer.functions as F
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.layers import base
from chainer_finetune.caffe.layers.registry import register
from chainer_finetune.errors import CaffeModelError

Pair = Optional[Tuple[int, int]]


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int,
                      ceil: bool = True, padded: Optional[bool] = None
                      ) -> int:
    """Output length of Caffe's pooling along one axis.

    Caffe rounds up (``round_mode: CEIL``, the default) or down, then drops
    a last window that would start inside the bottom/right padding.

    Args:
        padded: Whether the layer has any padding (``pad_h || pad_w``):
            Caffe applies the drop rule to both axes then, even to one
            without padding (where a stride larger than the kernel can
            leave a last window past the input). Default: ``pad != 0``.
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    padded = pad != 0 if padded is None else padded
    if padded and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _ave_divisor(xp, size: Tuple[int, int], out: Tuple[int, int],
                 kernel: Tuple[int, int], stride: Tuple[int, int],
                 pad: Tuple[int, int]):
    """Caffe's AVE pooling divisor per output position.

    Each window is clipped to the padded input (``size + pad``), not to the
    input, so padding inside the window counts and the area past it does
    not.
    """
    def window(n, o, k, s, p):
        start = numpy.arange(o) * s - p
        return numpy.minimum(start + k, n + p) - start
    dh, dw = (window(*axis) for axis in zip(size, out, kernel, stride, pad))
    return xp.asarray(numpy.outer(dh, dw).astype(numpy.float32))


@dataclasses.dataclass(eq=False)
class _Pooling(base.LayerFunction):
    """MAX or AVE pooling; kernel, stride and pad are None when global."""

    method: int
    kernel: Pair
    stride: Pair
    pad: Pair
    global_pooling: bool
    ceil: bool

    @property
    def is_max(self) -> bool:
        return self.method == caffe_pb2.PoolingParameter.MAX

    def geometry(self, H: int, W: int) -> Tuple[Tuple[int, int], ...]:
        """``(kernel, stride, pad, out)`` as (h, w) pairs for an H x W
        input (``out``: Caffe's output size, possibly below 1)."""
        if self.global_pooling:
            kernel, stride, pad = (H, W), (1, 1), (0, 0)
        else:
            kernel, stride, pad = self.kernel, self.stride, self.pad
        out = tuple(caffe_pooled_size(n, k, s, p, self.ceil, any(pad))
                    for n, k, s, p in zip((H, W), kernel, stride, pad))
        return kernel, stride, pad, out

    def __call__(self, net, x):
        H, W = x.shape[2:]
        kernel, stride, pad, out = self.geometry(H, W)
        if min(out) < 1:
            raise CaffeModelError(
                'pooling kernel {} with pad {} does not fit the input size '
                '{}'.format(kernel, pad, (H, W)))
        if self.is_max:
            # cover_all gives the rounded-up count; windows start at
            # i * stride - pad as in Caffe, and -inf padding makes the max
            # run over the part of each window inside the input.
            y = F.max_pooling_2d(x, kernel, stride, pad, cover_all=True)
            return y[:, :, :out[0], :out[1]],
        # AVE: sum over each window (zero padding, extended at the end so
        # every output window exists), then Caffe's divisor.
        extra = tuple(max(0, (o - 1) * s + k - (n + 2 * p))
                      for o, s, k, n, p in zip(out, stride, kernel, (H, W),
                                               pad))
        padded = F.pad(x, ((0, 0), (0, 0), (pad[0], pad[0] + extra[0]),
                           (pad[1], pad[1] + extra[1])), 'constant')
        y = F.average_pooling_2d(padded, kernel, stride, 0)
        y = y[:, :, :out[0], :out[1]]
        xp = backend.get_array_module(x)
        divisor = _ave_divisor(xp, (H, W), out, kernel, stride, pad)
        scale = (kernel[0] * kernel[1]) / divisor
        return y * F.broadcast_to(scale.astype(x.dtype)[None, None],
                                  y.shape),


def _pool_pair(ctx: base.BuildContext, square: str) -> Tuple[int, int]:
    """(h, w) of a pooling kernel/stride/pad; Caffe's PoolingLayer checks."""
    p = ctx.layer.pooling_param
    h_field, w_field = (square.split('_')[0] + axis for axis in ('_h', '_w'))
    has_h, has_w = p.HasField(h_field), p.HasField(w_field)
    if has_h or has_w:
        if not (has_h and has_w) or p.HasField(square):
            raise ctx.error('give {} or both {} and {}'.format(
                square, h_field, w_field))
        return getattr(p, h_field), getattr(p, w_field)
    if square == 'kernel_size' and not p.HasField(square):
        raise ctx.error('kernel_size is not set')
    return (getattr(p, square),) * 2


@register('Pooling')
def _build_pooling(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.pooling_param
    if p.pool == caffe_pb2.PoolingParameter.STOCHASTIC:
        raise ctx.unsupported('STOCHASTIC pooling')
    if len(ctx.layer.top) != 1:
        raise ctx.unsupported('pooling with a mask top')
    ctx.expect_blobs([])
    if p.global_pooling:
        if p.HasField('kernel_size') or p.HasField('kernel_h'):
            raise ctx.error('global_pooling with a kernel size')
        kernel = stride = pad = None
    else:
        kernel = _pool_pair(ctx, 'kernel_size')
        stride = _pool_pair(ctx, 'stride')
        pad = _pool_pair(ctx, 'pad')
        if min(kernel) < 1 or min(stride) < 1:
            raise ctx.error('kernel {} and stride {} must be positive'.format(
                kernel, stride))
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise ctx.error('pad {} must be smaller than kernel {}'.format(
                pad, kernel))
    ceil = p.round_mode == caffe_pb2.PoolingParameter.CEIL
    return base.Built(_Pooling(p.pool, kernel, stride, pad, p.global_pooling,
                          ceil), None)
