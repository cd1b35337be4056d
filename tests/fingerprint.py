#!/usr/bin/env python3
"""Numbers from a fixed-seed Chainer workload, for NumPy 1.x/2.x parity.

    python tests/fingerprint.py OUT.json

Imports ``chainer_finetune`` (which patches Chainer for the installed
stack), then runs a deterministic CPU workload: forward/backward of every
layer type this library relies on with fixed inputs, a small
conv+BN+LRN+pool+linear net trained for 20 iterations with MomentumSGD +
WeightDecay, and an MLP with dropout trained with Adam + GradientClipping.
All data and all parameter initialisations come from explicitly seeded
``numpy.random.RandomState`` objects (whose streams NumPy keeps stable
across versions), and NumPy's global RNG (which F.dropout draws from) is
seeded too. The JSON holds the versions and named lists of floats; compare
two files with ``tools/compare_fingerprints.py``.
"""

import json
import os
import platform
import sys
import time

try:
    import chainer_finetune  # noqa: F401  (must precede `import chainer`)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    import chainer_finetune  # noqa: F401

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
import numpy  # noqa: E402
from chainer import initializers  # noqa: E402
from chainer import optimizer_hooks  # noqa: E402
from chainer import optimizers  # noqa: E402

#: How many leading elements of each array are recorded verbatim.
HEAD = 6


def _summary(array):
    """sum, sum of |x|, sum of x^2 (float64), then the first HEAD elements."""
    a = numpy.asarray(getattr(array, 'array', array), dtype=numpy.float64)
    flat = a.ravel()
    return ([float(flat.sum()), float(numpy.abs(flat).sum()),
             float((flat * flat).sum())]
            + [float(v) for v in flat[:HEAD]])


def _data(seed, *shape, scale=1.0):
    rs = numpy.random.RandomState(seed)
    return (rs.standard_normal(shape) * scale).astype(numpy.float32)


def layer_outputs(out):
    """Forward (and some backward) results of single layers/functions."""
    x = _data(1, 2, 4, 9, 8)
    numpy.random.seed(0)

    def record(name, fn, *inputs):
        vs = [chainer.Variable(i) for i in inputs]
        y = fn(*vs)
        out[name] = _summary(y)
        if y.dtype.kind == 'f' and y.array.size > 1:
            y.grad = _data(99, *y.shape)
            if isinstance(fn, chainer.Link):
                fn.cleargrads()  # fresh parameter grads are NaN-filled
            y.backward()
            for k, v in enumerate(vs):
                if v.grad is not None:
                    out[name + '/grad%d' % k] = _summary(v.grad)
        return y

    rs = numpy.random.RandomState(10)
    conv = L.Convolution2D(4, 6, 3, stride=2, pad=1, groups=2,
                           initialW=initializers.HeNormal(rng=rs),
                           initial_bias=initializers.Normal(0.1, rng=rs))
    record('conv_g2_s2_p1', conv, x)
    out['conv_g2_s2_p1/gW'] = _summary(conv.W.grad)

    deconv = L.Deconvolution2D(4, 3, 4, stride=2, pad=1,
                               initialW=initializers.LeCunNormal(rng=rs))
    record('deconv_s2_p1', deconv, x)

    lin = L.Linear(None, 5, initialW=initializers.LeCunNormal(rng=rs))
    record('linear', lin, x)

    bn = L.BatchNormalization(4, decay=0.8)
    bn.gamma.array[...] = _data(11, 4) + 1
    bn.beta.array[...] = _data(12, 4)
    record('bn_train', bn, x)
    bn(x * 2 + 1)
    out['bn_avg_mean'] = _summary(bn.avg_mean)
    out['bn_avg_var'] = _summary(bn.avg_var)
    with chainer.using_config('train', False):
        out['bn_test'] = _summary(bn(x))

    record('max_pool_3s2_cover_all', lambda v: F.max_pooling_2d(
        v, 3, 2, cover_all=True), x)
    record('max_pool_3s2p1_no_cover_all', lambda v: F.max_pooling_2d(
        v, 3, 2, pad=1, cover_all=False), x)
    record('avg_pool_3s2p1', lambda v: F.average_pooling_2d(v, 3, 2, 1), x)
    record('lrn', lambda v: F.local_response_normalization(
        v, 5, 2, 1e-2, 0.75), x * 3)
    record('relu', F.relu, x)
    record('concat', lambda a, b: F.concat((a, b), axis=1), x, x * 2)
    with chainer.using_config('train', True):
        numpy.random.seed(5)
        record('dropout_train', lambda v: F.dropout(v, 0.4), x)
    record('resize_bilinear', lambda v: F.resize_images(v, (13, 5)), x)
    record('resize_bilinear_no_align', lambda v: F.resize_images(
        v, (13, 5), align_corners=False), x)
    record('resize_nearest', lambda v: F.resize_images(
        v, (4, 11), mode='nearest'), x)
    record('as_strided', lambda v: F.as_strided(
        v, (5, 7), (3, 1), 1), x.ravel()[:20].copy())

    logits = _data(2, 16, 10, scale=2.0)
    t = numpy.random.RandomState(3).randint(0, 10, 16).astype(numpy.int32)
    t[::5] = -1
    zv = chainer.Variable(logits)
    loss = F.softmax_cross_entropy(zv, t)
    loss.backward()
    out['softmax_cross_entropy'] = _summary(loss)
    out['softmax_cross_entropy/grad0'] = _summary(zv.grad)
    out['accuracy'] = _summary(F.accuracy(logits, t, ignore_label=-1))

    p = F.softmax(_data(4, 3, 2, 7)).array
    dist = chainer.distributions.Categorical(p=p)
    x_cat = numpy.random.RandomState(5).randint(0, 7, (3, 2))
    out['categorical_log_prob'] = _summary(
        dist.log_prob(x_cat.astype(numpy.int32)))
    out['categorical_entropy'] = _summary(dist.entropy)


class ConvNet(chainer.Chain):

    def __init__(self, rs):
        super().__init__()
        he = initializers.HeNormal(rng=rs)
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, 8, 3, pad=1, initialW=he)
            self.bn1 = L.BatchNormalization(8)
            self.conv2 = L.Convolution2D(8, 8, 3, pad=1, groups=2,
                                         initialW=he)
            self.fc = L.Linear(8 * 3 * 3, 4,
                               initialW=initializers.LeCunNormal(rng=rs))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.local_response_normalization(h, 5, 2, 1e-3, 0.75)
        h = F.max_pooling_2d(h, 3, 2)           # 8x8 -> 4x4 (cover_all)
        h = F.relu(self.conv2(h))
        h = F.average_pooling_2d(h, 2, 1)       # 4x4 -> 3x3
        return self.fc(h)


class MLP(chainer.Chain):

    def __init__(self, rs):
        super().__init__()
        with self.init_scope():
            self.l1 = L.Linear(10, 32,
                               initialW=initializers.LeCunNormal(rng=rs))
            self.l2 = L.Linear(32, 3,
                               initialW=initializers.LeCunNormal(rng=rs))

    def forward(self, x):
        return self.l2(F.dropout(F.relu(self.l1(x)), 0.2))


def _params(out, prefix, link):
    """Parameters and array-valued persistents (BN running stats)."""
    for name, param in sorted(link.namedparams()):
        out[prefix + name] = _summary(param.array)
    for path, sub in sorted(link.namedlinks()):
        for name in sorted(sub._persistent):
            value = getattr(sub, name)
            if isinstance(value, numpy.ndarray):
                out[prefix + path + '/' + name] = _summary(value)


def train_convnet(out, iterations=20):
    numpy.random.seed(100)
    rs = numpy.random.RandomState(100)
    net = ConvNet(rs)
    opt = optimizers.MomentumSGD(lr=0.05, momentum=0.9)
    opt.setup(net)
    opt.add_hook(optimizer_hooks.WeightDecay(5e-4))
    data_rs = numpy.random.RandomState(101)
    x_all = data_rs.standard_normal((64, 3, 8, 8)).astype(numpy.float32)
    t_all = data_rs.randint(0, 4, 64).astype(numpy.int32)
    # Learnable: class-dependent offsets on channel t % 3.
    x_all[numpy.arange(64), t_all % 3] += (t_all[:, None, None] - 1.5)
    losses, accs = [], []
    with chainer.using_config('train', True):
        for it in range(iterations):
            idx = numpy.arange(it * 16, it * 16 + 16) % 64
            y = net(x_all[idx])
            loss = F.softmax_cross_entropy(y, t_all[idx])
            net.cleargrads()
            loss.backward()
            opt.update()
            losses.append(float(loss.array))
            accs.append(float(F.accuracy(y, t_all[idx]).array))
    out['convnet/loss'] = losses
    out['convnet/accuracy'] = accs
    _params(out, 'convnet/param', net)
    with chainer.using_config('train', False):
        out['convnet/eval_logits'] = _summary(net(x_all[:16]))


def train_mlp(out, iterations=20):
    numpy.random.seed(200)
    rs = numpy.random.RandomState(200)
    net = MLP(rs)
    opt = optimizers.Adam(alpha=0.01)
    opt.setup(net)
    opt.add_hook(optimizer_hooks.GradientClipping(1.0))
    data_rs = numpy.random.RandomState(201)
    centers = data_rs.standard_normal((3, 10)).astype(numpy.float32)
    t_all = data_rs.randint(0, 3, 96).astype(numpy.int32)
    x_all = (centers[t_all]
             + data_rs.standard_normal((96, 10)).astype(numpy.float32))
    losses = []
    with chainer.using_config('train', True):
        for it in range(iterations):
            idx = numpy.arange(it * 24, it * 24 + 24) % 96
            loss = F.softmax_cross_entropy(net(x_all[idx]), t_all[idx])
            net.cleargrads()
            loss.backward()
            opt.update()
            losses.append(float(loss.array))
    out['mlp_adam/loss'] = losses
    out['mlp_adam/alpha_t'] = [float(opt.alpha_t)]
    _params(out, 'mlp_adam/param', net)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write('usage: python tests/fingerprint.py OUT.json\n')
        return 2
    start = time.time()
    values = {}
    layer_outputs(values)
    train_convnet(values)
    train_mlp(values)
    for name, vals in values.items():
        bad = [v for v in vals if not numpy.isfinite(v)]
        if bad:
            sys.stderr.write('non-finite value in {}: {}\n'.format(name, bad))
            return 1
    result = {
        'numpy': numpy.__version__,
        'chainer': chainer.__version__,
        'python': platform.python_version(),
        'compat_patches': list(chainer_finetune._compat.APPLIED),
        'values': values,
    }
    with open(argv[1], 'w') as f:
        json.dump(result, f, indent=1, sort_keys=True)
    print('fingerprint: numpy {}, {} series, {:.1f} s -> {}'.format(
        numpy.__version__, len(values), time.time() - start, argv[1]))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
