"""Convolution, Deconvolution and InnerProduct: the layers with weights and
a declared output count (``num_output``)."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import chainer
import chainer.links as L
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.layers import base
from chainer_finetune.caffe.layers.registry import register


def _weights_and_bias(field: str) -> base.BlobNames:
    """``W`` and, with ``bias_term``, ``b`` of the layer's ``field``."""
    def names(layer: caffe_pb2.LayerParameter) -> List[str]:
        return ['W', 'b'] if getattr(layer, field).bias_term else ['W']
    return names


_CONVOLUTION_BLOBS = _weights_and_bias('convolution_param')
_INNER_PRODUCT_BLOBS = _weights_and_bias('inner_product_param')


def _spatial(ctx: base.BuildContext, what: str, default: Optional[int]
             ) -> Tuple[int, int]:
    """Caffe's 2-D (h, w) value of ``what`` (kernel_size, stride, pad)."""
    p = ctx.layer.convolution_param
    repeated = getattr(p, what)
    h_field, w_field = (what.split('_')[0] + axis for axis in ('_h', '_w'))
    if p.HasField(h_field) or p.HasField(w_field):
        if len(repeated):
            raise ctx.error('{} given both as {} and as {}/{}'.format(
                what, what, h_field, w_field))
        if not (p.HasField(h_field) and p.HasField(w_field)):
            raise ctx.error('{} and {} must be given together'.format(
                h_field, w_field))
        return getattr(p, h_field), getattr(p, w_field)
    if len(repeated) == 0:
        if default is None:
            raise ctx.error('{} is not set'.format(what))
        return default, default
    if len(repeated) <= 2:
        return (tuple(repeated) * 2)[:2]
    raise ctx.unsupported('{}-D {} ({} values): only 2-D convolutions are '
                          'supported'.format(len(repeated), what,
                                             len(repeated)))


def _conv_geometry(ctx: base.BuildContext):
    p = ctx.layer.convolution_param
    if p.axis != 1:
        raise ctx.unsupported('convolution over axis {} (only the channel '
                              'axis 1 is supported)'.format(p.axis))
    kernel = _spatial(ctx, 'kernel_size', None)
    stride = _spatial(ctx, 'stride', 1)
    pad = _spatial(ctx, 'pad', 0)
    if len(p.dilation) > 2:
        raise ctx.unsupported('{}-D dilation'.format(len(p.dilation)))
    dilation = (tuple(p.dilation) * 2)[:2] if len(p.dilation) else (1, 1)
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1:
        raise ctx.error('kernel {}, stride {} and dilation {} must be '
                        'positive'.format(kernel, stride, dilation))
    if p.num_output < 1 or p.group < 1 or p.num_output % p.group:
        raise ctx.error('num_output {} must be a positive multiple of group '
                        '{}'.format(p.num_output, p.group))
    return kernel, stride, pad, tuple(dilation)


@dataclasses.dataclass(eq=False)
class _CallLink(base.LinkedFunction):
    """Calls the layer's link on its single bottom."""

    def __call__(self, net, x):
        return self.link(net)(x),


def _set_weights(ctx: base.BuildContext, link: chainer.Link, W: numpy.ndarray,
                 p) -> None:
    """Gives ``link`` the weights and, with ``p.bias_term``, blob 1 as the
    bias (``p``: the layer's convolution or inner product parameters)."""
    params = {'W': W}
    if p.bias_term:
        params['b'] = ctx.blob(1, (p.num_output,), 'bias')
    base.set_params(link, **params)


# Convolution2D's (out, in / group, kh, kw) and Deconvolution2D's (in,
# out / group, kh, kw) are Caffe's layouts: the blobs are the parameters.
# A depthwise layer (group == channels) thus keeps its (C, 1, kh, kw) blob;
# Chainer's groups= computes one small product per group, never a dense
# block-diagonal weight.
_CONVOLUTION_DECLARATION = dict(
    invert=base.named_blobs(_CONVOLUTION_BLOBS),
    param_names=_CONVOLUTION_BLOBS, output_field='convolution_param')


@register('Convolution', **_CONVOLUTION_DECLARATION)
@register('Deconvolution', **_CONVOLUTION_DECLARATION)
def _build_convolution(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.convolution_param
    kernel, stride, pad, dilation = _conv_geometry(ctx)
    ctx.expect_blobs(['weights', 'bias'] if p.bias_term else ['weights'])
    deconvolution = ctx.layer.type == 'Deconvolution'
    if deconvolution:
        # Caffe stores deconvolution weights as (in, out / group, kh, kw),
        # the layout of Chainer's Deconvolution2D.
        W = ctx.blob(0, (None, p.num_output // p.group) + kernel, 'weights')
        if W.shape[0] % p.group:
            raise ctx.error('weights have {} input channels, not a multiple '
                            'of group {}'.format(W.shape[0], p.group))
    else:
        W = ctx.blob(0, (p.num_output, None) + kernel, 'weights')
    link_class = L.Deconvolution2D if deconvolution else L.Convolution2D
    link = link_class(None, p.num_output, kernel, stride, pad,
                      nobias=not p.bias_term, dilate=dilation,
                      groups=p.group)
    _set_weights(ctx, link, W, p)
    return base.Built(_CallLink(''), link)


@dataclasses.dataclass(eq=False)
class _InnerProduct(base.LinkedFunction):
    axis: int

    def __call__(self, net, x):
        axis = base.canonical_axis(self.axis, x.ndim)
        return self.link(net)(x, n_batch_axes=axis),


def _invert_inner_product(layer: caffe_pb2.LayerParameter,
                          link: chainer.Link) -> List[base.InvertedBlob]:
    blobs = base.named_blobs(_INNER_PRODUCT_BLOBS)(layer, link)
    if layer.inner_product_param.transpose:
        # Caffe keeps (in, out); Chainer's Linear (out, in).
        blobs[0] = base.InvertedBlob('W', numpy.ascontiguousarray(
            blobs[0].array.T), 'W (transposed: in, out)')
    return blobs


@register('InnerProduct', invert=_invert_inner_product,
          param_names=_INNER_PRODUCT_BLOBS, output_field='inner_product_param')
def _build_inner_product(ctx: base.BuildContext) -> base.Built:
    ctx.expect_bottoms(1)
    p = ctx.layer.inner_product_param
    if p.num_output < 1:
        raise ctx.error('num_output must be positive')
    ctx.expect_blobs(['weights', 'bias'] if p.bias_term else ['weights'])
    if p.transpose:
        # Stored as (in, out); kept as Chainer's (out, in).
        W = ctx.blob(0, (None, p.num_output), 'weights').T
    else:
        W = ctx.blob(0, (p.num_output, None), 'weights')
    link = L.Linear(None, p.num_output, nobias=not p.bias_term)
    _set_weights(ctx, link, W, p)
    return base.Built(_InnerProduct('', p.axis), link)
