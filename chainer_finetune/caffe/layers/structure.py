"""Inputs and the layers that route blobs: data inputs, Silence, Split,
Eltwise, Concat, Slice, Crop, Flatten, Reshape."""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import List, Sequence, Tuple

import chainer.functions as F
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.layers import base
from chainer_finetune.caffe.layers.registry import register
from chainer_finetune.errors import CaffeModelError


@register('Input', 'Data', 'MemoryData', 'ImageData', 'DummyData',
          'HDF5Data', 'WindowData')
def _build_input(ctx: base.BuildContext) -> base.Built:
    # The tops are supplied by the caller of forward().
    return base.Built(None, None)


class _Silence(base.LayerFunction):
    def __call__(self, net, *xs):
        return ()


@register('Silence')
def _build_silence(ctx: base.BuildContext) -> base.Built:
    return base.Built(_Silence(), None)


@dataclasses.dataclass(eq=False)
class _Split(base.LayerFunction):
    n: int

    def __call__(self, net, x):
        return (x,) * self.n


@register('Split')
def _build_split(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    return base.Built(_Split(len(ctx.layer.top)), None)


@dataclasses.dataclass(eq=False)
class _Eltwise(base.LayerFunction):
    operation: int
    coeffs: List[float]

    def __call__(self, net, *xs):
        op = caffe_pb2.EltwiseParameter
        if self.operation == op.SUM:
            coeffs = self.coeffs or [1.0] * len(xs)
            xs = [x if c == 1 else x * c for c, x in zip(coeffs, xs)]
            combine = operator.add
        else:
            combine = operator.mul if self.operation == op.PROD else F.maximum
        return functools.reduce(combine, xs),


@register('Eltwise')
def _build_eltwise(ctx: base.BuildContext) -> base.Built:
    p = ctx.layer.eltwise_param
    n = len(ctx.layer.bottom)
    if n < 2:
        raise ctx.error('expects at least 2 bottoms, has {}'.format(n))
    if p.coeff and (len(p.coeff) != n or
                    p.operation != caffe_pb2.EltwiseParameter.SUM):
        raise ctx.error('coeff needs one value per bottom and operation SUM')
    return base.Built(_Eltwise(p.operation, list(p.coeff)), None)


@dataclasses.dataclass(eq=False)
class _Concat(base.LayerFunction):
    axis: int

    def __call__(self, net, *xs):
        return F.concat(xs, axis=self.axis),


@register('Concat')
def _build_concat(ctx: base.BuildContext) -> base.Built:
    p = ctx.layer.concat_param
    axis = p.concat_dim if p.HasField('concat_dim') else p.axis
    return base.Built(_Concat(axis), None)


@dataclasses.dataclass(eq=False)
class _Slice(base.LayerFunction):
    axis: int
    points: List[int]
    n_tops: int

    def __call__(self, net, x):
        axis = base.canonical_axis(self.axis, x.ndim)
        if self.points:
            sections = self.points
        else:
            if x.shape[axis] % self.n_tops:
                raise CaffeModelError('cannot slice {} values into {} equal '
                                      'parts'.format(x.shape[axis],
                                                     self.n_tops))
            sections = self.n_tops
        return F.split_axis(x, sections, axis, force_tuple=True)


@register('Slice')
def _build_slice(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.slice_param
    axis = p.slice_dim if p.HasField('slice_dim') else p.axis
    n_tops = len(ctx.layer.top)
    if p.slice_point and len(p.slice_point) != n_tops - 1:
        raise ctx.error('{} slice_point values for {} tops'.format(
            len(p.slice_point), n_tops))
    if list(p.slice_point) != sorted(p.slice_point):
        raise ctx.error('slice_point must increase')
    return base.Built(_Slice(axis, list(p.slice_point), n_tops), None)


def crop_slices(shape: Tuple[int, ...], reference: Tuple[int, ...],
                axis: int, offsets: Sequence[int]) -> Tuple[slice, ...]:
    """The window Caffe's Crop layer cuts from a blob of ``shape``.

    Every axis from ``axis`` on (negative counts from the end) takes the
    size of that axis of ``reference`` (the second bottom's shape),
    starting at its offset: one offset for all those axes, one per axis,
    or none (0).

    Raises:
        CaffeModelError: the axis, the offsets or the sizes do not fit.
    """
    n = len(shape)
    start = base.canonical_axis(axis, n)
    if not 0 <= start < n:
        raise CaffeModelError('crop axis {} does not fit shape {}'.format(
            axis, shape))
    if len(offsets) > 1 and len(offsets) != n - start:
        raise CaffeModelError(
            '{} crop offsets for the {} axes from axis {} of shape {}: give '
            'one offset or one per axis'.format(len(offsets), n - start,
                                                start, shape))
    if len(reference) < n:
        raise CaffeModelError('cannot crop shape {} to the {}-axis shape '
                              '{}'.format(shape, len(reference), reference))
    window = [slice(None)] * start
    for i in range(start, n):
        offset = offsets[i - start] if len(offsets) > 1 else \
            (offsets[0] if offsets else 0)
        if offset + reference[i] > shape[i]:
            raise CaffeModelError(
                'crop of axis {} to size {} at offset {} leaves shape '
                '{}'.format(i, reference[i], offset, shape))
        window.append(slice(offset, offset + reference[i]))
    return tuple(window)


@dataclasses.dataclass(eq=False)
class _Crop(base.LayerFunction):
    """Bottom 0 cut to bottom 1's shape; bottom 1 gives only its shape
    (no gradient reaches it, as in Caffe)."""

    axis: int
    offsets: List[int]

    def __call__(self, net, x, reference):
        return x[crop_slices(x.shape, reference.shape, self.axis,
                             self.offsets)],


@register('Crop')
def _build_crop(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(2)
    p = ctx.layer.crop_param
    return base.Built(_Crop(p.axis, list(p.offset)), None)


@dataclasses.dataclass(eq=False)
class _Flatten(base.LayerFunction):
    axis: int
    end_axis: int

    def __call__(self, net, x):
        start = base.canonical_axis(self.axis, x.ndim)
        end = base.canonical_axis(self.end_axis, x.ndim)
        # Caffe's CanonicalAxisIndex and Blob::count(start, end + 1) checks;
        # end == start - 1 inserts an axis of size 1, as in Caffe.
        if not (0 <= start < x.ndim and 0 <= end < x.ndim and
                start <= end + 1):
            raise CaffeModelError('flatten axis {} / end_axis {} do not fit '
                                  'shape {}'.format(self.axis, self.end_axis,
                                                    x.shape))
        shape = x.shape[:start] + (
            int(numpy.prod(x.shape[start:end + 1])),) + x.shape[end + 1:]
        return F.reshape(x, shape),


@register('Flatten')
def _build_flatten(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.flatten_param
    return base.Built(_Flatten(p.axis, p.end_axis), None)


def caffe_reshape(shape: Tuple[int, ...], dims: Sequence[int], axis: int,
                  num_axes: int) -> Tuple[int, ...]:
    """The output shape of Caffe's Reshape layer.

    ``dims`` replace ``shape[axis:axis + num_axes]`` (to the end for -1);
    0 copies the input's size at that position and one -1 is inferred.
    """
    n = len(shape)
    start = axis if axis >= 0 else axis + n + 1
    end = n if num_axes == -1 else start + num_axes
    if not 0 <= start <= end <= n:
        raise CaffeModelError('reshape axis {} / num_axes {} do not fit '
                              'shape {}'.format(axis, num_axes, shape))
    new = []
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= n:
                raise CaffeModelError('reshape dim 0 at position {} copies '
                                      'beyond shape {}'.format(i, shape))
            new.append(shape[start + i])
        else:
            new.append(d)
    out = list(shape[:start]) + new + list(shape[end:])
    if out.count(-1) > 1:
        raise CaffeModelError('reshape has more than one -1')
    total = int(numpy.prod(shape))
    if -1 in out:
        known = int(numpy.prod([d for d in out if d != -1]))
        if known == 0 or total % known:
            raise CaffeModelError('cannot infer -1 reshaping {} to {}'.format(
                shape, dims))
        out[out.index(-1)] = total // known
    if int(numpy.prod(out)) != total:
        raise CaffeModelError('cannot reshape {} to {}'.format(shape,
                                                               tuple(out)))
    return tuple(out)


@dataclasses.dataclass(eq=False)
class _Reshape(base.LayerFunction):
    dims: List[int]
    axis: int
    num_axes: int

    def __call__(self, net, x):
        return F.reshape(x, caffe_reshape(x.shape, self.dims, self.axis,
                                          self.num_axes)),


@register('Reshape')
def _build_reshape(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.reshape_param
    dims = list(p.shape.dim)
    if any(d < -1 for d in dims) or dims.count(-1) > 1:
        raise ctx.error('shape {} may hold one -1 and no other negative '
                        'value'.format(dims))
    if p.num_axes < -1:
        raise ctx.error('num_axes must be >= -1')
    return base.Built(_Reshape(dims, p.axis, p.num_axes), None)
