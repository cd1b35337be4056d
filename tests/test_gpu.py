"""GPU (CuPy) tests: what our users run on a GPU gives the CPU's numbers.

Every test here is marked ``gpu`` and is skipped, with the reason, when CuPy
cannot be imported by Chainer or no CUDA GPU is usable (see
``gpu_check.gpu_unusable_reason``). Run them with ``pytest -m gpu -rs``;
docs/gpu.rst says which CuPy versions they are meant for.

Each test builds the computation on the CPU first, copies the very same
parameters to ``@cupy:0`` with ``to_device``, and compares. Tolerances:

* float64: tight (1e-5 relative to the largest value); only
  ``local_response_normalization``'s CUDA kernel accumulates in float32.
* float32 with cuDNN convolutions (CuPy 13 + cuDNN, ``use_cudnn='auto'``),
  or with ``CUPY_TF32=1``: 1e-2, because cuDNN's default math mode (and
  CuPy's cuBLAS calls with ``CUPY_TF32=1``) may use TF32 on Ampere and newer.
* float32 otherwise (CuPy's own kernels, cuBLAS without TF32): 1e-4.
"""

import copy
import os

import chainer_finetune  # noqa: F401  (patches Chainer; must precede chainer)

import numpy
import pytest

import chainer
from chainer import backend
import chainer.functions as F
import chainer.links as L
from chainer import optimizer_hooks
from chainer import optimizers
from chainer import serializers
from chainer import training

from gpu_check import assert_close as _assert_close  # noqa: E402
from gpu_check import gpu_unusable_reason  # noqa: E402


_REASON = gpu_unusable_reason()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=str(_REASON)),
]

GPU = '@cupy:0'


def _cpu(x):
    """A NumPy copy of an array (or the array of a Variable) on any device."""
    if isinstance(x, chainer.Variable):
        x = x.array
    return numpy.asarray(backend.CpuDevice().send(x))


def _cudnn_enabled():
    from chainer.backends import cuda
    return cuda.cudnn_enabled


def _params_and_persistents(link):
    """All parameters and persistent arrays of ``link`` by path."""
    values = {}
    for path, param in link.namedparams():
        values[path] = param
    for path, sub in link.namedlinks():
        for name in sub._persistent:
            value = getattr(sub, name)
            if isinstance(value, chainer.get_array_types()):
                values['{}/{}'.format(path.rstrip('/'), name)] = value
    return values


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------

def test_device_selection_and_transfer():
    import cupy
    device = chainer.get_device(GPU)
    assert device.xp is cupy
    assert device.name == GPU
    device.use()
    x = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
    x_gpu = device.send(x)
    assert isinstance(x_gpu, cupy.ndarray)
    assert backend.get_device_from_array(x_gpu) == device
    numpy.testing.assert_array_equal(_cpu(x_gpu * 2), x * 2)
    v = chainer.Variable(x)
    v.to_device(device)
    assert isinstance(v.array, cupy.ndarray)


# ---------------------------------------------------------------------------
# Forward / backward parity of the functions fine-tuning uses
# ---------------------------------------------------------------------------

class _Net(chainer.Chain):
    """Conv (groups=2) -> BN -> ReLU -> max|avg pool -> concat -> LRN -> fc."""

    def __init__(self, dtype):
        super(_Net, self).__init__()
        init = chainer.initializers.Normal(0.3, dtype=dtype)
        with self.init_scope():
            self.conv = L.Convolution2D(4, 8, ksize=3, pad=1, groups=2,
                                        initialW=init, initial_bias=init)
            self.bn = L.BatchNormalization(8, dtype=dtype)
            self.fc = L.Linear(16 * 4 * 4, 5, initialW=init,
                               initial_bias=init)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        # cover_all=True (Chainer's default, Caffe's ceil mode): 8x8 -> 4x4
        # with a last, partial window.
        a = F.max_pooling_2d(h, 3, stride=2)
        b = F.average_pooling_2d(h, 2, stride=2)
        h = F.concat([a, b], axis=1)
        h = F.local_response_normalization(h, n=5)
        return self.fc(h)


def _forward_backward(net, x, t):
    x = chainer.Variable(x)
    y = net(x)
    loss = F.softmax_cross_entropy(y, t)
    acc = F.accuracy(y, t)
    net.cleargrads()
    loss.backward()
    return x, y, loss, acc


@pytest.mark.parametrize('use_cudnn', ['auto', 'never'])
@pytest.mark.parametrize('dtype', [numpy.float32, numpy.float64])
def test_network_forward_backward_matches_cpu(dtype, use_cudnn):
    rng = numpy.random.RandomState(0)
    x = rng.uniform(-1, 1, (4, 4, 8, 8)).astype(dtype)
    t = rng.randint(0, 5, size=4).astype(numpy.int32)

    net_cpu = _Net(dtype)
    net_gpu = copy.deepcopy(net_cpu)
    net_gpu.to_device(GPU)
    device = chainer.get_device(GPU)

    with chainer.using_config('use_cudnn', use_cudnn):
        x_c, y_c, loss_c, acc_c = _forward_backward(net_cpu, x, t)
        with chainer.using_device(device):
            x_g, y_g, loss_g, acc_g = _forward_backward(
                net_gpu, device.send(x), device.send(t))

    assert isinstance(y_g.array, device.xp.ndarray)
    if dtype == numpy.float64:
        rtol = 1e-5
    elif ((use_cudnn == 'auto' and _cudnn_enabled())
          or os.environ.get('CUPY_TF32', '0') != '0'):
        rtol = 1e-2  # TF32 in cuDNN convolutions or cuBLAS
    else:
        rtol = 1e-4
    _assert_close(y_g, y_c, rtol, 'logits')
    _assert_close(loss_g, loss_c, rtol, 'loss')
    # Accuracy is exact given the logits the GPU computed.
    expected_acc = (_cpu(y_g).argmax(axis=1) == t).mean(dtype=dtype)
    assert _cpu(acc_g) == expected_acc
    _assert_close(x_g.grad, x_c.grad, rtol, 'x.grad')
    cpu_values = _params_and_persistents(net_cpu)
    gpu_values = _params_and_persistents(net_gpu)
    assert sorted(cpu_values) == sorted(gpu_values)
    for path, value in sorted(cpu_values.items()):
        if isinstance(value, chainer.Parameter):
            _assert_close(gpu_values[path].array, value.array, rtol, path)
            _assert_close(gpu_values[path].grad, value.grad, rtol,
                          path + '.grad')
        else:  # BatchNormalization's running statistics
            _assert_close(gpu_values[path], value, rtol, path)


@pytest.mark.parametrize('use_cudnn', ['auto', 'never'])
def test_deconvolution_2d_matches_cpu(use_cudnn):
    rng = numpy.random.RandomState(1)
    x = rng.uniform(-1, 1, (2, 4, 5, 5))
    init = chainer.initializers.Normal(0.3, dtype=numpy.float64)
    deconv_cpu = L.Deconvolution2D(4, 6, ksize=4, stride=2, pad=1, groups=2,
                                   initialW=init, initial_bias=init)
    deconv_gpu = copy.deepcopy(deconv_cpu)
    deconv_gpu.to_device(GPU)
    device = chainer.get_device(GPU)
    results = []
    with chainer.using_config('use_cudnn', use_cudnn):
        for link, xs in ((deconv_cpu, x), (deconv_gpu, device.send(x))):
            with chainer.using_device(link.device):
                v = chainer.Variable(xs)
                y = link(v)
                F.sum(y * y).backward()
            results.append((y, v.grad, link.W.grad, link.b.grad))
    for name, gpu, cpu in zip(('y', 'x.grad', 'W.grad', 'b.grad'),
                              results[1], results[0]):
        _assert_close(gpu, cpu, 1e-6, name)


# ---------------------------------------------------------------------------
# Optimizers and optimizer hooks (CuPy elementwise kernels)
# ---------------------------------------------------------------------------

def _make_optimizer(name):
    if name == 'SGD':
        return optimizers.SGD(lr=0.1)
    if name == 'SGD-numpy-lr':
        # A NumPy float64 learning rate, as schedules computed with NumPy
        # give: the kernels cast it to the parameter dtype.
        return optimizers.SGD(lr=numpy.float64(0.1))
    if name == 'MomentumSGD':
        return optimizers.MomentumSGD(lr=0.1, momentum=0.9)
    if name == 'Adam':
        return optimizers.Adam(alpha=0.01, weight_decay_rate=1e-3)
    if name == 'AMSGrad':
        return optimizers.Adam(alpha=0.01, amsgrad=True)
    raise ValueError(name)


@pytest.mark.parametrize('name', ['SGD', 'SGD-numpy-lr', 'MomentumSGD',
                                  'Adam', 'AMSGrad'])
def test_optimizer_step_with_hooks_matches_cpu(name):
    rng = numpy.random.RandomState(2)
    model_cpu = chainer.Sequential(L.Linear(6, 4), L.Linear(4, 3))
    for param in model_cpu.params():
        param.array[...] = rng.uniform(-1, 1, param.shape)
    model_gpu = copy.deepcopy(model_cpu)
    model_gpu.to_device(GPU)
    grads = [{path: rng.uniform(-1, 1, p.shape).astype(p.dtype)
              for path, p in model_cpu.namedparams()} for _ in range(2)]
    norm = numpy.sqrt(sum(float((g ** 2).sum()) for g in grads[0].values()))

    opts = []
    for model in (model_cpu, model_gpu):
        opt = _make_optimizer(name)
        opt.setup(model)
        opt.add_hook(optimizer_hooks.WeightDecay(1e-2))
        # Threshold below the gradient norm, so that clipping happens.
        opt.add_hook(optimizer_hooks.GradientClipping(0.5 * norm))
        opts.append(opt)

    for step_grads in grads:
        for model, opt in zip((model_cpu, model_gpu), opts):
            device = model.device
            for path, param in model.namedparams():
                param.grad = device.send(step_grads[path].copy())
            with chainer.using_device(device):
                opt.update()
        for (path, p_cpu), (_, p_gpu) in zip(
                sorted(model_cpu.namedparams()),
                sorted(model_gpu.namedparams())):
            assert isinstance(p_gpu.array, model_gpu.device.xp.ndarray)
            _assert_close(p_gpu.array, p_cpu.array, 1e-5, name + path)
            _assert_close(p_gpu.grad, p_cpu.grad, 1e-5,
                          name + path + '.grad (clipped, decayed)')
        for (path, p_cpu), (_, p_gpu) in zip(
                sorted(model_cpu.namedparams()),
                sorted(model_gpu.namedparams())):
            for key, state in p_cpu.update_rule.state.items():
                _assert_close(p_gpu.update_rule.state[key], state, 1e-5,
                              '{}{} state {}'.format(name, path, key))


# ---------------------------------------------------------------------------
# Training loop and serialization
# ---------------------------------------------------------------------------

def _dataset(n=12, dtype=numpy.float32):
    rng = numpy.random.RandomState(3)
    x = rng.uniform(-1, 1, (n, 4, 8, 8)).astype(dtype)
    t = rng.randint(0, 5, size=n).astype(numpy.int32)
    return chainer.datasets.TupleDataset(x, t)


def test_trainer_runs_three_iterations_on_gpu(tmp_path):
    import cupy
    model = L.Classifier(_Net(numpy.float32))
    before = {path: _cpu(p.array).copy() for path, p in model.namedparams()}
    device = chainer.get_device(GPU)
    model.to_device(device)
    device.use()
    optimizer = optimizers.MomentumSGD(lr=0.01)
    optimizer.setup(model)
    optimizer.add_hook(optimizer_hooks.WeightDecay(1e-4))
    iterator = chainer.iterators.SerialIterator(_dataset(), 4, shuffle=False)
    updater = training.updaters.StandardUpdater(iterator, optimizer,
                                                device=device)
    trainer = training.Trainer(updater, (3, 'iteration'), out=str(tmp_path))
    log = training.extensions.LogReport(trigger=(1, 'iteration'))
    trainer.extend(log)
    trainer.run()

    assert updater.iteration == 3
    assert [entry['iteration'] for entry in log.log] == [1, 2, 3]
    for entry in log.log:
        assert numpy.isfinite(entry['main/loss'])
        assert 0.0 <= entry['main/accuracy'] <= 1.0
    changed = False
    for path, param in model.namedparams():
        assert isinstance(param.array, cupy.ndarray), path
        assert param.device == device, path
        after = _cpu(param.array)
        assert numpy.all(numpy.isfinite(after)), path
        changed = changed or not numpy.array_equal(after, before[path])
    assert changed


def test_save_npz_from_gpu_loads_into_cpu_model(tmp_path):
    device = chainer.get_device(GPU)
    model_gpu = _Net(numpy.float32)
    model_gpu.to_device(device)
    x, _ = chainer.dataset.concat_examples(_dataset()[:4])
    batch = device.send(x)
    with chainer.using_device(device):
        model_gpu(batch)  # updates BatchNormalization's running statistics
    path = str(tmp_path / 'model.npz')
    serializers.save_npz(path, model_gpu)

    model_cpu = _Net(numpy.float32)
    serializers.load_npz(path, model_cpu)
    gpu_values = _params_and_persistents(model_gpu)
    cpu_values = _params_and_persistents(model_cpu)
    assert sorted(gpu_values) == sorted(cpu_values)
    for key, value in sorted(gpu_values.items()):
        loaded = cpu_values[key]
        if isinstance(loaded, chainer.Parameter):
            loaded, value = loaded.array, value.array
        assert isinstance(loaded, numpy.ndarray), key
        numpy.testing.assert_array_equal(loaded, _cpu(value), err_msg=key)
    assert model_cpu.bn.N == model_gpu.bn.N
    assert float(numpy.abs(cpu_values['/bn/avg_mean']).max()) > 0

    # ... and back: the file written from the GPU loads into a GPU model.
    model_gpu2 = _Net(numpy.float32)
    model_gpu2.to_device(device)
    serializers.load_npz(path, model_gpu2)
    for (key, p2), (_, p1) in zip(sorted(model_gpu2.namedparams()),
                                  sorted(model_gpu.namedparams())):
        assert isinstance(p2.array, device.xp.ndarray), key
        numpy.testing.assert_array_equal(_cpu(p2.array), _cpu(p1.array))


@pytest.mark.parametrize('frozen', [False, True])
def test_fast_path_on_cupy_matches_plain_cpu(tmp_path, frozen):
    """The fast path on CuPy (BatchNorm and Scale folded into the
    convolutions, which Chainer's convolution runs there; pooling left to
    Chainer's): the blobs of the CPU's plain path, inference and frozen in
    training mode."""
    from chainer_finetune import freeze
    from chainer_finetune import load_caffe
    from chainer_finetune import unfreeze
    from chainer_finetune.caffe import fast_path
    from test_fast_path import resnet_writer

    path = str(tmp_path / 'resnetish.caffemodel')
    resnet_writer().write_caffemodel(path)
    nets = {'cpu': load_caffe(path), 'gpu': load_caffe(path)}
    nets['gpu'].to_device(GPU)
    nets['cpu'].fast_path = False
    x = numpy.random.RandomState(1).standard_normal(
        (2, 4, 11, 11)).astype(numpy.float32)
    device = chainer.get_device(GPU)
    outputs = {}
    for key, net in nets.items():
        if frozen:
            freeze(net, '*')
            unfreeze(net, 'fc')
        xd = device.send(x) if key == 'gpu' else x
        with chainer.using_config('train', frozen), chainer.using_device(
                device if key == 'gpu' else chainer.get_device('@numpy')):
            y, = net(inputs={'data': xd}, outputs=['fc'])
        outputs[key] = y
    # Six groups (the pooling runs Chainer's cuDNN pooling on CuPy).
    assert fast_path.groups_run(nets['gpu']) == 6
    rtol = 1e-2 if _cudnn_enabled() else 1e-4
    _assert_close(outputs['gpu'], outputs['cpu'], rtol, 'fc')
