"""Chainer 7.8.1 on this stack (NumPy 1.26 or 2.x): behaviour and numbers.

Every test runs real Chainer code and checks its numbers against a
reference computed here with plain NumPy (naive loops on tiny inputs, in
float64), so the same file proves the same results under both NumPy
majors. ``tests/conftest.py`` imports ``chainer_finetune`` first.
"""

import io
import json
import sys
import warnings

import numpy
import pytest

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import backend
from chainer import iterators
from chainer import optimizer_hooks
from chainer import optimizers
from chainer import serializers
from chainer import training
from chainer.training import extensions

from chainer_finetune import _compat

NUMPY2 = int(numpy.__version__.split('.')[0]) >= 2

# float32 Chainer results against float64 references.
RTOL = 1e-5
ATOL = 1e-5


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    actual = numpy.asarray(getattr(actual, 'array', actual))
    expected = numpy.asarray(expected)
    assert actual.shape == expected.shape
    numpy.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(numpy.float32)


# ---------------------------------------------------------------- references

def conv2d_ref(x, W, b, stride, pad, groups=1):
    """Cross-correlation as Caffe/Chainer define it, with a naive loop."""
    x = x.astype(numpy.float64)
    W = W.astype(numpy.float64)
    n, c, h, w = x.shape
    oc, icg, kh, kw = W.shape
    sy, sx = stride
    ph, pw = pad
    xpad = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - kh) // sy + 1
    ow = (w + 2 * pw - kw) // sx + 1
    ocg = oc // groups
    y = numpy.zeros((n, oc, oh, ow))
    for o in range(oc):
        g = o // ocg
        for i in range(oh):
            for j in range(ow):
                patch = xpad[:, g * icg:(g + 1) * icg,
                             i * sy:i * sy + kh, j * sx:j * sx + kw]
                y[:, o, i, j] = (patch * W[o]).sum(axis=(1, 2, 3))
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv2d_grads_ref(x, W, gy, stride, pad, groups=1):
    """(gx, gW, gb) of sum(conv2d(x, W) * gy), with a naive loop."""
    x = x.astype(numpy.float64)
    W = W.astype(numpy.float64)
    n, c, h, w = x.shape
    oc, icg, kh, kw = W.shape
    sy, sx = stride
    ph, pw = pad
    xpad = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    gxpad = numpy.zeros_like(xpad)
    gW = numpy.zeros_like(W)
    ocg = oc // groups
    for o in range(oc):
        g = o // ocg
        cs = slice(g * icg, (g + 1) * icg)
        for i in range(gy.shape[2]):
            for j in range(gy.shape[3]):
                hs = slice(i * sy, i * sy + kh)
                ws = slice(j * sx, j * sx + kw)
                coef = gy[:, o, i, j][:, None, None, None]
                gW[o] += (xpad[:, cs, hs, ws] * coef).sum(axis=0)
                gxpad[:, cs, hs, ws] += coef * W[o]
    gx = gxpad[:, :, ph:ph + h, pw:pw + w]
    gb = gy.sum(axis=(0, 2, 3))
    return gx, gW, gb


def deconv2d_ref(x, W, b, stride, pad):
    """Transposed convolution: scatter every input pixel times W."""
    x = x.astype(numpy.float64)
    W = W.astype(numpy.float64)
    n, c, h, w = x.shape
    _, oc, kh, kw = W.shape
    sy, sx = stride
    ph, pw = pad
    full = numpy.zeros((n, oc, sy * (h - 1) + kh, sx * (w - 1) + kw))
    for i in range(h):
        for j in range(w):
            full[:, :, i * sy:i * sy + kh, j * sx:j * sx + kw] += (
                numpy.einsum('nc,cokl->nokl', x[:, :, i, j], W))
    y = full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]
    if b is not None:
        y = y + b[None, :, None, None]
    return y


def pool2d_ref(x, k, s, p, cover_all, mode):
    """Max pooling (padding never wins) or average pooling (zero padding
    counted in the k*k divisor, as Chainer's average_pooling_2d does)."""
    x = x.astype(numpy.float64)
    n, c, h, w = x.shape
    extra = s - 1 if cover_all else 0
    oh = (h + 2 * p - k + extra) // s + 1
    ow = (w + 2 * p - k + extra) // s + 1
    y = numpy.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * s - p, j * s - p
            win = x[:, :, max(h0, 0):min(h0 + k, h),
                    max(w0, 0):min(w0 + k, w)]
            if mode == 'max':
                y[:, :, i, j] = win.max(axis=(2, 3))
            else:
                y[:, :, i, j] = win.sum(axis=(2, 3)) / (k * k)
    return y


def lrn_ref(x, n, k, alpha, beta):
    """Across-channel LRN as Chainer defines it (alpha not divided by n)."""
    x = x.astype(numpy.float64)
    y = numpy.empty_like(x)
    channels = x.shape[1]
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels, c + n // 2 + 1)
        s = (x[:, lo:hi] ** 2).sum(axis=1)
        y[:, c] = x[:, c] / (k + alpha * s) ** beta
    return y


def log_softmax_ref(z):
    z = z.astype(numpy.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - numpy.log(numpy.exp(z - m).sum(axis=1, keepdims=True))


def interp_matrix_ref(out_size, in_size, mode, align_corners):
    """R with resized = R @ signal along one axis (bilinear or nearest)."""
    R = numpy.zeros((out_size, in_size))
    for o in range(out_size):
        if mode == 'nearest':
            R[o, min(int(numpy.floor(o * in_size / out_size)),
                     in_size - 1)] = 1.0
            continue
        if align_corners:
            src = (o * (in_size - 1) / (out_size - 1)
                   if out_size > 1 else 0.0)
        else:
            src = max((o + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = int(numpy.floor(src))
        frac = src - i0
        i1 = min(i0 + 1, in_size - 1)
        R[o, i0] += 1.0 - frac
        R[o, i1] += frac
    return R


# ------------------------------------------------------------------- links

@pytest.mark.parametrize('ksize, stride, pad, groups', [
    (3, 1, 0, 1),
    (3, 2, 1, 1),
    ((3, 2), (2, 1), (1, 0), 1),
    (3, 1, 1, 2),   # AlexNet/CaffeNet conv2/4/5 use group: 2
    (1, 1, 0, 2),
])
def test_convolution_2d_forward_backward(seeded, ksize, stride, pad, groups):
    rng = seeded
    x = f32(rng, 2, 4, 7, 6)
    conv = L.Convolution2D(4, 6, ksize, stride=stride, pad=pad,
                           groups=groups)
    kh, kw = (ksize, ksize) if isinstance(ksize, int) else ksize
    assert conv.W.shape == (6, 4 // groups, kh, kw)
    conv.b.array[...] = f32(rng, 6)
    pair = (lambda v: (v, v) if isinstance(v, int) else v)
    xv = chainer.Variable(x)
    y = conv(xv)
    expected = conv2d_ref(x, conv.W.array, conv.b.array, pair(stride),
                          pair(pad), groups)
    assert_close(y, expected)

    gy = f32(rng, *y.shape)
    y.grad = gy
    conv.cleargrads()  # Chainer fills fresh parameter grads with NaN
    y.backward()
    gx, gW, gb = conv2d_grads_ref(x, conv.W.array, gy, pair(stride),
                                  pair(pad), groups)
    assert_close(xv.grad, gx, atol=1e-4)
    assert_close(conv.W.grad, gW, atol=1e-4)
    assert_close(conv.b.grad, gb, atol=1e-4)


def test_convolution_2d_group_blocks_are_independent(seeded):
    # With groups=2, output channels of group 0 must not see input channels
    # of group 1: perturbing them leaves the first half unchanged.
    rng = seeded
    conv = L.Convolution2D(4, 4, 3, pad=1, groups=2, nobias=True)
    x = f32(rng, 1, 4, 5, 5)
    y0 = conv(x).array
    x2 = x.copy()
    x2[:, 2:] += 10.0
    y1 = conv(x2).array
    numpy.testing.assert_array_equal(y0[:, :2], y1[:, :2])
    assert numpy.abs(y0[:, 2:] - y1[:, 2:]).max() > 1.0


@pytest.mark.parametrize('stride, pad', [(1, 0), (2, 0), (2, 1), (3, 1)])
def test_deconvolution_2d(seeded, stride, pad):
    rng = seeded
    x = f32(rng, 2, 3, 4, 5)
    deconv = L.Deconvolution2D(3, 2, 4, stride=stride, pad=pad)
    deconv.b.array[...] = f32(rng, 2)
    assert deconv.W.shape == (3, 2, 4, 4)
    y = deconv(x)
    assert y.shape == (2, 2, stride * 3 + 4 - 2 * pad,
                       stride * 4 + 4 - 2 * pad)
    expected = deconv2d_ref(x, deconv.W.array, deconv.b.array,
                            (stride, stride), (pad, pad))
    assert_close(y, expected)


def test_linear_forward_backward_and_lazy_init(seeded):
    rng = seeded
    x = f32(rng, 5, 2, 3)  # Linear flattens all but the batch axis
    lin = L.Linear(None, 4)
    xv = chainer.Variable(x)
    y = lin(xv)
    assert lin.W.shape == (4, 6)
    W = lin.W.array.astype(numpy.float64)
    b = lin.b.array.astype(numpy.float64)
    assert_close(y, x.reshape(5, 6) @ W.T + b)
    gy = f32(rng, 5, 4)
    y.grad = gy
    lin.cleargrads()
    y.backward()
    assert_close(lin.W.grad, gy.T.astype(numpy.float64) @ x.reshape(5, 6))
    assert_close(lin.b.grad, gy.sum(axis=0))
    assert_close(xv.grad, (gy @ W).reshape(5, 2, 3))


def test_batch_normalization_train_and_test_mode(seeded):
    rng = seeded
    decay, eps = 0.8, 2e-5
    bn = L.BatchNormalization(3, decay=decay, eps=eps)
    gamma = rng.uniform(0.5, 1.5, 3).astype(numpy.float32)
    beta = f32(rng, 3)
    bn.gamma.array[...] = gamma
    bn.beta.array[...] = beta
    numpy.testing.assert_array_equal(bn.avg_mean, numpy.zeros(3))
    numpy.testing.assert_array_equal(bn.avg_var, numpy.ones(3))

    avg_mean = numpy.zeros(3)
    avg_var = numpy.ones(3)
    for step in range(3):
        x = (f32(rng, 8, 3, 2, 2) * (step + 1) + step).astype(numpy.float32)
        x64 = x.astype(numpy.float64)
        y = bn(x)  # train mode (conftest): batch statistics
        mean = x64.mean(axis=(0, 2, 3))
        var = x64.var(axis=(0, 2, 3))  # biased, used for normalising
        sh = (1, 3, 1, 1)
        expected = (gamma.reshape(sh) * (x64 - mean.reshape(sh))
                    / numpy.sqrt(var.reshape(sh) + eps) + beta.reshape(sh))
        assert_close(y, expected)
        m = x.size // 3
        avg_mean = decay * avg_mean + (1 - decay) * mean
        avg_var = decay * avg_var + (1 - decay) * var * m / (m - 1)
        assert_close(bn.avg_mean, avg_mean)
        assert_close(bn.avg_var, avg_var)

    x = f32(rng, 4, 3, 2, 2)
    with chainer.using_config('train', False):
        y = bn(x)
    sh = (1, 3, 1, 1)
    expected = (gamma.reshape(sh) * (x - avg_mean.reshape(sh))
                / numpy.sqrt(avg_var.reshape(sh) + eps) + beta.reshape(sh))
    assert_close(y, expected)
    # Test mode does not touch the running statistics.
    assert_close(bn.avg_mean, avg_mean)
    assert_close(bn.avg_var, avg_var)
    assert bn.N == 0  # counts batches only in finetune mode


def test_batch_normalization_finetune_mode_cumulative_average(seeded):
    # bn(x, finetune=True): decay = 1 - 1/N, i.e. the running stats become
    # the plain average of the batch statistics seen so far.
    rng = seeded
    bn = L.BatchNormalization(2, decay=0.5)
    means, variances = [], []
    for step in range(4):
        x = (f32(rng, 5, 2, 3) + step).astype(numpy.float32)
        bn(x, finetune=True)
        x64 = x.astype(numpy.float64)
        means.append(x64.mean(axis=(0, 2)))
        variances.append(x64.var(axis=(0, 2), ddof=1))
        assert bn.N == step + 1
    assert_close(bn.avg_mean, numpy.mean(means, axis=0))
    assert_close(bn.avg_var, numpy.mean(variances, axis=0))


def test_batch_normalization_backward(seeded):
    rng = seeded
    bn = L.BatchNormalization(2)
    x = f32(rng, 6, 2, 2, 2)
    xv = chainer.Variable(x)
    y = bn(xv)
    gy = f32(rng, *x.shape)
    y.grad = gy
    bn.cleargrads()
    y.backward()
    # Closed form of the batch-norm gradient (gamma=1, beta=0).
    x64, g64 = x.astype(numpy.float64), gy.astype(numpy.float64)
    axes = (0, 2, 3)
    m = x.size // 2
    mean = x64.mean(axis=axes, keepdims=True)
    inv_std = 1 / numpy.sqrt(x64.var(axis=axes, keepdims=True) + 2e-5)
    xhat = (x64 - mean) * inv_std
    gx = inv_std / m * (m * g64 - g64.sum(axis=axes, keepdims=True)
                        - xhat * (g64 * xhat).sum(axis=axes, keepdims=True))
    assert_close(xv.grad, gx, atol=1e-4)
    assert_close(bn.gamma.grad, (g64 * xhat).sum(axis=axes), atol=1e-4)
    assert_close(bn.beta.grad, g64.sum(axis=axes), atol=1e-4)


# ---------------------------------------------------------------- functions

@pytest.mark.parametrize('k, s, p', [(2, 2, 0), (3, 2, 0), (3, 2, 1),
                                     (3, 3, 1), (2, 1, 0)])
@pytest.mark.parametrize('cover_all', [True, False])
def test_max_pooling_2d(seeded, k, s, p, cover_all):
    x = f32(seeded, 2, 3, 7, 6)
    y = F.max_pooling_2d(x, k, s, p, cover_all=cover_all)
    assert_close(y, pool2d_ref(x, k, s, p, cover_all, 'max'), atol=0)


def test_max_pooling_2d_cover_all_changes_shape_like_caffe_ceil():
    # Caffe's pooling rounds the output size up; cover_all=True is that.
    x = numpy.arange(2 * 7 * 7, dtype=numpy.float32).reshape(1, 2, 7, 7)
    assert F.max_pooling_2d(x, 3, 2, cover_all=True).shape == (1, 2, 3, 3)
    assert F.max_pooling_2d(x, 2, 2, cover_all=True).shape == (1, 2, 4, 4)
    assert F.max_pooling_2d(x, 2, 2, cover_all=False).shape == (1, 2, 3, 3)
    y = F.max_pooling_2d(x, 2, 2, cover_all=True).array
    # The extra last column/row holds the last input column/row.
    numpy.testing.assert_array_equal(y[0, 0, :, 3], x[0, 0, [1, 3, 5, 6], 6])


def test_max_pooling_2d_backward_routes_to_argmax(seeded):
    x = f32(seeded, 1, 2, 4, 4)
    xv = chainer.Variable(x)
    y = F.max_pooling_2d(xv, 2, 2)
    gy = numpy.arange(1, 9, dtype=numpy.float32).reshape(1, 2, 2, 2)
    y.grad = gy
    y.backward()
    expected = numpy.zeros_like(x)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                win = x[0, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                a, b = numpy.unravel_index(win.argmax(), win.shape)
                expected[0, c, 2 * i + a, 2 * j + b] = gy[0, c, i, j]
    numpy.testing.assert_array_equal(xv.grad, expected)


@pytest.mark.parametrize('k, s, p', [(2, 2, 0), (3, 2, 0), (3, 2, 1),
                                     (3, 1, 1)])
def test_average_pooling_2d(seeded, k, s, p):
    # Chainer 7.8.1's average_pooling_2d always floors the output size
    # (cover_all=False) and counts zero padding in the divisor.
    x = f32(seeded, 2, 3, 7, 6)
    y = F.average_pooling_2d(x, k, s, p)
    assert_close(y, pool2d_ref(x, k, s, p, False, 'avg'))


def test_average_pooling_2d_has_no_cover_all():
    x = numpy.ones((1, 1, 7, 7), dtype=numpy.float32)
    assert F.average_pooling_2d(x, 3, 2).shape == (1, 1, 3, 3)
    with pytest.raises(TypeError):
        F.average_pooling_2d(x, 3, 2, cover_all=True)


@pytest.mark.parametrize('n, k, alpha, beta', [(5, 2, 1e-4, 0.75),
                                               (3, 1, 0.5, 0.75),
                                               (5, 1, 2e-2, 0.5)])
def test_local_response_normalization(seeded, n, k, alpha, beta):
    x = (f32(seeded, 2, 7, 3, 3) * 3).astype(numpy.float32)
    y = F.local_response_normalization(x, n, k, alpha, beta)
    assert_close(y, lrn_ref(x, n, k, alpha, beta))


def test_local_response_normalization_backward(seeded):
    x = f32(seeded, 1, 4, 2, 2)
    xv = chainer.Variable(x)
    n, k, alpha, beta = 3, 1.0, 0.3, 0.75
    y = F.local_response_normalization(xv, n, k, alpha, beta)
    y.grad = numpy.ones_like(x)
    y.backward()
    # Central differences of the float64 reference.
    eps = 1e-6
    num = numpy.zeros(x.shape)
    x64 = x.astype(numpy.float64)
    for idx in numpy.ndindex(*x.shape):
        xp, xm = x64.copy(), x64.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num[idx] = (lrn_ref(xp, n, k, alpha, beta).sum()
                    - lrn_ref(xm, n, k, alpha, beta).sum()) / (2 * eps)
    assert_close(xv.grad, num, atol=1e-4)


def test_dropout_test_mode_is_identity(seeded):
    x = f32(seeded, 4, 5)
    with chainer.using_config('train', False):
        y = F.dropout(x, 0.5)
    numpy.testing.assert_array_equal(y.array, x)


@pytest.mark.parametrize('ratio', [0.5, 0.3])
def test_dropout_train_mode_statistics_and_scale(seeded, ratio):
    x = numpy.full((200, 500), 2.0, dtype=numpy.float32)
    xv = chainer.Variable(x)
    y = F.dropout(xv, ratio)
    dropped = y.array == 0
    assert abs(dropped.mean() - ratio) < 0.01  # ~7 sigma for 1e5 draws
    kept = y.array[~dropped]
    numpy.testing.assert_allclose(kept, 2.0 / (1 - ratio), rtol=1e-6)
    assert y.dtype == numpy.float32
    y.grad = numpy.ones_like(x)
    y.backward()
    # The gradient goes through the same mask.
    numpy.testing.assert_array_equal(xv.grad == 0, dropped)
    numpy.testing.assert_allclose(xv.grad[~dropped], 1 / (1 - ratio),
                                  rtol=1e-6)


def test_dropout_is_reproducible_with_numpy_seed():
    x = numpy.ones((10, 10), dtype=numpy.float32)
    numpy.random.seed(7)
    a = F.dropout(x, 0.5).array
    numpy.random.seed(7)
    b = F.dropout(x, 0.5).array
    numpy.testing.assert_array_equal(a, b)


def test_concat_forward_backward(seeded):
    rng = seeded
    a, b = f32(rng, 2, 3, 2), f32(rng, 2, 1, 2)
    av, bv = chainer.Variable(a), chainer.Variable(b)
    y = F.concat((av, bv), axis=1)
    numpy.testing.assert_array_equal(y.array, numpy.concatenate([a, b], 1))
    gy = f32(rng, 2, 4, 2)
    y.grad = gy
    y.backward()
    numpy.testing.assert_array_equal(av.grad, gy[:, :3])
    numpy.testing.assert_array_equal(bv.grad, gy[:, 3:])
    assert F.concat((a, a), axis=0).shape == (4, 3, 2)


def test_softmax_cross_entropy_and_accuracy(seeded):
    rng = seeded
    z = (f32(rng, 6, 4) * 3).astype(numpy.float32)
    t = numpy.array([0, 3, 1, 1, 2, 0], dtype=numpy.int32)
    zv = chainer.Variable(z)
    loss = F.softmax_cross_entropy(zv, t)
    logp = log_softmax_ref(z)
    expected = -logp[numpy.arange(6), t].mean()
    assert loss.shape == ()
    assert_close(loss, expected)
    loss.backward()
    onehot = numpy.eye(4)[t]
    assert_close(zv.grad, (numpy.exp(logp) - onehot) / 6)

    # ignore_label=-1 entries count neither in the sum nor the mean.
    t2 = t.copy()
    t2[[1, 4]] = -1
    keep = t2 != -1
    loss2 = F.softmax_cross_entropy(z, t2)
    assert_close(loss2, -logp[numpy.arange(6)[keep], t2[keep]].mean())
    per_sample = F.softmax_cross_entropy(z, t2, reduce='no')
    assert_close(per_sample, numpy.where(
        keep, -logp[numpy.arange(6), numpy.maximum(t2, 0)], 0.0))

    pred = z.argmax(axis=1)
    acc = F.accuracy(z, t)
    assert acc.dtype == numpy.float32
    assert_close(acc, (pred == t).mean(), atol=1e-7)
    acc2 = F.accuracy(z, t2, ignore_label=-1)
    assert_close(acc2, (pred[keep] == t2[keep]).mean(), atol=1e-7)
    perfect = numpy.eye(4, dtype=numpy.float32)[t]
    assert float(F.accuracy(perfect, t).array) == 1.0


# -------------------------------------------------------- optimizers, hooks

class _Params(chainer.Link):
    """A link holding given arrays as parameters w0, w1, ..."""

    def __init__(self, *arrays):
        super().__init__()
        with self.init_scope():
            for i, a in enumerate(arrays):
                setattr(self, 'w%d' % i, chainer.Parameter(a.copy()))


def _set_grads(link, grads):
    for i, g in enumerate(grads):
        getattr(link, 'w%d' % i).grad = g.copy()


def test_sgd_step(seeded):
    rng = seeded
    p, g = f32(rng, 3, 2), f32(rng, 3, 2)
    link = _Params(p)
    opt = optimizers.SGD(lr=0.1)
    opt.setup(link)
    _set_grads(link, [g])
    opt.update()
    assert opt.t == 1
    assert_close(link.w0.array, p - 0.1 * g.astype(numpy.float64))


def test_momentum_sgd_steps(seeded):
    rng = seeded
    p = f32(rng, 4)
    link = _Params(p)
    opt = optimizers.MomentumSGD(lr=0.05, momentum=0.9)
    opt.setup(link)
    ref_p, ref_v = p.astype(numpy.float64), numpy.zeros(4)
    for _ in range(3):
        g = f32(rng, 4)
        _set_grads(link, [g])
        opt.update()
        ref_v = 0.9 * ref_v - 0.05 * g
        ref_p = ref_p + ref_v
        assert_close(link.w0.array, ref_p)
        assert_close(link.w0.update_rule.state['v'], ref_v)


def test_adam_steps(seeded):
    rng = seeded
    p = f32(rng, 5)
    link = _Params(p)
    alpha, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    opt = optimizers.Adam(alpha=alpha, beta1=b1, beta2=b2, eps=eps)
    opt.setup(link)
    ref_p, m, v = p.astype(numpy.float64), numpy.zeros(5), numpy.zeros(5)
    for t in range(1, 4):
        g = f32(rng, 5).astype(numpy.float64)
        _set_grads(link, [g.astype(numpy.float32)])
        opt.update()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        alpha_t = alpha * numpy.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        ref_p = ref_p - alpha_t * m / (numpy.sqrt(v) + eps)
        assert_close(opt.alpha_t, alpha_t, rtol=1e-12, atol=0)
        assert_close(link.w0.array, ref_p, rtol=1e-6, atol=1e-6)
    # First Adam step moves every weight by ~alpha (sign of the gradient).
    link2 = _Params(p)
    opt2 = optimizers.Adam(alpha=alpha)
    opt2.setup(link2)
    g = f32(rng, 5)
    _set_grads(link2, [g])
    opt2.update()
    assert_close(link2.w0.array - p, -alpha * numpy.sign(g), atol=1e-6)


def test_weight_decay_hook(seeded):
    rng = seeded
    p, g = f32(rng, 3, 3), f32(rng, 3, 3)
    link = _Params(p)
    opt = optimizers.SGD(lr=0.1)
    opt.setup(link)
    opt.add_hook(optimizer_hooks.WeightDecay(0.01))
    _set_grads(link, [g])
    opt.update()
    p64 = p.astype(numpy.float64)
    assert_close(link.w0.array, p64 - 0.1 * (g + 0.01 * p64), atol=1e-6)


@pytest.mark.parametrize('threshold', [0.5, 100.0])
def test_gradient_clipping_hook(seeded, threshold):
    rng = seeded
    p0, p1 = f32(rng, 3), f32(rng, 2, 2)
    g0, g1 = f32(rng, 3), f32(rng, 2, 2)
    link = _Params(p0, p1)
    opt = optimizers.SGD(lr=1.0)
    opt.setup(link)
    opt.add_hook(optimizer_hooks.GradientClipping(threshold))
    _set_grads(link, [g0, g1])
    opt.update()
    g0_64, g1_64 = g0.astype(numpy.float64), g1.astype(numpy.float64)
    norm = numpy.sqrt((g0_64 ** 2).sum() + (g1_64 ** 2).sum())
    assert norm > 0.5 and norm < 100.0  # both branches are exercised
    scale = min(1.0, threshold / norm)
    assert_close(link.w0.array, p0 - scale * g0_64, atol=1e-6)
    assert_close(link.w1.array, p1 - scale * g1_64, atol=1e-6)
    if scale < 1:
        new_norm = numpy.sqrt((link.w0.grad.astype(numpy.float64) ** 2).sum()
                              + (link.w1.grad.astype(numpy.float64) ** 2)
                              .sum())
        assert new_norm == pytest.approx(threshold, rel=1e-5)


# -------------------------------------------------------------- serializers

class _Net(chainer.Chain):

    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(2, 3, 3, pad=1)
            self.bn = L.BatchNormalization(3)
            self.fc = L.Linear(None, 4)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        h = F.max_pooling_2d(h, 2)
        return self.fc(h)


def _trained_net_and_optimizer(rng):
    numpy.random.seed(3)
    net = _Net()
    opt = optimizers.MomentumSGD(lr=0.01)
    opt.setup(net)
    x = f32(rng, 4, 2, 4, 4)
    t = numpy.array([0, 1, 2, 3], dtype=numpy.int32)
    for _ in range(2):
        opt.update(lambda: F.softmax_cross_entropy(net(x), t))
    return net, opt, x


def _assert_same_state(net_a, opt_a, net_b, opt_b, x):
    names_a = dict(net_a.namedparams())
    names_b = dict(net_b.namedparams())
    assert sorted(names_a) == sorted(names_b)
    for name, param in names_a.items():
        numpy.testing.assert_array_equal(names_b[name].array, param.array)
        numpy.testing.assert_array_equal(names_b[name].update_rule.state['v'],
                                         param.update_rule.state['v'])
    numpy.testing.assert_array_equal(net_b.bn.avg_mean, net_a.bn.avg_mean)
    numpy.testing.assert_array_equal(net_b.bn.avg_var, net_a.bn.avg_var)
    assert net_b.bn.N == net_a.bn.N
    assert opt_b.t == opt_a.t
    assert opt_b.epoch == opt_a.epoch
    with chainer.using_config('train', False):
        numpy.testing.assert_array_equal(net_b(x).array, net_a(x).array)


@pytest.mark.parametrize('fmt', ['npz', 'npz-uncompressed', 'hdf5'])
def test_serializer_round_trip(seeded, tmp_path, fmt):
    net, opt, x = _trained_net_and_optimizer(seeded)
    assert opt.t == 2
    numpy.random.seed(99)  # a fresh net with different initial weights
    net2 = _Net()
    net2(x)  # materialise the lazily-initialised Linear
    opt2 = optimizers.MomentumSGD(lr=0.01)
    opt2.setup(net2)
    net2.cleargrads()
    opt2.update(lambda: F.sum(net2(x)))  # create optimizer state to load into
    assert not numpy.array_equal(net2.conv.W.array, net.conv.W.array)

    if fmt == 'hdf5':
        save, load, ext = serializers.save_hdf5, serializers.load_hdf5, 'h5'
        kwargs = {}
    else:
        save, load, ext = serializers.save_npz, serializers.load_npz, 'npz'
        kwargs = {'compression': fmt == 'npz'}
    model_file = tmp_path / ('model.' + ext)
    opt_file = tmp_path / ('optimizer.' + ext)
    save(str(model_file), net, **kwargs)
    save(str(opt_file), opt, **kwargs)
    assert model_file.stat().st_size > 0
    load(str(model_file), net2)
    load(str(opt_file), opt2)
    _assert_same_state(net, opt, net2, opt2, x)


def test_npz_file_layout(seeded, tmp_path):
    net, _, _ = _trained_net_and_optimizer(seeded)
    path = tmp_path / 'model.npz'
    serializers.save_npz(str(path), net)
    with numpy.load(str(path)) as data:
        keys = set(data.files)
        numpy.testing.assert_array_equal(data['conv/W'], net.conv.W.array)
        numpy.testing.assert_array_equal(data['bn/avg_var'], net.bn.avg_var)
    assert {'conv/W', 'conv/b', 'bn/gamma', 'bn/beta', 'bn/avg_mean',
            'bn/avg_var', 'bn/N', 'fc/W', 'fc/b'} <= keys


# ------------------------------------------------------------------ trainer

def _blobs(rng, n):
    centers = numpy.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    t = rng.randint(0, 3, size=n).astype(numpy.int32)
    x = (centers[t] + 0.5 * rng.standard_normal((n, 2))).astype(
        numpy.float32)
    return chainer.datasets.TupleDataset(x, t)


def test_trainer_short_run(seeded, tmp_path, capsys):
    rng = seeded
    train, valid = _blobs(rng, 96), _blobs(rng, 48)

    class MLP(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.l1 = L.Linear(2, 16)
                self.l2 = L.Linear(16, 3)

        def forward(self, x):
            return self.l2(F.relu(self.l1(x)))

    model = L.Classifier(MLP())
    opt = optimizers.MomentumSGD(lr=0.05)
    opt.setup(model)
    train_iter = iterators.SerialIterator(train, 16, shuffle=False)
    valid_iter = iterators.SerialIterator(valid, 16, repeat=False,
                                          shuffle=False)
    updater = training.updaters.StandardUpdater(train_iter, opt,
                                                device='@numpy')
    epochs = 5
    trainer = training.Trainer(updater, (epochs, 'epoch'), out=str(tmp_path))
    trainer.extend(extensions.Evaluator(valid_iter, model, device='@numpy'))
    trainer.extend(extensions.LogReport(trigger=(1, 'epoch'),
                                        filename='log'))
    # Chainer 7.8.1's training ProgressBar ignores its `out` argument and
    # always writes to sys.stdout (captured by capsys).
    trainer.extend(extensions.ProgressBar(update_interval=2,
                                          out=io.StringIO()))
    trainer.run()

    assert updater.iteration == epochs * 96 // 16
    with open(str(tmp_path / 'log')) as f:
        log = json.load(f)
    assert [e['epoch'] for e in log] == list(range(1, epochs + 1))
    assert [e['iteration'] for e in log] == [6 * i for i in
                                             range(1, epochs + 1)]
    for entry in log:
        for key in ('main/loss', 'main/accuracy', 'validation/main/loss',
                    'validation/main/accuracy', 'elapsed_time'):
            assert isinstance(entry[key], float), (key, entry)
    losses = [e['main/loss'] for e in log]
    assert losses[-1] < 0.5 * losses[0]
    assert log[-1]['validation/main/loss'] < log[0]['validation/main/loss']
    assert log[-1]['validation/main/accuracy'] > 0.9
    assert 0 <= log[-1]['main/accuracy'] <= 1

    # The logged validation loss is the model's mean loss on valid.
    xs, ts = chainer.dataset.concat_examples(valid)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        loss = float(model(xs, ts).array)
    assert log[-1]['validation/main/loss'] == pytest.approx(loss, rel=1e-5)

    out = capsys.readouterr().out
    assert 'total [' in out and 'this epoch [' in out
    assert '100.00%' in out
    assert '30 iter, 5 epoch / 5 epochs' in out


# ------------------------------------------------------ backend / devices

def test_cpu_device_code_path(seeded):
    device = chainer.get_device('@numpy')
    assert isinstance(device, chainer.backend.CpuDevice)
    assert device == backend.CpuDevice()
    assert device.xp is numpy
    x = device.send(numpy.arange(6, dtype=numpy.float32).reshape(2, 3))
    assert isinstance(x, numpy.ndarray)
    assert backend.get_array_module(x) is numpy
    assert backend.get_array_module(chainer.Variable(x)) is numpy
    assert backend.get_device_from_array(x) == device
    sent = device.send([x, x])
    assert isinstance(sent, list) and all(a is x for a in sent)
    # CuPy-style generic code: xp from the array, then compute with it.
    xp = backend.get_array_module(x)
    assert_close(xp.maximum(x - 2, 0), numpy.maximum(x - 2, 0))

    link = L.Linear(3, 2)
    ret = link.to_device(device)
    assert ret is link
    assert link.device == device
    assert link.xp is numpy
    assert isinstance(link.W.array, numpy.ndarray)
    y = link(x)
    assert backend.get_array_module(y) is numpy
    assert_close(y, x.astype(numpy.float64) @ link.W.array.T + link.b.array)
    with chainer.using_device(device):
        z = device.xp.zeros(3)
    assert isinstance(z, numpy.ndarray)


def test_link_to_device_by_name():
    link = L.Linear(2, 2)
    link.to_device('@numpy')
    assert str(link.device) == '@numpy'
    assert link.device == chainer.get_device(-1)  # legacy CPU spec


# ---------------------------------------------------- the patched spots

def test_as_strided_forward_backward():
    x = numpy.arange(8, dtype=numpy.float32)
    xv = chainer.Variable(x)
    shape, strides, offset = (3, 3), (2, 1), 1  # overlapping windows
    y = F.as_strided(xv, shape, strides, offset)
    index = numpy.lib.stride_tricks.as_strided(
        numpy.arange(offset, 8, dtype=numpy.int64), shape,
        tuple(s * 8 for s in strides))
    numpy.testing.assert_array_equal(y.array, x[index])
    gy = numpy.arange(9, dtype=numpy.float32).reshape(shape) + 1
    y.grad = gy
    y.backward()  # AsStridedGrad.forward reads numpy.sctypes['float']
    expected = numpy.zeros(8)
    numpy.add.at(expected, index, gy)
    numpy.testing.assert_array_equal(xv.grad, expected)


@pytest.mark.parametrize('dtype', [numpy.float16, numpy.float64])
def test_as_strided_backward_other_float_dtypes(dtype):
    xv = chainer.Variable(numpy.arange(4, dtype=dtype))
    y = F.as_strided(xv, (3, 2), (1, 1), 0)
    y.grad = numpy.ones((3, 2), dtype=dtype)
    y.backward()
    assert xv.grad.dtype == dtype
    numpy.testing.assert_array_equal(xv.grad, [1, 2, 2, 1])


@pytest.mark.parametrize('mode, align_corners, out_size', [
    ('bilinear', True, (5, 7)),
    ('bilinear', False, (5, 7)),
    ('bilinear', True, (2, 3)),   # downscale
    ('nearest', False, (6, 5)),
])
def test_resize_images_forward_backward(seeded, mode, align_corners,
                                        out_size):
    rng = seeded
    x = f32(rng, 2, 3, 3, 4)
    xv = chainer.Variable(x)
    y = F.resize_images(xv, out_size, mode=mode, align_corners=align_corners)
    Ry = interp_matrix_ref(out_size[0], 3, mode, align_corners)
    Rx = interp_matrix_ref(out_size[1], 4, mode, align_corners)
    assert_close(y, numpy.einsum('oh,nchw,pw->ncop', Ry, x, Rx))
    gy = f32(rng, *y.shape)
    y.grad = gy
    y.backward()
    assert_close(xv.grad, numpy.einsum('oh,ncop,pw->nchw', Ry, gy, Rx))


def test_resize_images_identity_size(seeded):
    x = f32(seeded, 1, 2, 4, 5)
    numpy.testing.assert_allclose(F.resize_images(x, (4, 5)).array, x,
                                  rtol=0, atol=1e-6)


@pytest.mark.parametrize('batch_shape', [(4,), (2, 3)])
def test_categorical_log_prob(seeded, batch_shape):
    rng = seeded
    k = 5
    logits = f32(rng, *(batch_shape + (k,)))
    p = numpy.exp(log_softmax_ref(logits.reshape(-1, k))).reshape(
        logits.shape).astype(numpy.float32)
    dist = chainer.distributions.Categorical(p=p)
    assert dist.batch_shape == batch_shape
    x = rng.randint(0, k, size=batch_shape).astype(numpy.int32)
    idx = numpy.indices(batch_shape)
    expected = numpy.log(p.astype(numpy.float64))[tuple(idx) + (x,)]
    assert_close(dist.log_prob(x), expected)
    assert_close(dist.log_prob(chainer.Variable(x)), expected)
    assert_close(F.exp(dist.log_prob(x)), numpy.exp(expected))


def test_numpy_sctypes_does_not_leak():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        has_sctypes = hasattr(numpy, 'sctypes')
    if NUMPY2:
        assert not has_sctypes
        assert 'sctypes' not in vars(numpy)
        # numpy.meshgrid keeps NumPy 2's tuple result for other code.
        assert isinstance(numpy.meshgrid([0], [1]), tuple)
    else:
        assert has_sctypes  # NumPy 1.x's own, untouched
        assert numpy.sctypes['float'][0] is numpy.float16
        assert isinstance(numpy.meshgrid([0], [1]), list)


def test_compat_patches_match_numpy_major():
    sctypes = 'numpy.sctypes for chainer.functions.array.as_strided'
    meshgrid = ('list-returning numpy.meshgrid for '
                'chainer.distributions.categorical')
    assert (sctypes in _compat.APPLIED) == NUMPY2
    assert (meshgrid in _compat.APPLIED) == NUMPY2
    # numpy.float went away in NumPy 1.24, so that patch is applied on both.
    assert ('numpy.float for chainer.functions.array.resize_images'
            in _compat.APPLIED)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert not hasattr(numpy, 'float')


def _blob(pb, array):
    blob = pb.BlobProto()
    blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())
    return blob


def test_caffe_function_runs_a_tiny_caffemodel(seeded, tmp_path):
    # conv (group 2, pad 1) -> ReLU -> LRN -> max pool (Caffe rounds up)
    # -> InnerProduct -> Softmax, written with protobuf and loaded by
    # Chainer's CaffeFunction, against the NumPy references above.
    from chainer.links.caffe import CaffeFunction
    from chainer_finetune.caffe import caffe_pb2 as pb
    rng = seeded
    W = f32(rng, 4, 2, 3, 3)   # 4 outputs, 4 inputs in 2 groups
    b = f32(rng, 4)
    fcW = f32(rng, 3, 4 * 3 * 3)
    fcb = f32(rng, 3)
    net = pb.NetParameter(name='tiny')
    conv = net.layer.add(name='conv1', type='Convolution', bottom=['data'],
                         top=['conv1'])
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    conv.convolution_param.pad.append(1)
    conv.convolution_param.group = 2
    conv.blobs.extend([_blob(pb, W), _blob(pb, b)])
    net.layer.add(name='relu1', type='ReLU', bottom=['conv1'],
                  top=['conv1'])
    lrn = net.layer.add(name='norm1', type='LRN', bottom=['conv1'],
                        top=['norm1'])
    lrn.lrn_param.local_size = 3
    lrn.lrn_param.alpha = 0.3
    lrn.lrn_param.beta = 0.75
    pool = net.layer.add(name='pool1', type='Pooling', bottom=['norm1'],
                         top=['pool1'])
    pool.pooling_param.pool = pb.PoolingParameter.MAX
    pool.pooling_param.kernel_size = 3
    pool.pooling_param.stride = 2
    fc = net.layer.add(name='fc', type='InnerProduct', bottom=['pool1'],
                       top=['fc'])
    fc.inner_product_param.num_output = 3
    fc.blobs.extend([_blob(pb, fcW), _blob(pb, fcb)])
    net.layer.add(name='prob', type='Softmax', bottom=['fc'], top=['prob'])
    path = tmp_path / 'tiny.caffemodel'
    path.write_bytes(net.SerializeToString())

    func = CaffeFunction(str(path))
    x = f32(rng, 2, 4, 6, 6)
    with chainer.using_config('train', False):
        fc_out, prob = func(inputs={'data': x}, outputs=['fc', 'prob'])
    h = numpy.maximum(conv2d_ref(x, W, b, (1, 1), (1, 1), groups=2), 0)
    h = lrn_ref(h, 3, 1.0, 0.3 / 3, 0.75)  # Caffe's alpha is per window
    h = pool2d_ref(h, 3, 2, 0, True, 'max')
    assert h.shape == (2, 4, 3, 3)  # ceil((6 - 3) / 2) + 1
    logits = h.reshape(2, -1) @ fcW.T.astype(numpy.float64) + fcb
    assert_close(fc_out, logits, atol=1e-4)
    assert_close(prob, numpy.exp(log_softmax_ref(logits)), atol=1e-5)


def test_caffe_function_imports():
    # Needs chainer_finetune/caffe/caffe_pb2.py (served to Chainer in
    # place of its protoc-3 generated module by chainer_finetune._compat).
    from chainer.links.caffe import CaffeFunction
    import chainer_finetune.caffe.caffe_pb2 as ours
    assert sys.modules['chainer.links.caffe.protobuf3.caffe_pb2'] is ours
    assert issubclass(CaffeFunction, chainer.Link)
    net = ours.NetParameter()
    assert hasattr(net, 'layer')
