"""The classifier's outputs: Softmax, and the training heads SoftmaxWithLoss
and Accuracy (computed when their bottoms, e.g. ``label``, are given)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import chainer
from chainer import backend
import chainer.functions as F
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.layers import base
from chainer_finetune.caffe.layers.registry import register


@dataclasses.dataclass(eq=False)
class _Softmax(base.LayerFunction):
    axis: int

    def __call__(self, net, x):
        axis = base.canonical_axis(self.axis, x.ndim)
        return F.softmax(x, axis=axis),


@register('Softmax')
def _build_softmax(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    return base.Built(_Softmax(ctx.layer.softmax_param.axis), None)


def _move_axis_last(x, axis):
    axis = base.canonical_axis(axis, x.ndim)
    if axis == x.ndim - 1:
        return x
    order = [i for i in range(x.ndim) if i != axis] + [axis]
    return F.transpose(x, order)


@dataclasses.dataclass(eq=False)
class _SoftmaxWithLoss(base.LayerFunction):
    """The loss blob as Caffe shows it: normalized, not multiplied by
    ``loss_weight`` (kept as an attribute; Caffe applies it only to the
    training objective)."""

    axis: int
    ignore_label: Optional[int]
    normalization: int
    loss_weight: float

    def __call__(self, net, x, t):
        scores = _move_axis_last(x, self.axis)
        scores = F.reshape(scores, (-1, scores.shape[-1]))
        labels = chainer.as_array(t).reshape(-1).astype(numpy.int32)
        ignore = -1 if self.ignore_label is None else self.ignore_label
        losses = F.softmax_cross_entropy(scores, labels, reduce='no',
                                         ignore_label=ignore)
        total = F.sum(losses)
        mode = caffe_pb2.LossParameter
        valid = self.normalization == mode.VALID
        if valid and self.ignore_label is not None:
            denom = int((labels != ignore).sum())
        elif valid or self.normalization == mode.FULL:
            denom = labels.size
        elif self.normalization == mode.BATCH_SIZE:
            # Caffe's outer_num_: the size of the axes before the softmax
            # axis (not shape[0] when that axis is not 1).
            axis = base.canonical_axis(self.axis, x.ndim)
            denom = int(numpy.prod(x.shape[:axis]))
        else:
            denom = 1
        return total * (1.0 / max(denom, 1)),


@register('SoftmaxWithLoss')
def _build_softmax_with_loss(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(2)
    lp = ctx.layer.loss_param
    normalization = lp.normalization
    if not lp.HasField('normalization') and lp.HasField('normalize'):
        normalization = (caffe_pb2.LossParameter.VALID if lp.normalize
                         else caffe_pb2.LossParameter.BATCH_SIZE)
    ignore = lp.ignore_label if lp.HasField('ignore_label') else None
    weight = ctx.layer.loss_weight[0] if ctx.layer.loss_weight else 1.0
    return base.Built(_SoftmaxWithLoss(ctx.layer.softmax_param.axis, ignore,
                                  normalization, weight), None)


@dataclasses.dataclass(eq=False)
class _Accuracy(base.LayerFunction):
    top_k: int
    axis: int
    ignore_label: Optional[int]

    def __call__(self, net, x, t):
        xp = backend.get_array_module(x)
        scores = _move_axis_last(x, self.axis).array
        scores = scores.reshape(-1, scores.shape[-1])
        labels = chainer.as_array(t).reshape(-1).astype(numpy.int64)
        keep = xp.ones(labels.shape, dtype=bool) \
            if self.ignore_label is None else labels != self.ignore_label
        safe = xp.where(keep, labels, 0)
        true_score = scores[xp.arange(labels.size), safe]
        # Caffe counts a hit when fewer than top_k other scores are >= the
        # label's: ties count against the label (>= minus the label itself).
        better = (scores >= true_score[:, None]).sum(axis=1) - 1
        hits = (better < self.top_k) & keep
        count = max(int(keep.sum()), 1)
        return chainer.Variable(xp.asarray(hits.sum() / count,
                                           dtype=x.dtype)),


@register('Accuracy')
def _build_accuracy(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(2)
    p = ctx.layer.accuracy_param
    if len(ctx.layer.top) != 1:
        raise ctx.unsupported('per-class accuracy top')
    ignore = p.ignore_label if p.HasField('ignore_label') else None
    return base.Built(_Accuracy(p.top_k, p.axis, ignore), None)
