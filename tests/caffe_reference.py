"""An independent NumPy reference of Caffe's forward pass.

Each function transcribes the forward computation of one BVLC Caffe layer
(``src/caffe/layers/*.cpp``, CPU path) and the way its ``LayerSetUp`` /
``Reshape`` read the layer's parameters, as plain loops, im2col/col2im and
matrix products in float64. Nothing here calls Chainer or
chainer_finetune's layer code: this is what the loader's output is checked
against.

:func:`forward_net` runs a whole net description (a
:class:`chainer_finetune.caffe.writer.NetWriter`, or V2 layers plus blobs by
layer name) the way ``Net::Forward`` does: layers in order, in-place tops
overwrite their blob, layers whose bottoms are not available (a loss head
without ``label``) are skipped, as chainer_finetune does.
"""

import math

import numpy as np

from chainer_finetune.caffe import caffe_pb2

import ssd_reference

FLT_MIN = float(np.finfo(np.float32).tiny)
FLT_MAX = float(np.finfo(np.float32).max)


def canonical_axis(axis, num_axes):
    """Blob::CanonicalAxisIndex."""
    assert -num_axes <= axis < num_axes, (axis, num_axes)
    return axis + num_axes if axis < 0 else axis


def count(shape, start=0, end=None):
    """Blob::count(start, end)."""
    end = len(shape) if end is None else end
    n = 1
    for d in shape[start:end]:
        n *= int(d)
    return n


# ---------------------------------------------------------------------------
# Convolution (base_conv_layer.cpp, conv_layer.cpp, deconv_layer.cpp,
# util/im2col.cpp)
# ---------------------------------------------------------------------------

def conv_geometry(p):
    """BaseConvolutionLayer::LayerSetUp for 2 spatial axes.

    Returns (kernel, stride, pad, dilation) as (h, w) pairs.
    """
    def pair(repeated, default):
        if len(repeated) == 0:
            return (default, default)
        if len(repeated) == 1:
            return (repeated[0], repeated[0])
        assert len(repeated) == 2
        return (repeated[0], repeated[1])

    if p.HasField('kernel_h') or p.HasField('kernel_w'):
        assert len(p.kernel_size) == 0
        kernel = (p.kernel_h, p.kernel_w)
    else:
        kernel = pair(p.kernel_size, None)
    if p.HasField('stride_h') or p.HasField('stride_w'):
        assert len(p.stride) == 0
        stride = (p.stride_h, p.stride_w)
    else:
        stride = pair(p.stride, 1)
    if p.HasField('pad_h') or p.HasField('pad_w'):
        assert len(p.pad) == 0
        pad = (p.pad_h, p.pad_w)
    else:
        pad = pair(p.pad, 0)
    dilation = pair(p.dilation, 1)
    return kernel, stride, pad, dilation


def _taps(size, kernel_index, pad, dilation, stride, out_size):
    # im2col's index arithmetic along one axis for one kernel tap:
    # input position -pad + k * dilation + o * stride of output o, and
    # whether it lies inside the input (else the value is padding, 0).
    positions = -pad + kernel_index * dilation + np.arange(out_size) * stride
    valid = (positions >= 0) & (positions < size)
    return positions, valid


def im2col(image, kernel, pad, stride, dilation):
    """im2col_cpu: (C, H, W) -> (C * kh * kw, out_h * out_w), zero padded.

    Row (c, ki, kj), column (oh, ow) holds
    image[c, -ph + ki * dh + oh * sh, -pw + kj * dw + ow * sw] (0 outside);
    the loops over c, oh, ow are vectorized.
    """
    channels, height, width = image.shape
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = kernel, pad, stride, dilation
    out_h = (height + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    out_w = (width + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    col = np.zeros((channels, kh, kw, out_h, out_w))
    for ki in range(kh):
        rows, row_ok = _taps(height, ki, ph, dh, sh, out_h)
        for kj in range(kw):
            cols, col_ok = _taps(width, kj, pw, dw, sw, out_w)
            block = image[:, rows[row_ok]][:, :, cols[col_ok]]
            target = col[:, ki, kj]
            target[np.ix_(np.arange(channels), np.flatnonzero(row_ok),
                          np.flatnonzero(col_ok))] = block
    return col.reshape(channels * kh * kw, out_h * out_w), (out_h, out_w)


def col2im(col, channels, height, width, kernel, pad, stride, dilation):
    """col2im_cpu: accumulates columns back into a (C, H, W) image (the
    same index arithmetic as im2col, with += )."""
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = kernel, pad, stride, dilation
    out_h = (height + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    out_w = (width + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    col = col.reshape(channels, kh, kw, out_h, out_w)
    image = np.zeros((channels, height, width))
    everything = np.arange(channels)
    for ki in range(kh):
        rows, row_ok = _taps(height, ki, ph, dh, sh, out_h)
        for kj in range(kw):
            cols, col_ok = _taps(width, kj, pw, dw, sw, out_w)
            values = col[:, ki, kj][np.ix_(
                everything, np.flatnonzero(row_ok), np.flatnonzero(col_ok))]
            # One tap maps distinct outputs to distinct inputs, so a plain
            # += does not drop repeated indices.
            image[np.ix_(everything, rows[row_ok], cols[col_ok])] += values
    return image


def convolution(x, weight, bias, p):
    """ConvolutionLayer::Forward_cpu: per image and group, W_g x col_g."""
    kernel, stride, pad, dilation = conv_geometry(p)
    group = p.group
    num, channels = x.shape[:2]
    n_out = p.num_output
    assert weight.shape == (n_out, channels // group) + kernel, weight.shape
    tops = []
    for n in range(num):
        col, (out_h, out_w) = im2col(x[n], kernel, pad, stride, dilation)
        k = col.shape[0] // group
        m = n_out // group
        out = np.concatenate([
            weight[g * m:(g + 1) * m].reshape(m, -1) @ col[g * k:(g + 1) * k]
            for g in range(group)])
        if p.bias_term:
            out = out + bias.reshape(-1, 1)
        tops.append(out.reshape(n_out, out_h, out_w))
    return np.stack(tops)


def deconvolution(x, weight, bias, p):
    """DeconvolutionLayer::Forward_cpu: the convolution's backward pass.

    Weights are (C_in, num_output / group, kh, kw); per group the columns
    are W_g^T x_g, scattered back with col2im.
    """
    kernel, stride, pad, dilation = conv_geometry(p)
    group = p.group
    num, channels, height, width = x.shape
    n_out = p.num_output
    assert weight.shape == (channels, n_out // group) + kernel, weight.shape
    # DeconvolutionLayer::compute_output_shape
    out_h = stride[0] * (height - 1) + dilation[0] * (kernel[0] - 1) + 1 \
        - 2 * pad[0]
    out_w = stride[1] * (width - 1) + dilation[1] * (kernel[1] - 1) + 1 \
        - 2 * pad[1]
    c_g = channels // group
    tops = []
    for n in range(num):
        col = np.concatenate([
            weight[g * c_g:(g + 1) * c_g].reshape(c_g, -1).T @
            x[n, g * c_g:(g + 1) * c_g].reshape(c_g, height * width)
            for g in range(group)])
        top = col2im(col, n_out, out_h, out_w, kernel, pad, stride, dilation)
        if p.bias_term:
            top = top + bias.reshape(-1, 1, 1)
        tops.append(top)
    return np.stack(tops)


def inner_product(x, weight, bias, p):
    """InnerProductLayer: y = x.reshape(M, K) W^T + b (W is (K, N) when
    transpose)."""
    axis = canonical_axis(p.axis, x.ndim)
    m, k = count(x.shape, 0, axis), count(x.shape, axis)
    n = p.num_output
    if p.transpose:
        assert weight.shape == (k, n), weight.shape
        y = x.reshape(m, k) @ weight
    else:
        assert weight.shape == (n, k), weight.shape
        y = x.reshape(m, k) @ weight.T
    if p.bias_term:
        y = y + bias.reshape(1, n)
    return y.reshape(x.shape[:axis] + (n,))


# ---------------------------------------------------------------------------
# Pooling (pooling_layer.cpp)
# ---------------------------------------------------------------------------

def pooling_geometry(p, height, width):
    """PoolingLayer::LayerSetUp + Reshape: kernel, stride, pad, out size."""
    if p.global_pooling:
        kernel = (height, width)
    elif p.HasField('kernel_size'):
        kernel = (p.kernel_size, p.kernel_size)
    else:
        kernel = (p.kernel_h, p.kernel_w)
    if p.HasField('pad_h') or p.HasField('pad_w'):
        pad = (p.pad_h, p.pad_w)
    else:
        pad = (p.pad, p.pad)
    if p.HasField('stride_h') or p.HasField('stride_w'):
        stride = (p.stride_h, p.stride_w)
    else:
        stride = (p.stride, p.stride)
    if p.global_pooling:
        assert pad == (0, 0) and stride == (1, 1)
    rounding = math.floor if p.round_mode == \
        caffe_pb2.PoolingParameter.FLOOR else math.ceil
    pooled = [int(rounding(float(size + 2 * q - k) / s)) + 1
              for size, k, s, q in zip((height, width), kernel, stride, pad)]
    if pad[0] or pad[1]:
        # "ensure that the last pooling starts strictly inside the image"
        # -- on both axes as soon as either has padding.
        for i, size in enumerate((height, width)):
            if (pooled[i] - 1) * stride[i] >= size + pad[i]:
                pooled[i] -= 1
    return kernel, stride, pad, tuple(pooled)


def pooling(x, p):
    """PoolingLayer::Forward_cpu for MAX and AVE over (N, C, H, W)."""
    num, channels, height, width = x.shape
    kernel, stride, pad, (out_h, out_w) = pooling_geometry(p, height, width)
    top = np.empty((num, channels, out_h, out_w))
    method = p.pool
    for ph in range(out_h):
        for pw in range(out_w):
            hstart = ph * stride[0] - pad[0]
            wstart = pw * stride[1] - pad[1]
            if method == caffe_pb2.PoolingParameter.MAX:
                hend = min(hstart + kernel[0], height)
                wend = min(wstart + kernel[1], width)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                window = x[:, :, hstart:hend, wstart:wend]
                if window.size == 0:
                    top[:, :, ph, pw] = -FLT_MAX
                else:
                    top[:, :, ph, pw] = window.max(axis=(2, 3))
            elif method == caffe_pb2.PoolingParameter.AVE:
                hend = min(hstart + kernel[0], height + pad[0])
                wend = min(wstart + kernel[1], width + pad[1])
                pool_size = (hend - hstart) * (wend - wstart)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, height), min(wend, width)
                window = x[:, :, hstart:hend, wstart:wend]
                top[:, :, ph, pw] = window.sum(axis=(2, 3)) / pool_size
            else:
                raise NotImplementedError('pooling method {}'.format(method))
    return top


# ---------------------------------------------------------------------------
# Normalization (lrn_layer.cpp, batch_norm_layer.cpp)
# ---------------------------------------------------------------------------

def lrn(x, p):
    """LRNLayer::Forward_cpu, both regions."""
    size, alpha, beta, k = p.local_size, p.alpha, p.beta, p.k
    assert size % 2 == 1
    pre_pad = (size - 1) // 2
    num, channels, height, width = x.shape
    if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        # CrossChannelForward_cpu: scale = k + alpha / size * (sum of
        # squares over a window of `size` channels, zero padded).
        padded_square = np.zeros((num, channels + size - 1, height, width))
        padded_square[:, pre_pad:pre_pad + channels] = x * x
        scale = np.empty_like(x)
        for c in range(channels):
            scale[:, c] = k + alpha / size * \
                padded_square[:, c:c + size].sum(axis=1)
        return x * scale ** -beta
    # WithinChannelForward: split -> square (Power 2) -> AVE pooling
    # (kernel size, pad pre_pad) -> Power(-beta, scale alpha, shift 1) ->
    # product with the input. k is not used.
    square = power(x, 2.0, 1.0, 0.0)
    pool_param = caffe_pb2.PoolingParameter(
        pool=caffe_pb2.PoolingParameter.AVE, pad=pre_pad, kernel_size=size)
    pooled = pooling(square, pool_param)
    return x * power(pooled, -beta, alpha, 1.0)


def batch_norm(x, blobs, p, train=False):
    """BatchNormLayer::Forward_cpu.

    ``use_global_stats`` defaults to the phase (TEST: stored statistics);
    an explicit value wins. Stored statistics are sums: they are scaled by
    1 / blobs[2][0], or by 0 when that factor is 0.
    """
    use_global_stats = not train
    if p.HasField('use_global_stats'):
        use_global_stats = p.use_global_stats
    channels = 1 if x.ndim == 1 else x.shape[1]
    shape = [1] * x.ndim
    if x.ndim > 1:
        shape[1] = channels
    axes = tuple(i for i in range(x.ndim) if i != 1) if x.ndim > 1 \
        else (0,)
    if use_global_stats:
        factor = blobs[2].reshape(-1)[0]
        scale_factor = 0.0 if factor == 0 else 1.0 / factor
        mean = blobs[0].reshape(-1) * scale_factor
        variance = blobs[1].reshape(-1) * scale_factor
    else:
        mean = x.mean(axis=axes)
        variance = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    centred = x - mean.reshape(shape)
    return centred / np.sqrt(variance + p.eps).reshape(shape)


# ---------------------------------------------------------------------------
# Scale and Bias (scale_layer.cpp, bias_layer.cpp)
# ---------------------------------------------------------------------------

def _broadcast(x, v, axis_param):
    # Reshape: axis_ = 0 for a scalar, else the canonical axis; v must
    # match x.shape[axis_:axis_ + v.ndim]; then outer/dim/inner loops.
    axis = 0 if v.ndim == 0 else canonical_axis(axis_param, x.ndim)
    assert x.shape[axis:axis + v.ndim] == v.shape, (x.shape, v.shape, axis)
    outer = count(x.shape, 0, axis)
    dim = v.size
    inner = count(x.shape, axis + v.ndim)
    return outer, dim, inner


def scale(x, factor, bias, p):
    """ScaleLayer::Forward_cpu (+ its internal BiasLayer)."""
    outer, dim, inner = _broadcast(x, factor, p.axis)
    y = x.reshape(outer, dim, inner) * factor.reshape(1, dim, 1)
    y = y.reshape(x.shape)
    if bias is not None:
        # The bias has the scale's shape: num_axes of bottom[1], or the
        # layer's num_axes.
        y = add_bias(y, bias, p.axis)
    return y


def add_bias(x, bias, axis):
    """BiasLayer::Forward_cpu."""
    outer, dim, inner = _broadcast(x, bias, axis)
    return (x.reshape(outer, dim, inner) +
            bias.reshape(1, dim, 1)).reshape(x.shape)


def param_blob_shape(x_shape, axis, num_axes):
    """The shape Scale/Bias LayerSetUp gives a blob (1-bottom form)."""
    axis = canonical_axis(axis, len(x_shape))
    end = len(x_shape) if num_axes == -1 else axis + num_axes
    return tuple(x_shape[axis:end])


# ---------------------------------------------------------------------------
# Neurons (relu/prelu/elu/sigmoid/tanh/absval/bnll/power/dropout_layer.cpp)
# ---------------------------------------------------------------------------

def relu(x, negative_slope=0.0):
    return np.maximum(x, 0) + negative_slope * np.minimum(x, 0)


def prelu(x, slopes, channel_shared):
    """PReLULayer: slope of channel c = (i / dim) % channels, dim = H*W."""
    channels = x.shape[1] if x.ndim > 1 else 1
    dim = count(x.shape, 2)
    flat = x.reshape(-1)
    c = (np.arange(flat.size) // dim) % channels
    slope = np.full(flat.size, slopes.reshape(-1)[0]) if channel_shared \
        else slopes.reshape(-1)[c]
    return (np.maximum(flat, 0) + slope * np.minimum(flat, 0)).reshape(
        x.shape)


def elu(x, alpha):
    return np.maximum(x, 0) + alpha * (np.exp(np.minimum(x, 0)) - 1)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def bnll(x):
    out = np.empty_like(x)
    pos = x > 0
    out[pos] = x[pos] + np.log1p(np.exp(-x[pos]))
    out[~pos] = np.log1p(np.exp(x[~pos]))
    return out


def power(x, power_, scale_, shift):
    """PowerLayer::Forward_cpu, including the diff_scale == 0 shortcut."""
    if power_ * scale_ == 0:
        value = 1.0 if power_ == 0 else shift ** power_
        return np.full(x.shape, value)
    y = np.array(x, dtype=np.float64)
    if scale_ != 1:
        y = y * scale_
    if shift != 0:
        y = y + shift
    if power_ != 1:
        y = y ** power_
    return y


def dropout(x, ratio, train=False, mask=None, rng=None):
    """DropoutLayer: TRAIN: x * bernoulli(1 - ratio) / (1 - ratio);
    TEST: a copy."""
    if not train:
        return x.copy()
    if mask is None:
        mask = (rng or np.random).uniform(size=x.shape) >= ratio
    return x * mask * (1.0 / (1.0 - ratio))


# ---------------------------------------------------------------------------
# Blob plumbing (eltwise/concat/slice/split/flatten/reshape_layer.cpp)
# ---------------------------------------------------------------------------

def eltwise(xs, p):
    op = p.operation
    if op == caffe_pb2.EltwiseParameter.PROD:
        y = xs[0] * xs[1]
        for x in xs[2:]:
            y = y * x
        return y
    if op == caffe_pb2.EltwiseParameter.SUM:
        coeffs = list(p.coeff) or [1.0] * len(xs)
        assert len(coeffs) == len(xs)
        y = np.zeros_like(xs[0])
        for c, x in zip(coeffs, xs):
            y = y + c * x
        return y
    assert op == caffe_pb2.EltwiseParameter.MAX
    y = np.maximum(xs[0], xs[1])
    for x in xs[2:]:
        y = np.maximum(y, x)
    return y


def concat(xs, p):
    if p.HasField('concat_dim'):
        axis = p.concat_dim
    else:
        axis = canonical_axis(p.axis, xs[0].ndim)
    return np.concatenate(xs, axis=axis)


def slice_(x, p, n_tops):
    if p.HasField('slice_dim'):
        axis = p.slice_dim
    else:
        axis = canonical_axis(p.axis, x.ndim)
    if len(p.slice_point):
        assert len(p.slice_point) == n_tops - 1
        points = [0] + list(p.slice_point) + [x.shape[axis]]
    else:
        assert x.shape[axis] % n_tops == 0
        step = x.shape[axis] // n_tops
        points = [i * step for i in range(n_tops + 1)]
    index = [slice(None)] * x.ndim
    tops = []
    for start, end in zip(points[:-1], points[1:]):
        index[axis] = slice(start, end)
        tops.append(x[tuple(index)].copy())
    return tops


def crop(x, reference_shape, p):
    """CropLayer::Reshape + crop_copy: offsets per axis from ``axis`` on
    (one value for all, one each, or 0), sizes from bottom 1."""
    start = canonical_axis(p.axis, x.ndim)
    offsets = [0] * x.ndim
    for i in range(start, x.ndim):
        if len(p.offset) == 1:
            offsets[i] = p.offset[0]
        elif len(p.offset) > 1:
            assert start + len(p.offset) == x.ndim
            offsets[i] = p.offset[i - start]
    new_shape = [reference_shape[i] if i >= start else x.shape[i]
                 for i in range(x.ndim)]
    top = np.empty(new_shape, dtype=x.dtype)
    for index in np.ndindex(*new_shape):
        top[index] = x[tuple(i + o for i, o in zip(index, offsets))]
    return top


def flatten(x, p):
    start = canonical_axis(p.axis, x.ndim)
    end = canonical_axis(p.end_axis, x.ndim)
    shape = x.shape[:start] + (count(x.shape, start, end + 1),) + \
        x.shape[end + 1:]
    return x.reshape(shape)


def reshape_shape(bottom_shape, p):
    """ReshapeLayer::LayerSetUp + Reshape: the top shape."""
    dims = list(p.shape.dim)
    copy_axes = [i for i, d in enumerate(dims) if d == 0]
    inferred = [i for i, d in enumerate(dims) if d == -1]
    assert len(inferred) <= 1
    constant_count = 1
    for d in dims:
        if d > 0:
            constant_count *= d
    num_axes_in = len(bottom_shape)
    start_axis = p.axis if p.axis >= 0 else num_axes_in + p.axis + 1
    end_axis = num_axes_in if p.num_axes == -1 else start_axis + p.num_axes
    top = list(bottom_shape[:start_axis]) + dims + \
        list(bottom_shape[end_axis:])
    for i in copy_axes:
        top[start_axis + i] = bottom_shape[start_axis + i]
    if inferred:
        explicit = constant_count * count(bottom_shape, 0, start_axis) * \
            count(bottom_shape, end_axis)
        for i in copy_axes:
            explicit *= top[start_axis + i]
        top[start_axis + inferred[0]] = count(bottom_shape) // explicit
    assert count(top) == count(bottom_shape)
    return tuple(top)


# ---------------------------------------------------------------------------
# Softmax, loss, accuracy (softmax_layer.cpp, softmax_loss_layer.cpp,
# accuracy_layer.cpp)
# ---------------------------------------------------------------------------

def softmax(x, axis):
    axis = canonical_axis(axis, x.ndim)
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def _outer_inner(x, axis):
    axis = canonical_axis(axis, x.ndim)
    outer, inner = count(x.shape, 0, axis), count(x.shape, axis + 1)
    # (outer, classes, inner) view of the scores
    return axis, outer, inner, x.reshape(outer, x.shape[axis], inner)


def softmax_with_loss(x, label, layer):
    """SoftmaxWithLossLayer::Forward_cpu (top[0], the loss value)."""
    lp = layer.loss_param
    axis, outer, inner, _ = _outer_inner(x, layer.softmax_param.axis)
    prob = softmax(x, axis)
    prob = prob.reshape(outer, x.shape[axis], inner)
    labels = np.asarray(label).reshape(-1)
    assert labels.size == outer * inner
    has_ignore = lp.HasField('ignore_label')
    if not lp.HasField('normalization') and lp.HasField('normalize'):
        mode = caffe_pb2.LossParameter.VALID if lp.normalize \
            else caffe_pb2.LossParameter.BATCH_SIZE
    else:
        mode = lp.normalization
    loss = 0.0
    valid = 0
    for i in range(outer):
        for j in range(inner):
            value = int(labels[i * inner + j])   # static_cast<int>
            if has_ignore and value == lp.ignore_label:
                continue
            assert 0 <= value < x.shape[axis]
            loss -= math.log(max(prob[i, value, j], FLT_MIN))
            valid += 1
    modes = caffe_pb2.LossParameter
    if mode == modes.FULL:
        normalizer = outer * inner
    elif mode == modes.VALID:
        normalizer = valid
    elif mode == modes.BATCH_SIZE:
        normalizer = outer
    else:
        normalizer = 1
    return np.array(loss / max(1.0, normalizer))


def accuracy(x, label, p):
    """AccuracyLayer::Forward_cpu: a hit when fewer than top_k scores are
    >= the true class's (the true class itself excluded)."""
    axis, outer, inner, scores = _outer_inner(x, p.axis)
    labels = np.asarray(label).reshape(-1)
    num_labels = x.shape[axis]
    hits = 0
    n = 0
    for i in range(outer):
        for j in range(inner):
            value = int(labels[i * inner + j])
            if p.HasField('ignore_label') and value == p.ignore_label:
                continue
            true_score = scores[i, value, j]
            better = -1   # the true class also counts as "better"
            for k in range(num_labels):
                better += scores[i, k, j] >= true_score
            if better < p.top_k:
                hits += 1
            n += 1
    return np.array(0.0 if n == 0 else hits / n)


# ---------------------------------------------------------------------------
# One layer, a whole net
# ---------------------------------------------------------------------------

DATA_TYPES = {'Input', 'Data', 'MemoryData', 'ImageData', 'DummyData',
              'HDF5Data', 'WindowData'}


def run_layer(layer, blobs, bottoms, train=False, dropout_masks=None):
    """Tops of one V2 layer (float64 arrays).

    Args:
        layer: caffe_pb2.LayerParameter.
        blobs: The layer's weights (arrays).
        bottoms: Bottom arrays.
        train: Caffe's TRAIN phase (Dropout, BatchNorm default).
        dropout_masks: Layer name -> keep mask, for Dropout in TRAIN.
    """
    t = layer.type
    blobs = [np.asarray(b, dtype=np.float64) for b in blobs]
    xs = [np.asarray(b, dtype=np.float64) for b in bottoms]
    x = xs[0] if xs else None
    if t == 'Convolution':
        return [convolution(x, blobs[0], blobs[1] if len(blobs) > 1 else None,
                            layer.convolution_param)]
    if t == 'Deconvolution':
        return [deconvolution(x, blobs[0],
                              blobs[1] if len(blobs) > 1 else None,
                              layer.convolution_param)]
    if t == 'InnerProduct':
        return [inner_product(x, blobs[0],
                              blobs[1] if len(blobs) > 1 else None,
                              layer.inner_product_param)]
    if t == 'Pooling':
        return [pooling(x, layer.pooling_param)]
    if t == 'LRN':
        return [lrn(x, layer.lrn_param)]
    if t == 'BatchNorm':
        return [batch_norm(x, blobs, layer.batch_norm_param, train)]
    if t == 'Scale':
        p = layer.scale_param
        if len(xs) == 2:
            factor = xs[1]
            bias = blobs[0] if p.bias_term else None
        else:
            factor = blobs[0]
            bias = blobs[1] if p.bias_term else None
            assert factor.shape == param_blob_shape(x.shape, p.axis,
                                                    p.num_axes)
        return [scale(x, factor, bias, p)]
    if t == 'Bias':
        p = layer.bias_param
        if len(xs) == 2:
            b = xs[1]
        else:
            b = blobs[0]
            assert b.shape == param_blob_shape(x.shape, p.axis, p.num_axes)
        return [add_bias(x, b, p.axis)]
    if t == 'ReLU':
        return [relu(x, layer.relu_param.negative_slope)]
    if t == 'PReLU':
        return [prelu(x, blobs[0], layer.prelu_param.channel_shared)]
    if t == 'ELU':
        return [elu(x, layer.elu_param.alpha)]
    if t == 'Sigmoid':
        return [sigmoid(x)]
    if t == 'TanH':
        return [np.tanh(x)]
    if t == 'AbsVal':
        return [np.abs(x)]
    if t == 'BNLL':
        return [bnll(x)]
    if t == 'Power':
        p = layer.power_param
        return [power(x, p.power, p.scale, p.shift)]
    if t == 'Dropout':
        mask = (dropout_masks or {}).get(layer.name)
        return [dropout(x, layer.dropout_param.dropout_ratio, train, mask)]
    if t == 'Eltwise':
        return [eltwise(xs, layer.eltwise_param)]
    if t == 'Concat':
        return [concat(xs, layer.concat_param)]
    if t == 'Slice':
        return slice_(x, layer.slice_param, len(layer.top))
    if t == 'Split':
        return [x.copy() for _ in layer.top]
    if t == 'Crop':
        return [crop(x, xs[1].shape, layer.crop_param)]
    if t == 'Flatten':
        return [flatten(x, layer.flatten_param)]
    if t == 'Reshape':
        return [x.reshape(reshape_shape(x.shape, layer.reshape_param))]
    if t == 'Softmax':
        return [softmax(x, layer.softmax_param.axis)]
    if t == 'SoftmaxWithLoss':
        return [softmax_with_loss(x, bottoms[1], layer)]
    if t == 'Accuracy':
        return [accuracy(x, bottoms[1], layer.accuracy_param)]
    if t == 'Silence':
        return []
    ssd_tops = ssd_reference.run_layer(layer, blobs, xs)
    if ssd_tops is not None:
        return ssd_tops
    raise NotImplementedError('no reference for layer type {!r}'.format(t))


def _in_phase(layer, phase):
    # Net::FilterNet, for rules on the phase only.
    def matches(rule):
        return not rule.HasField('phase') or rule.phase == phase
    if layer.include:
        return any(matches(r) for r in layer.include)
    return not any(matches(r) for r in layer.exclude)


def forward_net(net, inputs, train=False, dropout_masks=None):
    """Runs a net description; returns every blob's final value (float64).

    Args:
        net: A ``NetWriter``, or a ``(layers, blobs_by_name)`` pair
            of V2 LayerParameters and weight arrays by layer name.
        inputs: Blob name -> array for the input blobs (labels included).
        train: Run in Caffe's TRAIN phase (layers filtered by phase too).
        dropout_masks: Layer name -> keep mask for Dropout in TRAIN.
    """
    if isinstance(net, tuple):
        layers, weights = net
        blobs_of = lambda name: weights.get(name, [])  # noqa: E731
    else:
        layers = net.layers
        blobs_of = net.blob_arrays   # materialized one layer at a time
    phase = caffe_pb2.TRAIN if train else caffe_pb2.TEST
    values = {name: np.asarray(v) for name, v in inputs.items()}
    for layer in layers:
        if not _in_phase(layer, phase) or layer.type in DATA_TYPES:
            continue
        if any(b not in values for b in layer.bottom):
            continue
        tops = run_layer(layer, blobs_of(layer.name),
                         [values[b] for b in layer.bottom], train,
                         dropout_masks)
        for name, value in zip(layer.top, tops):
            values[name] = value
    return values
