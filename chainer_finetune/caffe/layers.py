"""One builder per Caffe layer type: Chainer links and functions, Caffe's numerics.

Each builder takes a :class:`BuildContext` (the V2 layer description and its
blobs) and returns a :class:`Built`: the link holding the layer's parameters
(or None) and a picklable :class:`LayerFunction` that computes the layer's
tops from its bottoms. Builders check every blob's shape against what the
layer description implies and never allocate parameters they then overwrite:
weights become :class:`chainer.Parameter` objects around the arrays read from
the file.

Where Chainer's functions differ from Caffe's formulas, the builder bridges
the gap (see each class): pooling output sizes (Caffe rounds up and drops a
last window that starts in the padding), the divisor of average pooling,
LRN's alpha, BatchNorm's scale-factor blob, Dropout's ``scale_train``.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import chainer
from chainer import backend
import chainer.functions as F
import chainer.links as L
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.reader import Blob
from chainer_finetune.errors import CaffeModelError
from chainer_finetune.errors import UnsupportedLayerError

Shape = Tuple[Optional[int], ...]


class BuildContext:
    """What a builder sees: one layer, its blobs, where they came from."""

    def __init__(self, layer: caffe_pb2.LayerParameter, blobs: List[Blob],
                 source: str) -> None:
        self.layer = layer
        self.blobs = blobs
        self.source = source

    @property
    def where(self) -> str:
        return '{}: layer {!r} ({})'.format(self.source, self.layer.name,
                                           self.layer.type)

    def error(self, what: str) -> CaffeModelError:
        return CaffeModelError('{}: {}'.format(self.where, what))

    def unsupported(self, what: str) -> UnsupportedLayerError:
        return UnsupportedLayerError('{}: {}'.format(self.where, what))

    def expect_blobs(self, names: Sequence[str]) -> None:
        """Checks that exactly ``len(names)`` blobs are stored."""
        if len(self.blobs) != len(names):
            raise self.error('expects {} blob(s) ({}) but the weights hold '
                             '{}'.format(len(names), ', '.join(names) or
                                         'none', len(self.blobs) or
                                         'none for a layer of this name'))

    def blob(self, index: int, expected: Shape, what: str) -> numpy.ndarray:
        """Blob ``index`` as an array of shape ``expected``.

        ``None`` entries of ``expected`` match any size. A blob stored with
        legacy 4-D dims matches when they equal ``expected`` left-padded
        with ones, as Caffe's ``Blob::ShapeEquals`` allows; it is then
        reshaped.
        """
        if index >= len(self.blobs):
            raise self.error('blob {} ({}) is missing'.format(index, what))
        blob = self.blobs[index]
        actual = blob.array.shape
        candidate = actual
        if blob.legacy and len(expected) <= 4 and \
                actual[:4 - len(expected)] == (1,) * (4 - len(expected)):
            candidate = actual[4 - len(expected):]
        if len(candidate) == len(expected) and all(
                e is None or e == a for e, a in zip(expected, candidate)):
            return blob.array.reshape(candidate)
        shown = tuple('*' if e is None else e for e in expected)
        raise self.error('blob {} ({}) has shape {} in the weights, expected '
                         '{} from the layer description'.format(
                             index, what, actual, shown).replace("'*'", '*'))


class LayerFunction:
    """Computes one layer's tops from its bottoms (picklable).

    Subclasses implement :meth:`__call__`; those with parameters find their
    link on the owning net by ``link_name``.
    """

    link_name: Optional[str] = None

    def __call__(self, net: chainer.Chain, *xs: chainer.Variable
                 ) -> Tuple[chainer.Variable, ...]:
        raise NotImplementedError

    def link(self, net: chainer.Chain) -> chainer.Link:
        return getattr(net, self.link_name)


class Built(NamedTuple):
    """A builder's result. ``function`` None marks an input layer."""

    function: Optional[LayerFunction]
    link: Optional[chainer.Link]


_BUILDERS: Dict[str, Callable[[BuildContext], Built]] = {}


def _builder(*types: str):
    def register(func):
        for t in types:
            _BUILDERS[t] = func
        return func
    return register


def supported_types() -> List[str]:
    """The Caffe layer types the loader converts."""
    return sorted(_BUILDERS)


def build(ctx: BuildContext) -> Built:
    """Builds one layer.

    Raises:
        UnsupportedLayerError: for a type or option without a faithful
            conversion.
        CaffeModelError: for missing or mis-shaped blobs, invalid options.
    """
    builder = _BUILDERS.get(ctx.layer.type)
    if builder is None:
        raise UnsupportedLayerError(
            '{}: layer type {!r} is not supported; supported types: {}. Use '
            'stop_at= to load only the layers before it.'.format(
                ctx.where, ctx.layer.type, ', '.join(supported_types())))
    return builder(ctx)


def _expect_bottoms(ctx: BuildContext, *counts: int) -> int:
    n = len(ctx.layer.bottom)
    if n not in counts:
        raise ctx.error('expects {} bottom(s), has {}'.format(
            ' or '.join(map(str, counts)), n))
    return n


def _parameter(array: numpy.ndarray) -> chainer.Parameter:
    # Not ascontiguousarray: it turns a 0-axis array (a Scale/Bias scalar)
    # into shape (1,).
    return chainer.Parameter(numpy.asarray(array, dtype=numpy.float32,
                                           order='C'))


def _set_params(link: chainer.Link, **arrays: numpy.ndarray) -> None:
    with link.init_scope():
        for name, array in arrays.items():
            setattr(link, name, _parameter(array))


# --------------------------------------------------------------------------
# Inputs and structural no-ops
# --------------------------------------------------------------------------

@_builder('Input', 'Data', 'MemoryData', 'ImageData', 'DummyData',
          'HDF5Data', 'WindowData')
def _build_input(ctx: BuildContext) -> Built:
    # The tops are supplied by the caller of forward().
    return Built(None, None)


class _Silence(LayerFunction):
    def __call__(self, net, *xs):
        return ()


@_builder('Silence')
def _build_silence(ctx: BuildContext) -> Built:
    return Built(_Silence(), None)


class _Split(LayerFunction):
    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, net, x):
        return (x,) * self.n


@_builder('Split')
def _build_split(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    return Built(_Split(len(ctx.layer.top)), None)


# --------------------------------------------------------------------------
# Convolution, deconvolution, inner product
# --------------------------------------------------------------------------

def _spatial(ctx: BuildContext, repeated: Sequence[int], h_field: str,
             w_field: str, default: Optional[int], what: str
             ) -> Tuple[int, int]:
    """Caffe's 2-D value of pad/kernel/stride/dilation (h, w)."""
    p = ctx.layer.convolution_param
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
    if len(repeated) == 1:
        return repeated[0], repeated[0]
    if len(repeated) == 2:
        return repeated[0], repeated[1]
    raise ctx.unsupported('{}-D {} ({} values): only 2-D convolutions are '
                          'supported'.format(len(repeated), what,
                                             len(repeated)))


def _conv_geometry(ctx: BuildContext):
    p = ctx.layer.convolution_param
    if p.axis != 1:
        raise ctx.unsupported('convolution over axis {} (only the channel '
                              'axis 1 is supported)'.format(p.axis))
    kernel = _spatial(ctx, p.kernel_size, 'kernel_h', 'kernel_w', None,
                      'kernel_size')
    stride = _spatial(ctx, p.stride, 'stride_h', 'stride_w', 1, 'stride')
    pad = _spatial(ctx, p.pad, 'pad_h', 'pad_w', 0, 'pad')
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


class _CallLink(LayerFunction):
    """Calls the layer's link on its single bottom."""

    def __init__(self, link_name: str) -> None:
        self.link_name = link_name

    def __call__(self, net, x):
        return self.link(net)(x),


@_builder('Convolution')
def _build_convolution(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    p = ctx.layer.convolution_param
    kernel, stride, pad, dilation = _conv_geometry(ctx)
    ctx.expect_blobs(['weights', 'bias'] if p.bias_term else ['weights'])
    W = ctx.blob(0, (p.num_output, None) + kernel, 'weights')
    link = L.Convolution2D(None, p.num_output, kernel, stride, pad,
                           nobias=not p.bias_term, dilate=dilation,
                           groups=p.group)
    params = {'W': W}
    if p.bias_term:
        params['b'] = ctx.blob(1, (p.num_output,), 'bias')
    _set_params(link, **params)
    return Built(_CallLink(''), link)


@_builder('Deconvolution')
def _build_deconvolution(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    p = ctx.layer.convolution_param
    kernel, stride, pad, dilation = _conv_geometry(ctx)
    ctx.expect_blobs(['weights', 'bias'] if p.bias_term else ['weights'])
    # Caffe stores deconvolution weights as (in, out / group, kh, kw), the
    # layout of Chainer's Deconvolution2D.
    W = ctx.blob(0, (None, p.num_output // p.group) + kernel, 'weights')
    if W.shape[0] % p.group:
        raise ctx.error('weights have {} input channels, not a multiple of '
                        'group {}'.format(W.shape[0], p.group))
    link = L.Deconvolution2D(None, p.num_output, kernel, stride, pad,
                             nobias=not p.bias_term, dilate=dilation,
                             groups=p.group)
    params = {'W': W}
    if p.bias_term:
        params['b'] = ctx.blob(1, (p.num_output,), 'bias')
    _set_params(link, **params)
    return Built(_CallLink(''), link)


class _InnerProduct(LayerFunction):
    def __init__(self, link_name: str, axis: int) -> None:
        self.link_name = link_name
        self.axis = axis

    def __call__(self, net, x):
        axis = self.axis if self.axis >= 0 else self.axis + x.ndim
        return self.link(net)(x, n_batch_axes=axis),


@_builder('InnerProduct')
def _build_inner_product(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
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
    params = {'W': W}
    if p.bias_term:
        params['b'] = ctx.blob(1, (p.num_output,), 'bias')
    _set_params(link, **params)
    return Built(_InnerProduct('', p.axis), link)


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

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
    if ceil:
        out = -(-span // stride) + 1
    else:
        out = span // stride + 1
    if padded is None:
        padded = pad != 0
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
    def axis(n, o, k, s, p):
        start = numpy.arange(o) * s - p
        end = numpy.minimum(start + k, n + p)
        return end - start
    dh = axis(size[0], out[0], kernel[0], stride[0], pad[0])
    dw = axis(size[1], out[1], kernel[1], stride[1], pad[1])
    return xp.asarray(numpy.outer(dh, dw).astype(numpy.float32))


class _Pooling(LayerFunction):
    def __init__(self, method: int, kernel, stride, pad, global_pooling,
                 ceil: bool) -> None:
        self.method = method
        self.kernel = kernel
        self.stride = stride
        self.pad = pad
        self.global_pooling = global_pooling
        self.ceil = ceil

    def __call__(self, net, x):
        H, W = x.shape[2:]
        if self.global_pooling:
            kernel, stride, pad = (H, W), (1, 1), (0, 0)
        else:
            kernel, stride, pad = self.kernel, self.stride, self.pad
        out = tuple(caffe_pooled_size(n, k, s, p, self.ceil, any(pad))
                    for n, k, s, p in zip((H, W), kernel, stride, pad))
        if min(out) < 1:
            raise CaffeModelError(
                'pooling kernel {} with pad {} does not fit the input size '
                '{}'.format(kernel, pad, (H, W)))
        if self.method == caffe_pb2.PoolingParameter.MAX:
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


def _pool_pair(ctx: BuildContext, square: str, h_field: str, w_field: str
               ) -> Tuple[int, int]:
    """(h, w) of a pooling kernel/stride/pad; Caffe's PoolingLayer checks."""
    p = ctx.layer.pooling_param
    has_h, has_w = p.HasField(h_field), p.HasField(w_field)
    if has_h or has_w:
        if not (has_h and has_w) or p.HasField(square):
            raise ctx.error('give {} or both {} and {}'.format(
                square, h_field, w_field))
        return getattr(p, h_field), getattr(p, w_field)
    if square == 'kernel_size' and not p.HasField(square):
        raise ctx.error('kernel_size is not set')
    return (getattr(p, square),) * 2


@_builder('Pooling')
def _build_pooling(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
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
        kernel = _pool_pair(ctx, 'kernel_size', 'kernel_h', 'kernel_w')
        stride = _pool_pair(ctx, 'stride', 'stride_h', 'stride_w')
        pad = _pool_pair(ctx, 'pad', 'pad_h', 'pad_w')
        if min(kernel) < 1 or min(stride) < 1:
            raise ctx.error('kernel {} and stride {} must be positive'.format(
                kernel, stride))
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise ctx.error('pad {} must be smaller than kernel {}'.format(
                pad, kernel))
    ceil = p.round_mode == caffe_pb2.PoolingParameter.CEIL
    return Built(_Pooling(p.pool, kernel, stride, pad, p.global_pooling,
                          ceil), None)


# --------------------------------------------------------------------------
# Activations and element-wise maps
# --------------------------------------------------------------------------

class _Elementwise(LayerFunction):
    """A function of one bottom with fixed keyword arguments."""

    def __init__(self, name: str, **kwargs) -> None:
        self.name = name
        self.kwargs = kwargs

    def __call__(self, net, x):
        return getattr(F, self.name)(x, **self.kwargs),


@_builder('ReLU')
def _build_relu(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    slope = ctx.layer.relu_param.negative_slope
    if slope:
        return Built(_Elementwise('leaky_relu', slope=slope), None)
    return Built(_Elementwise('relu'), None)


@_builder('Sigmoid')
def _build_sigmoid(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    return Built(_Elementwise('sigmoid'), None)


@_builder('TanH')
def _build_tanh(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    return Built(_Elementwise('tanh'), None)


@_builder('AbsVal')
def _build_absval(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    return Built(_Elementwise('absolute'), None)


@_builder('BNLL')
def _build_bnll(ctx: BuildContext) -> Built:
    # Caffe: log(1 + exp(x)), computed stably; that is softplus.
    _expect_bottoms(ctx, 1)
    return Built(_Elementwise('softplus'), None)


@_builder('ELU')
def _build_elu(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    return Built(_Elementwise('elu', alpha=ctx.layer.elu_param.alpha), None)


class _Power(LayerFunction):
    def __init__(self, power: float, scale: float, shift: float) -> None:
        self.power = power
        self.scale = scale
        self.shift = shift

    def __call__(self, net, x):
        # Caffe: (shift + scale * x) ^ power; power 0 gives ones.
        if self.power == 0:
            xp = backend.get_array_module(x)
            return chainer.Variable(xp.ones(x.shape, dtype=x.dtype)),
        y = x
        if self.scale != 1:
            y = y * self.scale
        if self.shift != 0:
            y = y + self.shift
        if self.power != 1:
            y = y ** self.power
        return y,


@_builder('Power')
def _build_power(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    p = ctx.layer.power_param
    return Built(_Power(p.power, p.scale, p.shift), None)


class _PReLU(LayerFunction):
    def __init__(self, link_name: str) -> None:
        self.link_name = link_name

    def __call__(self, net, x):
        W = self.link(net).W
        shape = (1, W.shape[0]) + (1,) * (x.ndim - 2) if W.shape[0] > 1 \
            else (1,) * x.ndim
        slope = F.broadcast_to(F.reshape(W, shape), x.shape)
        return F.relu(x) - slope * F.relu(-x),


@_builder('PReLU')
def _build_prelu(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    ctx.expect_blobs(['slopes'])
    if ctx.layer.prelu_param.channel_shared:
        W = ctx.blob(0, (1,), 'slopes')
    else:
        W = ctx.blob(0, (None,), 'slopes')
    link = chainer.Link()
    _set_params(link, W=W)
    return Built(_PReLU(''), link)


class _Dropout(LayerFunction):
    def __init__(self, ratio: float, scale_train: bool) -> None:
        self.ratio = ratio
        self.scale_train = scale_train

    def __call__(self, net, x):
        if chainer.config.train:
            y = F.dropout(x, self.ratio)   # scales kept values by 1/(1-r)
            if not self.scale_train:
                y = y * (1.0 - self.ratio)
            return y,
        if not self.scale_train:
            return x * (1.0 - self.ratio),
        return x,


@_builder('Dropout')
def _build_dropout(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    p = ctx.layer.dropout_param
    if not 0 <= p.dropout_ratio < 1:
        raise ctx.error('dropout_ratio {} is not in [0, 1)'.format(
            p.dropout_ratio))
    # BVLC's DropoutParameter has only dropout_ratio: Caffe scales kept
    # values by 1/(1-r) in training and copies in testing. `scale_train`
    # exists only in forks' schemas (not in ours), so reading it
    # unconditionally raised AttributeError for every Dropout layer.
    scale_train = getattr(p, 'scale_train', True)
    return Built(_Dropout(p.dropout_ratio, scale_train), None)


# --------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------

class _LRN(LayerFunction):
    def __init__(self, across: bool, size: int, alpha: float, beta: float,
                 k: float) -> None:
        self.across = across
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

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


@_builder('LRN')
def _build_lrn(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    p = ctx.layer.lrn_param
    if p.local_size % 2 == 0 or p.local_size < 1:
        raise ctx.error('local_size {} must be odd'.format(p.local_size))
    across = p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS
    return Built(_LRN(across, p.local_size, p.alpha, p.beta, p.k), None)


class _BatchNorm(LayerFunction):
    """Caffe's BatchNorm (no affine part: a Scale layer follows).

    ``use_global_stats: true`` always normalizes with the stored statistics,
    as Caffe does; otherwise ``chainer.config.train`` decides (batch
    statistics and a running-average update when training).

    The running averages follow Caffe's rule, not Chainer's fixed decay:
    Caffe keeps sums ``s = maf * s + batch_value`` and a factor
    ``f = maf * f + 1`` (``maf`` = ``moving_average_fraction``) and
    normalizes with ``s / f``, an exponential average corrected for its
    start. The link keeps the average ``s / f`` (``avg_mean``,
    ``avg_var``) and the factor as the persistent value ``caffe_factor``;
    each training step sets the link's decay to ``maf * f_old / f_new``,
    which updates the average exactly as Caffe does. From a factor of 0 (no
    statistics yet, e.g. a net trained from scratch) the first batch's
    statistics replace the stored ones.
    """

    def __init__(self, link_name: str, global_stats: bool,
                 moving_average_fraction: float = 0.999) -> None:
        self.link_name = link_name
        self.global_stats = global_stats
        self.moving_average_fraction = moving_average_fraction

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
        if 'caffe_factor' in link._persistent:
            link.caffe_factor = new_factor
        return y,


@_builder('BatchNorm')
def _build_batch_norm(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
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
    # Caffe's normalizing factor, for training-time updates (see _BatchNorm).
    link.add_persistent('caffe_factor', factor)
    global_stats = p.HasField('use_global_stats') and p.use_global_stats
    return Built(_BatchNorm('', global_stats, p.moving_average_fraction),
                 link)


# --------------------------------------------------------------------------
# Scale and Bias
# --------------------------------------------------------------------------

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


@_builder('Scale')
def _build_scale(ctx: BuildContext) -> Built:
    n = _expect_bottoms(ctx, 1, 2)
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
    _set_params(link, **params)
    return Built(_ScaleOrBias('', True, p.axis, p.bias_term), link)


@_builder('Bias')
def _build_bias(ctx: BuildContext) -> Built:
    n = _expect_bottoms(ctx, 1, 2)
    p = ctx.layer.bias_param
    if p.num_axes < -1:
        raise ctx.error('num_axes {} must be >= -1'.format(p.num_axes))
    if n == 2:
        ctx.expect_blobs([])
        return Built(_ScaleOrBias(None, False, p.axis, False), None)
    ctx.expect_blobs(['bias'])
    link = chainer.Link()
    _set_params(link, b=_broadcast_blob(ctx, 0, p.num_axes, 'bias'))
    return Built(_ScaleOrBias('', False, p.axis, True), link)


# --------------------------------------------------------------------------
# Combining and reshaping blobs
# --------------------------------------------------------------------------

class _Eltwise(LayerFunction):
    def __init__(self, operation: int, coeffs: Sequence[float]) -> None:
        self.operation = operation
        self.coeffs = list(coeffs)

    def __call__(self, net, *xs):
        op = caffe_pb2.EltwiseParameter
        if self.operation == op.SUM:
            coeffs = self.coeffs or [1.0] * len(xs)
            y = None
            for c, x in zip(coeffs, xs):
                term = x if c == 1 else x * c
                y = term if y is None else y + term
            return y,
        y = xs[0]
        for x in xs[1:]:
            y = y * x if self.operation == op.PROD else F.maximum(y, x)
        return y,


@_builder('Eltwise')
def _build_eltwise(ctx: BuildContext) -> Built:
    p = ctx.layer.eltwise_param
    n = len(ctx.layer.bottom)
    if n < 2:
        raise ctx.error('expects at least 2 bottoms, has {}'.format(n))
    if p.coeff and (len(p.coeff) != n or
                    p.operation != caffe_pb2.EltwiseParameter.SUM):
        raise ctx.error('coeff needs one value per bottom and operation SUM')
    return Built(_Eltwise(p.operation, p.coeff), None)


class _Concat(LayerFunction):
    def __init__(self, axis: int) -> None:
        self.axis = axis

    def __call__(self, net, *xs):
        return F.concat(xs, axis=self.axis),


@_builder('Concat')
def _build_concat(ctx: BuildContext) -> Built:
    p = ctx.layer.concat_param
    axis = p.concat_dim if p.HasField('concat_dim') else p.axis
    return Built(_Concat(axis), None)


class _Slice(LayerFunction):
    def __init__(self, axis: int, points: Sequence[int], n_tops: int) -> None:
        self.axis = axis
        self.points = list(points)
        self.n_tops = n_tops

    def __call__(self, net, x):
        axis = self.axis if self.axis >= 0 else self.axis + x.ndim
        if self.points:
            sections = self.points
        else:
            if x.shape[axis] % self.n_tops:
                raise CaffeModelError('cannot slice {} values into {} equal '
                                      'parts'.format(x.shape[axis],
                                                     self.n_tops))
            sections = self.n_tops
        ys = F.split_axis(x, sections, axis, force_tuple=True)
        return tuple(ys)


@_builder('Slice')
def _build_slice(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    p = ctx.layer.slice_param
    axis = p.slice_dim if p.HasField('slice_dim') else p.axis
    n_tops = len(ctx.layer.top)
    if p.slice_point and len(p.slice_point) != n_tops - 1:
        raise ctx.error('{} slice_point values for {} tops'.format(
            len(p.slice_point), n_tops))
    if list(p.slice_point) != sorted(p.slice_point):
        raise ctx.error('slice_point must increase')
    return Built(_Slice(axis, p.slice_point, n_tops), None)


class _Flatten(LayerFunction):
    def __init__(self, axis: int, end_axis: int) -> None:
        self.axis = axis
        self.end_axis = end_axis

    def __call__(self, net, x):
        start = self.axis if self.axis >= 0 else self.axis + x.ndim
        end = self.end_axis if self.end_axis >= 0 else self.end_axis + x.ndim
        shape = x.shape[:start] + (
            int(numpy.prod(x.shape[start:end + 1])),) + x.shape[end + 1:]
        return F.reshape(x, shape),


@_builder('Flatten')
def _build_flatten(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    p = ctx.layer.flatten_param
    return Built(_Flatten(p.axis, p.end_axis), None)


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


class _Reshape(LayerFunction):
    def __init__(self, dims: Sequence[int], axis: int, num_axes: int) -> None:
        self.dims = list(dims)
        self.axis = axis
        self.num_axes = num_axes

    def __call__(self, net, x):
        return F.reshape(x, caffe_reshape(x.shape, self.dims, self.axis,
                                          self.num_axes)),


@_builder('Reshape')
def _build_reshape(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    p = ctx.layer.reshape_param
    dims = list(p.shape.dim)
    if any(d < -1 for d in dims) or dims.count(-1) > 1:
        raise ctx.error('shape {} may hold one -1 and no other negative '
                        'value'.format(dims))
    if p.num_axes < -1:
        raise ctx.error('num_axes must be >= -1')
    return Built(_Reshape(dims, p.axis, p.num_axes), None)


class _Softmax(LayerFunction):
    def __init__(self, axis: int) -> None:
        self.axis = axis

    def __call__(self, net, x):
        axis = self.axis if self.axis >= 0 else self.axis + x.ndim
        return F.softmax(x, axis=axis),


@_builder('Softmax')
def _build_softmax(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 1)
    return Built(_Softmax(ctx.layer.softmax_param.axis), None)


# --------------------------------------------------------------------------
# Training heads: computed when their bottoms (e.g. `label`) are given
# --------------------------------------------------------------------------

def _move_axis_last(x, axis):
    axis = axis if axis >= 0 else axis + x.ndim
    if axis == x.ndim - 1:
        return x
    order = [i for i in range(x.ndim) if i != axis] + [axis]
    return F.transpose(x, order)


class _SoftmaxWithLoss(LayerFunction):
    """The loss blob as Caffe shows it: normalized, not multiplied by
    ``loss_weight`` (kept as an attribute; Caffe applies it only to the
    training objective)."""

    def __init__(self, axis: int, ignore_label: Optional[int],
                 normalization: int, loss_weight: float) -> None:
        self.axis = axis
        self.ignore_label = ignore_label
        self.normalization = normalization
        self.loss_weight = loss_weight

    def __call__(self, net, x, t):
        scores = _move_axis_last(x, self.axis)
        n_class = scores.shape[-1]
        scores = F.reshape(scores, (-1, n_class))
        labels = t.array if isinstance(t, chainer.Variable) else t
        labels = labels.reshape(-1).astype(numpy.int32)
        ignore = -1 if self.ignore_label is None else self.ignore_label
        losses = F.softmax_cross_entropy(scores, labels, reduce='no',
                                         ignore_label=ignore)
        total = F.sum(losses)
        mode = caffe_pb2.LossParameter
        if self.normalization == mode.VALID:
            denom = int((labels != ignore).sum()) \
                if self.ignore_label is not None else labels.size
        elif self.normalization == mode.FULL:
            denom = labels.size
        elif self.normalization == mode.BATCH_SIZE:
            # Caffe's outer_num_: the size of the axes before the softmax
            # axis (not shape[0] when that axis is not 1).
            axis = self.axis if self.axis >= 0 else self.axis + x.ndim
            denom = int(numpy.prod(x.shape[:axis]))
        else:
            denom = 1
        return total * (1.0 / max(denom, 1)),


@_builder('SoftmaxWithLoss')
def _build_softmax_with_loss(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 2)
    lp = ctx.layer.loss_param
    normalization = lp.normalization
    if not lp.HasField('normalization') and lp.HasField('normalize'):
        normalization = (caffe_pb2.LossParameter.VALID if lp.normalize
                         else caffe_pb2.LossParameter.BATCH_SIZE)
    ignore = lp.ignore_label if lp.HasField('ignore_label') else None
    weight = ctx.layer.loss_weight[0] if ctx.layer.loss_weight else 1.0
    return Built(_SoftmaxWithLoss(ctx.layer.softmax_param.axis, ignore,
                                  normalization, weight), None)


class _Accuracy(LayerFunction):
    def __init__(self, top_k: int, axis: int,
                 ignore_label: Optional[int]) -> None:
        self.top_k = top_k
        self.axis = axis
        self.ignore_label = ignore_label

    def __call__(self, net, x, t):
        xp = backend.get_array_module(x)
        scores = _move_axis_last(x, self.axis).array
        scores = scores.reshape(-1, scores.shape[-1])
        labels = t.array if isinstance(t, chainer.Variable) else t
        labels = labels.reshape(-1).astype(numpy.int64)
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


@_builder('Accuracy')
def _build_accuracy(ctx: BuildContext) -> Built:
    _expect_bottoms(ctx, 2)
    p = ctx.layer.accuracy_param
    if len(ctx.layer.top) != 1:
        raise ctx.unsupported('per-class accuracy top')
    ignore = p.ignore_label if p.HasField('ignore_label') else None
    return Built(_Accuracy(p.top_k, p.axis, ignore), None)
