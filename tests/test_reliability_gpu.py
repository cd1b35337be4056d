"""A CaffeNet, DelGradient, freeze and copy_model on CuPy, against the CPU.

Each test does the same work on the CPU and on the device under test, from
the same caffemodel and the same batches, and compares the results: the
forward and backward of a loaded CaffeNet, training steps with a
``DelGradient`` hook and with :func:`freeze` (held values bit for bit, the
rest close to the CPU's), and :func:`copy_model` between a NumPy and a CuPy
model in both directions (values exact, on the destination's device).

The device ``@cupy:0`` is marked ``gpu`` and skips without a usable GPU
(``gpu_check``; with ``CHAINER_FINETUNE_REQUIRE_GPU=1`` that is an error).
The same tests also run with ``@numpy`` as the device, so that on machines
without a GPU the comparisons themselves keep running and cannot rot.

Tolerances as in ``test_gpu.py``: float32 1e-4 relative to the largest
value, 1e-2 when cuDNN may use TF32 (cuDNN enabled, or ``CUPY_TF32=1``).
"""

import os

import chainer_finetune  # noqa: F401  (patches Chainer; must precede chainer)

import numpy
import pytest

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import optimizer_hooks
from chainer import optimizers

from chainer_finetune import DelGradient
from chainer_finetune import copy_model
from chainer_finetune import freeze
from chainer_finetune import load_caffe
from chainer_finetune.caffe.writer import NetWriter

from gpu_check import assert_close as _assert_close  # noqa: E402
from gpu_check import cpu_and_gpu_devices  # noqa: E402
from gpu_check import to_numpy as _cpu  # noqa: E402

DEVICES = cpu_and_gpu_devices()

N_CLASS = 3
INPUT_SHAPE = (4, 3, 12, 12)
FROZEN = ['conv1', 'bn1', 'scale1']
STEPS = 3


def _write_net(path):
    """conv1 -> bn1 (batch statistics) -> scale1 -> relu -> LRN -> max pool
    -> conv2 (groups 2) -> relu -> average pool -> fc."""
    rng = numpy.random.RandomState(0)
    w = NetWriter('gpu_parity')
    w.input('data', INPUT_SHAPE)
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4, 'kernel_size': 3,
                                          'pad': 1}},
            blobs=[rng.randn(4, 3, 3, 3) * 0.3, rng.randn(4) * 0.1])
    w.layer('bn1', 'BatchNorm', 'conv1', 'conv1',
            blobs=[rng.randn(4), rng.rand(4) + 0.5, numpy.array([1.0])])
    w.layer('scale1', 'Scale', 'conv1', 'conv1',
            params={'scale_param': {'bias_term': True}},
            blobs=[rng.rand(4) + 0.5, rng.randn(4) * 0.1])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    w.layer('norm1', 'LRN', 'conv1', 'norm1',
            params={'lrn_param': {'local_size': 3, 'alpha': 1e-2,
                                  'beta': 0.75}})
    w.layer('pool1', 'Pooling', 'norm1', 'pool1',
            params={'pooling_param': {'pool': 'MAX', 'kernel_size': 3,
                                      'stride': 2}})
    w.layer('conv2', 'Convolution', 'pool1', 'conv2',
            params={'convolution_param': {'num_output': 6, 'kernel_size': 3,
                                          'pad': 1, 'group': 2}},
            blobs=[rng.randn(6, 2, 3, 3) * 0.3, rng.randn(6) * 0.1])
    w.layer('relu2', 'ReLU', 'conv2', 'conv2')
    w.layer('pool2', 'Pooling', 'conv2', 'pool2',
            params={'pooling_param': {'pool': 'AVE', 'kernel_size': 2,
                                      'stride': 2}})
    w.layer('fc', 'InnerProduct', 'pool2', 'fc',
            params={'inner_product_param': {'num_output': N_CLASS}},
            blobs=[rng.randn(N_CLASS, 6 * 3 * 3) * 0.3,
                   rng.randn(N_CLASS) * 0.1])
    w.write_caffemodel(path)
    return path


@pytest.fixture(scope='module')
def caffemodel(tmp_path_factory):
    return str(_write_net(tmp_path_factory.mktemp('gpu_parity') /
                          'net.caffemodel'))


def _load(caffemodel, device):
    net = load_caffe(caffemodel)
    net.to_device(device)
    return net


def _batches(n, seed=1):
    rng = numpy.random.RandomState(seed)
    return [(rng.uniform(-1, 1, INPUT_SHAPE).astype(numpy.float32),
             rng.randint(0, N_CLASS, INPUT_SHAPE[0]).astype(numpy.int32))
            for _ in range(n)]


def _rtol(device):
    if device.xp is numpy:
        return 1e-6
    from chainer.backends import cuda
    if cuda.cudnn_enabled or os.environ.get('CUPY_TF32', '0') != '0':
        return 1e-2
    return 1e-4


def _values(net):
    """Parameters and persistent arrays (BN statistics) by path, on CPU."""
    values = {path: _cpu(p.array) for path, p in net.namedparams()}
    for path, link in net.namedlinks():
        for name in link._persistent:
            value = getattr(link, name)
            if isinstance(value, chainer.get_array_types()):
                values[path.rstrip('/') + '/' + name] = _cpu(value)
    return values


def _on_device(net, device):
    for path, param in net.namedparams():
        assert isinstance(param.array, device.xp.ndarray), path
        assert param.device == device, path


def _loss(net, x, t):
    y, = net(inputs={'data': x}, outputs=['fc'])
    return F.softmax_cross_entropy(y, t)


def _train(net, device, hook=None, steps=STEPS):
    """``steps`` MomentumSGD updates (weight decay, clipping) in train mode;
    returns the losses."""
    optimizer = optimizers.MomentumSGD(lr=0.05, momentum=0.9)
    optimizer.setup(net)
    if hook is not None:
        # First: weight decay after it puts gradients back on held
        # parameters, which only their disabled update rules keep still.
        optimizer.add_hook(hook)
    optimizer.add_hook(optimizer_hooks.WeightDecay(1e-3))
    optimizer.add_hook(optimizer_hooks.GradientClipping(5.0))
    losses = []
    with chainer.using_config('train', True), chainer.using_device(device):
        for x, t in _batches(steps):
            loss = _loss(net, device.send(x), device.send(t))
            net.cleargrads()
            loss.backward()
            optimizer.update()
            losses.append(float(_cpu(loss)))
    return losses


# ---------------------------------------------------------------------------
# CaffeNet forward and backward
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('device_name', DEVICES)
@pytest.mark.parametrize('train', [False, True])
def test_caffenet_forward_backward_matches_cpu(caffemodel, device_name,
                                               train):
    device = chainer.get_device(device_name)
    x, t = _batches(1)[0]
    results = []
    for dev in (chainer.get_device('@numpy'), device):
        net = _load(caffemodel, dev)
        _on_device(net, dev)
        with chainer.using_config('train', train), \
                chainer.using_device(dev):
            xv = chainer.Variable(dev.send(x))
            blobs = net(inputs={'data': xv},
                        outputs=['conv1', 'pool1', 'conv2', 'fc'])
            loss = F.softmax_cross_entropy(blobs[-1], dev.send(t))
            net.cleargrads()
            loss.backward()
        assert isinstance(blobs[-1].array, dev.xp.ndarray)
        grads = {path: _cpu(p.grad) for path, p in net.namedparams()}
        results.append((blobs, loss, xv.grad, grads, _values(net)))
    rtol = _rtol(device)
    (cpu_blobs, cpu_loss, cpu_xgrad, cpu_grads, cpu_values), \
        (dev_blobs, dev_loss, dev_xgrad, dev_grads, dev_values) = results
    for name, ours, ref in zip(['conv1', 'pool1', 'conv2', 'fc'],
                               dev_blobs, cpu_blobs):
        _assert_close(ours, ref, rtol, name)
    _assert_close(dev_loss, cpu_loss, rtol, 'loss')
    _assert_close(dev_xgrad, cpu_xgrad, rtol, 'data.grad')
    assert sorted(dev_grads) == sorted(cpu_grads)
    for path in sorted(cpu_grads):
        _assert_close(dev_grads[path], cpu_grads[path], rtol, path + '.grad')
    # In training BatchNorm moved its statistics: the same way on both.
    assert sorted(dev_values) == sorted(cpu_values)
    for path in sorted(cpu_values):
        _assert_close(dev_values[path], cpu_values[path], rtol, path)


# ---------------------------------------------------------------------------
# DelGradient and freeze while training
# ---------------------------------------------------------------------------

def _held_and_trained(net_before, net_after, held):
    """(paths of values held, paths of values that changed)."""
    changed = [path for path in net_before
               if net_before[path].tobytes() != net_after[path].tobytes()]
    still = [path for path in net_before if path.split('/')[1] in held]
    return still, changed


def _train_both(caffemodel, device, prepare):
    """Trains a CPU net and a ``device`` net, each prepared by
    ``prepare(net)`` (which returns the optimizer hook or None)."""
    runs = []
    for dev in (chainer.get_device('@numpy'), device):
        net = _load(caffemodel, dev)
        before = _values(net)
        hook = prepare(net)
        losses = _train(net, dev, hook)
        _on_device(net, dev)
        runs.append((before, _values(net), losses))
    return runs


def _check_training(runs, device, held):
    (cpu_before, cpu_after, cpu_losses), \
        (dev_before, dev_after, dev_losses) = runs
    rtol = _rtol(device)
    for before, after in ((cpu_before, cpu_after), (dev_before, dev_after)):
        still, changed = _held_and_trained(before, after, held)
        assert still, held
        for path in still:      # bit for bit, on either device
            assert after[path].tobytes() == before[path].tobytes(), path
        assert '/fc/W' in changed and '/conv2/W' in changed
    numpy.testing.assert_allclose(dev_losses, cpu_losses, rtol=rtol)
    assert sorted(dev_after) == sorted(cpu_after)
    for path in sorted(cpu_after):
        _assert_close(dev_after[path], cpu_after[path], rtol, path)


@pytest.mark.parametrize('device_name', DEVICES)
def test_del_gradient_holds_and_trains_like_cpu(caffemodel, device_name):
    device = chainer.get_device(device_name)
    runs = _train_both(caffemodel, device,
                       lambda net: DelGradient(['conv1', 'scale1'], net))
    # DelGradient keeps parameters still, not BatchNorm's statistics.
    _check_training(runs, device, ['conv1', 'scale1'])
    cpu_after, dev_after = runs[0][1], runs[1][1]
    assert cpu_after['/bn1/avg_mean'].tobytes() != \
        runs[0][0]['/bn1/avg_mean'].tobytes()
    _assert_close(dev_after['/bn1/avg_mean'], cpu_after['/bn1/avg_mean'],
                  _rtol(device), 'bn1/avg_mean')


@pytest.mark.parametrize('device_name', DEVICES)
def test_freeze_holds_and_trains_like_cpu(caffemodel, device_name):
    device = chainer.get_device(device_name)

    def prepare(net):
        assert sorted(freeze(net, FROZEN)) == sorted(FROZEN)
        return None

    runs = _train_both(caffemodel, device, prepare)
    # freeze also holds BatchNorm's statistics (Caffe's use_global_stats).
    _check_training(runs, device, FROZEN)
    for before, after, _ in runs:
        for name in ('/bn1/avg_mean', '/bn1/avg_var'):
            assert after[name].tobytes() == before[name].tobytes(), name


# ---------------------------------------------------------------------------
# copy_model across devices
# ---------------------------------------------------------------------------

class _Model(chainer.Chain):
    """A Chainer model with the CaffeNet's conv1 and conv2 and a new,
    lazily sized head."""

    def __init__(self):
        super(_Model, self).__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(None, 4, 3, pad=1)
            self.bn1 = L.BatchNormalization(4)
            self.conv2 = L.Convolution2D(None, 6, 3, pad=1, groups=2)
            self.fc = L.Linear(None, 7)


def _entries(report):
    return [(e.src_path, e.dst_path, e.status, e.code) for e in report]


@pytest.mark.parametrize('device_name', DEVICES)
@pytest.mark.parametrize('direction', ['cpu_to_device', 'device_to_cpu',
                                       'device_to_device'])
def test_copy_model_across_devices_matches_cpu(caffemodel, device_name,
                                               direction):
    device = chainer.get_device(device_name)
    cpu = chainer.get_device('@numpy')
    src_dev, dst_dev = {'cpu_to_device': (cpu, device),
                        'device_to_cpu': (device, cpu),
                        'device_to_device': (device, device)}[direction]

    expected_dst = _Model()
    expected = copy_model(load_caffe(caffemodel), expected_dst)

    src = _load(caffemodel, src_dev)
    dst = _Model()
    dst.to_device(dst_dev)
    report = copy_model(src, dst)

    assert _entries(report) == _entries(expected)
    assert sorted(report.copied_links) == ['bn1', 'conv1', 'conv2'] and \
        report.copied_links == expected.copied_links
    src_values = _values(src)
    expected_values = _values(expected_dst)
    for path, param in dst.namedparams():
        if param.array is None:     # fc/W: sized by the first batch
            assert path == '/fc/W' and expected_dst.fc.W.array is None
            continue
        assert isinstance(param.array, dst_dev.xp.ndarray), path
        assert param.device == dst_dev, path
        numpy.testing.assert_array_equal(_cpu(param.array),
                                         expected_values[path], err_msg=path)
    dst_values = _values(dst)
    for entry in report.copied:
        if entry.kind == 'persistent' and entry.src_shape is None:
            # A scalar (BatchNormalization's N).
            link, name = entry.dst_path.split('/')
            assert getattr(getattr(dst, link), name) == getattr(
                src[entry.src], entry.name), entry.dst_path
            continue
        numpy.testing.assert_array_equal(
            dst_values['/' + entry.dst_path],
            src_values['/' + entry.src_path], err_msg=entry.dst_path)
    # conv1 and conv2 (W, b: into lazily sized links), bn1's statistics.
    assert len(report.copied) == 7
    for name in ('avg_mean', 'avg_var'):
        value = getattr(dst.bn1, name)
        assert isinstance(value, dst_dev.xp.ndarray), name
        numpy.testing.assert_array_equal(_cpu(value),
                                         getattr(expected_dst.bn1, name))
    # Copies, never shared: the source is untouched by writes to dst.
    with chainer.using_device(dst_dev):
        dst.conv1.W.array[...] = 0
    numpy.testing.assert_array_equal(_cpu(src.conv1.W.array),
                                     src_values['/conv1/W'])
