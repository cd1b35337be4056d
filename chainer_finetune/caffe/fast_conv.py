"""A 2-D convolution for inference, without a graph: the fast path's kernel.

On the CPU, Chainer 7.8.1 runs every convolution as ``numpy.pad``, im2col,
``tensordot`` and ``rollaxis``, leaving a non-contiguous output that the
next layer copies again; a 1x1 convolution with stride 1 pays for an
im2col it does not need. Here a 1x1 convolution is a matrix product per
on the input as it lies, a larger one an im2col of one sample then the
same product. Activations are kept channel-major, (C, N, H, W) in memory,
and handed on as (N, C, H, W) views, so that a result is the next layer's
input without a copy; elementwise NumPy functions keep that layout.
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


def channel_major(x: numpy.ndarray) -> numpy.ndarray:
    """``x`` (N, C, H, W) as a C-contiguous (C, N, H, W) array: free when
    ``x`` is a view of one (as this module's outputs are)."""
    return numpy.ascontiguousarray(x.transpose(1, 0, 2, 3))


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (k - 1) * d - 1) // s + 1


def _padded(xc: numpy.ndarray, pad: Tuple[int, int], fill: float,
            least: Tuple[int, int] = (0, 0)) -> numpy.ndarray:
    """The channel-major ``xc`` (C, N, H, W) with ``pad`` rows and columns
    of ``fill`` on each side, extended at the bottom and right to at least
    ``least`` (height, width); ``xc`` itself where nothing is added."""
    (ph, pw), (c, n, h, w) = pad, xc.shape
    height, width = max(h + 2 * ph, least[0]), max(w + 2 * pw, least[1])
    if (height, width) == (h, w):
        return xc
    padded = numpy.full((c, n, height, width), fill, xc.dtype)
    padded[:, :, ph:ph + h, pw:pw + w] = xc
    return padded


def _window(padded: numpy.ndarray, i: int, j: int, stride: Tuple[int, int],
            dilate: Tuple[int, int], oh: int, ow: int) -> numpy.ndarray:
    """The (C, n, oh, ow) view of kernel position (i, j) over ``padded``:
    the input element each output position reads there."""
    (sy, sx), (dy, dx) = stride, dilate
    return padded[:, :, i * dy:i * dy + sy * (oh - 1) + 1:sy,
                  j * dx:j * dx + sx * (ow - 1) + 1:sx]


def _im2col(padded: numpy.ndarray, kh: int, kw: int, geometry: Geometry,
            oh: int, ow: int) -> numpy.ndarray:
    """(C*kh*kw, n*oh*ow) columns of the padded channel-major ``padded``
    (C, n, H, W), rows in Caffe's order (channel, kernel row, column)."""
    stride, _, dilate, _ = geometry
    c, n = padded.shape[:2]
    col = numpy.empty((c, kh, kw, n, oh, ow), padded.dtype)
    for i in range(kh):
        for j in range(kw):
            col[:, i, j] = _window(padded, i, j, stride, dilate, oh, ow)
    return col.reshape(c * kh * kw, n * oh * ow)


def _product(W: numpy.ndarray, col: numpy.ndarray, out: numpy.ndarray,
             groups: int) -> None:
    """``out = W x col`` per group (rows of W and out, rows of col)."""
    g_out, g_in = W.shape[0] // groups, col.shape[0] // groups
    W2 = W.reshape(groups, g_out, -1)
    for g in range(groups):
        numpy.matmul(W2[g], col[g * g_in:(g + 1) * g_in],
                     out=out[g * g_out:(g + 1) * g_out])


def _convolution_cpu(x: numpy.ndarray, W: numpy.ndarray,
                     b: Optional[numpy.ndarray], geometry: Geometry
                     ) -> numpy.ndarray:
    # Channel-major (C, N, H, W) throughout: a convolution is a BLAS
    # product (out, C*kh*kw) x (C*kh*kw, oh*ow) per sample, written into
    # the next layer's channel-major input. One product per sample keeps
    # each sample's result the same to the bit whatever batch it comes in
    # (a product over the whole batch does not: BLAS kernels differ at the
    # edges), which the feature cache's equality with an uncached run
    # rests on; and one sample's columns stay in cache.
    out, _, kh, kw = W.shape
    (sy, sx), (ph, pw), (dy, dx), groups = geometry
    n, c, h, w = x.shape
    oh, ow = (_out_size(h, kh, sy, ph, dy), _out_size(w, kw, sx, pw, dx))
    xc = channel_major(x)
    y = numpy.empty((out, n * oh * ow), numpy.float32)
    if kh == kw == 1 and ph == pw == 0:
        # A 1x1 convolution reads the input as it lies (a strided one its
        # subsampled pixels): no im2col, one product.
        if sy > 1 or sx > 1:
            xc = numpy.ascontiguousarray(xc[:, :, ::sy, ::sx])
        col = xc.reshape(c, n * oh * ow)
        m = oh * ow
        for i in range(n):
            _product(W, col[:, i * m:(i + 1) * m], y[:, i * m:(i + 1) * m],
                     groups)
    else:
        padded = _padded(xc, (ph, pw), 0.0)
        for i in range(n):
            col = _im2col(padded[:, i:i + 1], kh, kw, geometry, oh, ow)
            _product(W, col, y[:, i * oh * ow:(i + 1) * oh * ow], groups)
    if b is not None:
        y += b[:, None]
    # An (N, C, H, W) view of the channel-major result.
    return y.reshape(out, n, oh, ow).transpose(1, 0, 2, 3)


def convolution(x: Any, W: Any, b: Optional[Any], geometry: Geometry
                ) -> Any:
    """``chainer.functions.convolution_2d(x, W, b, ...)`` without a graph,
    as an array (on the CPU an (N, C, H, W) view of a channel-major one).

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


Pair = Tuple[int, int]


def pooling_fits(is_max: bool, shape: Tuple[int, ...], kernel: Pair,
                 stride: Pair, pad: Pair, out: Pair) -> bool:
    """Whether :func:`pooling` computes Caffe's result for an (N, C, H, W)
    input of ``shape``: MAX where every window overlaps the input (Caffe
    gives -FLT_MAX for one that does not), AVE without padding and with
    every window inside the input (Caffe's divisor is then the kernel's
    area everywhere)."""
    size = shape[2:]
    if min(out) < 1:
        return False
    if is_max:
        return all((o - 1) * s - p < n
                   for o, s, p, n in zip(out, stride, pad, size))
    return not any(pad) and all((o - 1) * s + k <= n for o, s, k, n in
                                zip(out, stride, kernel, size))


def pooling(x: numpy.ndarray, is_max: bool, kernel: Pair, stride: Pair,
            pad: Pair, out: Pair) -> numpy.ndarray:
    """Caffe's MAX or AVE pooling of a float32 (N, C, H, W) NumPy array
    without a graph, where :func:`pooling_fits`; an (N, C, oh, ow) view of
    a channel-major result.

    Chainer's CPU pooling builds an im2col copy of every window (and an
    argmax for MAX); here each output is the maximum or sum of kh x kw
    strided views, and a global pooling one reduction.
    """
    (kh, kw), (sy, sx), (ph, pw), (oh, ow) = kernel, stride, pad, out
    xc = channel_major(x)
    c, n, h, w = xc.shape
    if (kh, kw) == (h, w) and (oh, ow) == (1, 1) and not (ph or pw):
        flat = xc.reshape(c, n, h * w)
        y = flat.max(axis=2) if is_max else flat.mean(axis=2,
                                                      dtype=numpy.float32)
        return y.reshape(c, n, 1, 1).transpose(1, 0, 2, 3)
    # -inf padding (MAX only: AVE fits without), also past the bottom and
    # right where the last window overhangs: a window's maximum is that of
    # its part inside the input, as Caffe clips it.
    xc = _padded(xc, (ph, pw), -numpy.inf,
                 ((oh - 1) * sy + kh, (ow - 1) * sx + kw))
    y = None
    for i in range(kh):
        for j in range(kw):
            view = _window(xc, i, j, (sy, sx), (1, 1), oh, ow)
            if y is None:
                y = numpy.array(view, order='C')
            elif is_max:
                numpy.maximum(y, view, out=y)
            else:
                y += view
    if not is_max:
        y *= numpy.float32(1.0 / (kh * kw))
    return y.transpose(1, 0, 2, 3)


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
