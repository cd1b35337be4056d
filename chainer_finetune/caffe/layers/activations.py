"""Activations and other maps of one blob: the elementwise functions (one
table), Power, PReLU and Dropout."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple

import chainer
from chainer import backend
import chainer.functions as F

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.layers import base
from chainer_finetune.caffe.layers.registry import register


@dataclasses.dataclass(eq=False)
class _Elementwise(base.LayerFunction):
    """``chainer.functions.<name>`` of one bottom, with ``kwargs``."""

    name: str
    kwargs: Dict[str, Any]

    def __call__(self, net, x):
        return getattr(F, self.name)(x, **self.kwargs),


def _relu(layer: caffe_pb2.LayerParameter) -> Tuple[str, Dict[str, Any]]:
    slope = layer.relu_param.negative_slope
    return ('leaky_relu', {'slope': slope}) if slope else ('relu', {})


#: Caffe type -> the ``chainer.functions`` name and keyword arguments of a
#: layer of that type.
_ELEMENTWISE: Dict[str, Callable[[caffe_pb2.LayerParameter],
                                 Tuple[str, Dict[str, Any]]]] = {
    'ReLU': _relu,
    'Sigmoid': lambda layer: ('sigmoid', {}),
    'TanH': lambda layer: ('tanh', {}),
    'AbsVal': lambda layer: ('absolute', {}),
    # Caffe: log(1 + exp(x)), computed stably; that is softplus.
    'BNLL': lambda layer: ('softplus', {}),
    'ELU': lambda layer: ('elu', {'alpha': layer.elu_param.alpha}),
}


@register(*_ELEMENTWISE)
def _build_elementwise(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    name, kwargs = _ELEMENTWISE[ctx.layer.type](ctx.layer)
    return base.Built(_Elementwise(name, kwargs), None)


@dataclasses.dataclass(eq=False)
class _Power(base.LayerFunction):
    power: float
    scale: float
    shift: float

    def __call__(self, net, x):
        # Caffe: (shift + scale * x) ^ power; power 0 gives ones.
        if self.power == 0:
            xp = backend.get_array_module(x)
            return chainer.Variable(xp.ones(x.shape, dtype=x.dtype)),
        y = x * self.scale if self.scale != 1 else x
        y = y + self.shift if self.shift != 0 else y
        return (y ** self.power if self.power != 1 else y),


@register('Power')
def _build_power(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.power_param
    return base.Built(_Power(p.power, p.scale, p.shift), None)


@dataclasses.dataclass(eq=False)
class _PReLU(base.LinkedFunction):
    def __call__(self, net, x):
        W = self.link(net).W
        shape = (1, W.shape[0]) + (1,) * (x.ndim - 2) if W.shape[0] > 1 \
            else (1,) * x.ndim
        slope = F.broadcast_to(F.reshape(W, shape), x.shape)
        return F.relu(x) - slope * F.relu(-x),


@register('PReLU', invert=base.named_blobs(base.weight_blob),
          param_names=base.weight_blob)
def _build_prelu(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    link = base.channel_vector_link(
        ctx, ctx.layer.prelu_param.channel_shared, 'slopes')
    return base.Built(_PReLU(''), link)


@dataclasses.dataclass(eq=False)
class _Dropout(base.LayerFunction):
    ratio: float
    scale_train: bool

    def __call__(self, net, x):
        # F.dropout scales kept values by 1/(1-r), as Caffe does in training.
        y = F.dropout(x, self.ratio) if chainer.config.train else x
        return (y if self.scale_train else y * (1.0 - self.ratio)),


@register('Dropout')
def _build_dropout(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.dropout_param
    if not 0 <= p.dropout_ratio < 1:
        raise ctx.error('dropout_ratio {} is not in [0, 1)'.format(
            p.dropout_ratio))
    # `scale_train` exists only in forks' schemas, not in BVLC's (ours).
    scale_train = getattr(p, 'scale_train', True)
    return base.Built(_Dropout(p.dropout_ratio, scale_train), None)
