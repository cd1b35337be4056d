"""A 2-D convolution for inference, without a graph: the fast path's kernel.

On the CPU, Chainer 7.8.1 runs every convolution as ``numpy.pad``, im2col,
``tensordot`` and ``rollaxis``, leaving a non-contiguous output that the
next layer copies again; a 1x1 convolution with stride 1 pays for an
im2col it does not need. Here a 1x1 convolution is a matrix product per
sample on the input as it lies, a larger one an im2col into a preallocated
buffer then the same product, and the output is contiguous (N, C, H, W).
On CuPy, Chainer's own convolution (cuDNN where present) does the work.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import chainer
from chainer import backend
import chainer.functions as F
import numpy


class Geometry(tuple):
    """``(stride, pad, dilate, groups)``: stride, pad and dilate as (h, w)."""

    def __new__(cls, stride: Tuple[int, int], pad: Tuple[int, int],
                dilate: Tuple[int, int], groups: int) -> 'Geometry':
        return super().__new__(cls, (tuple(stride), tuple(pad),
                                     tuple(dilate), int(groups)))

    @classmethod
    def of(cls, link: chainer.Link) -> 'Geometry':
        """The geometry of a :class:`chainer.links.Convolution2D`."""
        def pair(v):
            return (v, v) if isinstance(v, int) else tuple(v)
        return cls(pair(link.stride), pair(link.pad),
                   pair(getattr(link, 'dilate', 1)),
                   getattr(link, 'groups', 1))


def _im2col(x: numpy.ndarray, kh: int, kw: int, geometry: Geometry
            ) -> Tuple[numpy.ndarray, int, int]:
    """(N, C*kh*kw, oh*ow) columns of ``x``, as Caffe's im2col orders them
    (channel, then kernel row, then kernel column)."""
    (sy, sx), (ph, pw), (dy, dx), _ = geometry
    n, c, h, w = x.shape
    oh = (h + 2 * ph - (kh - 1) * dy - 1) // sy + 1
    ow = (w + 2 * pw - (kw - 1) * dx - 1) // sx + 1
    if ph or pw:
        padded = numpy.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = x
    else:
        padded = x
    col = numpy.empty((n, c, kh, kw, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            col[:, :, i, j] = padded[:, :, i * dy:i * dy + sy * (oh - 1) + 1:sy,
                                     j * dx:j * dx + sx * (ow - 1) + 1:sx]
    return col.reshape(n, c * kh * kw, oh * ow), oh, ow


def _columns(x: numpy.ndarray, kh: int, kw: int, geometry: Geometry
             ) -> Tuple[numpy.ndarray, int, int]:
    (sy, sx), (ph, pw), _, _ = geometry
    if kh == kw == 1 and ph == pw == 0:
        # A 1x1 convolution reads the input as it lies (a strided one its
        # subsampled pixels): no im2col.
        if sy > 1 or sx > 1:
            x = x[:, :, ::sy, ::sx]
        n, c, oh, ow = x.shape
        return numpy.ascontiguousarray(x).reshape(n, c, oh * ow), oh, ow
    return _im2col(x, kh, kw, geometry)


def _convolution_cpu(x: numpy.ndarray, W: numpy.ndarray,
                     b: Optional[numpy.ndarray], geometry: Geometry
                     ) -> numpy.ndarray:
    out, _, kh, kw = W.shape
    groups = geometry[3]
    col, oh, ow = _columns(x, kh, kw, geometry)
    n = x.shape[0]
    y = numpy.empty((n, out, oh * ow), numpy.float32)
    g_out, g_in = out // groups, col.shape[1] // groups
    W2 = W.reshape(groups, g_out, -1)
    # One BLAS product per sample and group: numpy's batched matmul with a
    # broadcast left operand is not always handed to BLAS.
    for i in range(n):
        for g in range(groups):
            numpy.matmul(W2[g], col[i, g * g_in:(g + 1) * g_in],
                         out=y[i, g * g_out:(g + 1) * g_out])
    if b is not None:
        y += b[:, None]
    return y.reshape(n, out, oh, ow)


def convolution(x: Any, W: Any, b: Optional[Any], geometry: Geometry
                ) -> Any:
    """``chainer.functions.convolution_2d(x, W, b, ...)`` without a graph,
    as an array (contiguous on the CPU).

    Args:
        x: (N, C, H, W) float32 NumPy or CuPy array.
        W: (out, C / groups, kh, kw) weights, on ``x``'s device.
        b: (out,) bias or None.
        geometry: Stride, pad, dilation and groups.
    """
    if backend.get_array_module(x) is numpy and x.dtype == numpy.float32:
        return _convolution_cpu(x, W, b, geometry)
    stride, pad, dilate, groups = geometry
    with chainer.no_backprop_mode():
        return F.convolution_2d(x, W, b, stride, pad, dilate=dilate,
                                groups=groups).array


def affine(x: Any, scale: Any, shift: Any) -> Any:
    """``x * scale + shift`` per channel (axis 1), as a new array."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = x * scale.reshape(shape)
    y += shift.reshape(shape)
    return y


def relu_(y: Any, slope: float = 0.0) -> Any:
    """ReLU (leaky with ``slope``) in place on ``y``."""
    xp = backend.get_array_module(y)
    if slope:
        xp.copyto(y, y * slope, where=y < 0)
    else:
        xp.maximum(y, 0, out=y)
    return y
