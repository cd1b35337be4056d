"""Normalization: LRN (Caffe's alpha / size), BatchNorm (Caffe's running
sums and scale factor) and the SSD fork's Normalize (L2, learned scale)."""

from __future__ import annotations

import dataclasses
from typing import List

import chainer
from chainer import backend
import chainer.functions as F
import chainer.links as L
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.layers import base
from chainer_finetune.caffe.layers.registry import register


@dataclasses.dataclass(eq=False)
class _LRN(base.LayerFunction):
    across: bool
    size: int
    alpha: float
    beta: float
    k: float

    def __call__(self, net, x):
        if self.across:
            # Caffe divides alpha by local_size; Chainer does not.
            return F.local_response_normalization(
                x, self.size, self.k, self.alpha / self.size, self.beta),
        # WITHIN_CHANNEL: x * (1 + alpha * mean of x^2 over a size x size
        # window, zero padded)^-beta; Caffe ignores k here.
        pad = (self.size - 1) // 2
        mean_sq = F.average_pooling_2d(x * x, self.size, 1, pad)
        return x * (1 + self.alpha * mean_sq) ** -self.beta,


@register('LRN')
def _build_lrn(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.lrn_param
    if p.local_size % 2 == 0 or p.local_size < 1:
        raise ctx.error('local_size {} must be odd'.format(p.local_size))
    across = p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS
    return base.Built(_LRN(across, p.local_size, p.alpha, p.beta, p.k), None)


@dataclasses.dataclass(eq=False)
class _BatchNorm(base.LinkedFunction):
    """Caffe's BatchNorm (no affine part: a Scale layer follows).

    ``use_global_stats: true`` always normalizes with the stored statistics;
    otherwise ``chainer.config.train`` decides, as in Caffe.

    Caffe keeps sums ``s = maf * s + batch_value`` and a factor
    ``f = maf * f + 1`` (``maf``: ``moving_average_fraction``) and
    normalizes with ``s / f``. The link keeps ``s / f`` (``avg_mean``,
    ``avg_var``) and ``f`` (the persistent ``caffe_factor``); setting its
    decay to ``maf * f_old / f_new`` each step updates the average exactly
    as Caffe does. From ``f = 0`` (no statistics yet) the first batch's
    statistics replace the stored ones.
    """

    global_stats: bool
    moving_average_fraction: float = 0.999

    def __call__(self, net, x):
        link = self.link(net)
        if self.global_stats or not chainer.config.train:
            xp = backend.get_array_module(x)
            ones = xp.ones(link.avg_mean.shape, dtype=x.dtype)
            zeros = xp.zeros(link.avg_mean.shape, dtype=x.dtype)
            return F.fixed_batch_normalization(
                x, ones, zeros, link.avg_mean, link.avg_var, link.eps),
        maf = self.moving_average_fraction
        factor = float(getattr(link, 'caffe_factor', 1.0 / (1.0 - maf)
                               if maf < 1 else 1.0))
        new_factor = maf * factor + 1.0
        link.decay = maf * factor / new_factor
        y = link(x)
        if hasattr(link, 'caffe_factor'):
            link.caffe_factor = new_factor
        return y,


def reset_statistics(link: L.BatchNormalization) -> None:
    """Forgets a BatchNormalization link's stored statistics (mean 0,
    variance 1, Caffe's factor 0: the next training batch's replace them)."""
    link.avg_mean[...] = 0
    link.avg_var[...] = 1
    link.N = 0
    if hasattr(link, 'caffe_factor'):
        link.caffe_factor = 0.0


def _invert_batch_norm(layer: caffe_pb2.LayerParameter, link: chainer.Link
                       ) -> List[base.InvertedBlob]:
    # Caffe stores running sums with a scale factor; averages with factor 1
    # are the same statistics.
    factor = numpy.ones(1, numpy.float32)
    return [base.link_blob(link, 'avg_mean'), base.link_blob(link, 'avg_var'),
            base.InvertedBlob(None, factor, 'scale_factor')]


@register('BatchNorm', invert=_invert_batch_norm, stateful=True)
def _build_batch_norm(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.batch_norm_param
    ctx.expect_blobs(['mean', 'variance', 'scale factor'])
    mean = ctx.blob(0, (None,), 'mean')
    var = ctx.blob(1, (mean.shape[0],), 'variance')
    factor = float(ctx.blob(2, (1,), 'scale factor')[0])
    # Caffe stores running sums; the factor turns them into averages and a
    # factor of 0 means "no statistics yet" (zeros, not a division by 0).
    scale = 0.0 if factor == 0 else 1.0 / factor
    link = L.BatchNormalization(mean.shape[0],
                                decay=p.moving_average_fraction, eps=p.eps,
                                use_gamma=False, use_beta=False)
    link.avg_mean = numpy.ascontiguousarray(mean * scale, numpy.float32)
    link.avg_var = numpy.ascontiguousarray(var * scale, numpy.float32)
    link.add_persistent('caffe_factor', factor)
    global_stats = p.HasField('use_global_stats') and p.use_global_stats
    return base.Built(_BatchNorm('', global_stats, p.moving_average_fraction),
                 link)


@dataclasses.dataclass(eq=False)
class _Normalize(base.LinkedFunction):
    """The SSD fork's Normalize: x / sqrt(sum of x^2 + eps) over each
    sample (``across_spatial``) or over the channels at each position,
    times a learned scale (one, or one per channel)."""

    across_spatial: bool
    eps: float

    def __call__(self, net, x):
        axes = tuple(range(1, x.ndim)) if self.across_spatial else (1,)
        norm = F.sqrt(F.sum(x * x, axis=axes, keepdims=True) + self.eps)
        y = x / F.broadcast_to(norm, x.shape)
        scale = self.link(net).W
        shape = (1, scale.shape[0]) + (1,) * (x.ndim - 2)
        return y * F.broadcast_to(F.reshape(scale, shape), x.shape),


@register('Normalize', invert=base.named_blobs(base.weight_blob),
          param_names=base.weight_blob)
def _build_normalize(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.norm_param
    # The fork writes a channel-shared scale as a 0-axis blob.
    link = base.channel_vector_link(ctx, p.channel_shared, 'scale')
    return base.Built(_Normalize('', p.across_spatial, p.eps), link)
