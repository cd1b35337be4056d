"""The fast inference path of CaffeNet (chainer_finetune/caffe/fast_path.py):
the same blobs as Chainer's own functions (rel-L2 <= 1e-6) for every layer
type that can be frozen, never stale folded weights, never visible in the
parameters, and Chainer's functions wherever a gradient is needed."""

import chainer
import chainer.links as L
import numpy
import pytest

from chainer_finetune import copy_model
from chainer_finetune import freeze
from chainer_finetune import load_caffe
from chainer_finetune import unfreeze
from chainer_finetune.caffe import fast_path
from chainer_finetune.caffe.writer import NetWriter

from caffe_nets import all_layers_inputs
from caffe_nets import make_all_layers_net

RTOL = 1e-6


def _rel(a, b):
    return numpy.linalg.norm(a - b) / max(numpy.linalg.norm(b), 1e-30)


def resnet_writer(seed=0, global_stats=True):
    """A small ResNet-shaped net: Convolution (biased or not, 1x1 strided,
    3x3 padded, dilated, grouped), BatchNorm, Scale (with and without
    bias), ReLU (plain and leaky), Eltwise SUM (with coefficients), a
    BatchNorm + Scale after the sum, pooling and InnerProduct."""
    rng = numpy.random.RandomState(seed)
    w = NetWriter('resnetish')
    w.input('data', (2, 4, 11, 11))

    def conv(name, bottom, top, out, cin, k, bias=True, **p):
        p.update(num_output=out, kernel_size=k, bias_term=bias)
        blobs = [rng.randn(out, cin // p.get('group', 1), k, k) * 0.3]
        if bias:
            blobs.append(rng.randn(out) * 0.1)
        w.layer(name, 'Convolution', bottom, top,
                params={'convolution_param': p}, blobs=blobs)

    def bn_scale(name, blob, c, bias=True):
        w.layer('bn_' + name, 'BatchNorm', blob, blob,
                params={'batch_norm_param': {
                    'use_global_stats': global_stats}},
                blobs=[rng.randn(c) * 2, rng.rand(c) * 2 + 0.5,
                       numpy.array([0.5])])
        w.layer('scale_' + name, 'Scale', blob, blob,
                params={'scale_param': {'bias_term': bias}},
                blobs=[rng.rand(c) + 0.5] + ([rng.randn(c) * 0.1]
                                             if bias else []))

    conv('conv1', 'data', 'conv1', 8, 4, 3, bias=False, pad=1)
    bn_scale('conv1', 'conv1', 8)
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    conv('branch1', 'conv1', 'branch1', 8, 8, 1, stride=2)
    bn_scale('branch1', 'branch1', 8, bias=False)
    conv('branch2a', 'conv1', 'branch2a', 8, 8, 3, pad=2, dilation=2,
         group=2, stride=2)
    w.layer('relu2a', 'ReLU', 'branch2a', 'branch2a',
            params={'relu_param': {'negative_slope': 0.1}})
    conv('branch2b', 'branch2a', 'branch2b', 8, 8, 1)
    bn_scale('branch2b', 'branch2b', 8)
    w.layer('sum', 'Eltwise', ['branch1', 'branch2b'], 'sum',
            params={'eltwise_param': {'coeff': [1.0, 0.5]}})
    w.layer('relu_sum', 'ReLU', 'sum', 'sum')
    bn_scale('post', 'sum', 8)
    w.layer('pool', 'Pooling', 'sum', 'pool',
            params={'pooling_param': {'pool': 'AVE', 'global_pooling': True}})
    w.layer('fc', 'InnerProduct', 'pool', 'fc',
            params={'inner_product_param': {'num_output': 3}},
            blobs=[rng.randn(3, 8) * 0.3, rng.randn(3) * 0.1])
    return w


@pytest.fixture
def resnet(tmp_path):
    path = str(tmp_path / 'resnetish.caffemodel')
    resnet_writer().write_caffemodel(path)
    return load_caffe(path)


def _input(seed=1):
    return numpy.random.RandomState(seed).standard_normal(
        (2, 4, 11, 11)).astype(numpy.float32)


def _forward(net, x, outputs=('fc',), fast=True, train=False):
    net.fast_path = fast
    try:
        with chainer.using_config('train', train):
            ys = net(inputs={'data': x}, outputs=list(outputs))
            return [y.array for y in ys], dict(net.variables)
    finally:
        del net.fast_path


def test_resnet_shaped_net_fast_equals_plain(resnet):
    x = _input()
    before = fast_path.groups_run(resnet)
    with chainer.no_backprop_mode():
        (fast,), _ = _forward(resnet, x)
        (plain,), _ = _forward(resnet, x, fast=False)
    # conv1+bn+scale+relu, branch1+bn+scale, branch2a+relu,
    # branch2b+bn+scale, sum+relu, bn+scale, pool: seven groups.
    assert fast_path.groups_run(resnet) - before == 7
    assert _rel(fast, plain) <= RTOL
    assert fast.flags.c_contiguous


def test_frozen_layers_in_training_mode_run_fast(resnet):
    freeze(resnet, '*')
    unfreeze(resnet, 'fc')
    x = _input()
    before = fast_path.groups_run(resnet)
    (fast,), _ = _forward(resnet, x, train=True)
    assert fast_path.groups_run(resnet) - before == 7
    (plain,), _ = _forward(resnet, x, fast=False, train=True)
    assert _rel(fast, plain) <= RTOL


def test_layers_that_need_a_gradient_run_chainers_functions(resnet):
    x = _input()
    before = fast_path.groups_run(resnet)
    y, = resnet(inputs={'data': x}, outputs=['fc'])
    assert fast_path.groups_run(resnet) == before
    y.grad = numpy.ones_like(y.array)
    y.backward()
    assert resnet['conv1'].W.grad is not None


def test_batch_statistics_in_training_are_not_folded(tmp_path):
    path = str(tmp_path / 'batchstats.caffemodel')
    resnet_writer(global_stats=False).write_caffemodel(path)
    net = load_caffe(path)
    x = _input()
    with chainer.no_backprop_mode():
        before = fast_path.groups_run(net)
        (train_fast,), _ = _forward(net, x, train=True)
    # Only branch2a+relu2a, sum+relu_sum and pool (no BatchNorm) run
    # fast; the BatchNorm layers use the batch's statistics.
    assert fast_path.groups_run(net) - before == 3
    net2 = load_caffe(path)
    with chainer.no_backprop_mode():
        (train_plain,), _ = _forward(net2, x, fast=False, train=True)
    assert _rel(train_fast, train_plain) <= RTOL


def test_every_layer_type_of_the_all_layers_net(tmp_path):
    """Every blob of the net that uses every layer type, frozen and in
    training mode, and in inference mode: fast against plain."""
    model, prototxt = str(tmp_path / 'all.caffemodel'), str(
        tmp_path / 'all.prototxt')
    make_all_layers_net(model, prototxt)
    inputs = all_layers_inputs()
    outputs = ['prob', 'loss', 'accuracy', 'fc_t', 'ssd_det']
    for train in (False, True):
        nets = [load_caffe(model, prototxt) for _ in range(2)]
        results = []
        for net, fast in zip(nets, (True, False)):
            freeze(net, '*')
            net.fast_path = fast
            numpy.random.seed(0)     # Dropout's masks in training
            with chainer.using_config('train', train):
                ys = net(inputs=dict(inputs), outputs=outputs)
            results.append(([y.array for y in ys], net.variables))
        assert fast_path.groups_run(nets[0]) > 0
        (fast, fast_blobs), (plain, plain_blobs) = results
        for name, a, b in zip(outputs, fast, plain):
            assert _rel(numpy.asarray(a, 'f'), numpy.asarray(b, 'f')) \
                <= RTOL, (train, name)
        # Every blob both paths kept (a folded-away intermediate blob is
        # not kept by the fast path).
        shared = set(fast_blobs) & set(plain_blobs)
        assert len(shared) > 20
        for name in shared:
            a, b = fast_blobs[name].array, plain_blobs[name].array
            if a.dtype.kind == 'f':
                assert _rel(a, b) <= RTOL, (train, name)


def test_intermediate_blob_asked_for_is_computed(resnet):
    x = _input()
    with chainer.no_backprop_mode():
        fast, _ = _forward(resnet, x, outputs=['branch2a', 'fc'])
        plain, _ = _forward(resnet, x, outputs=['branch2a', 'fc'],
                            fast=False)
    for a, b in zip(fast, plain):
        assert _rel(a, b) <= RTOL


def _values(net):
    return {path: param.array.copy() for path, param in net.namedparams()}


def _check_fresh(net, x):
    with chainer.no_backprop_mode():
        (fast,), _ = _forward(net, x)
        (plain,), _ = _forward(net, x, fast=False)
    assert _rel(fast, plain) <= RTOL
    return fast


def test_folding_never_changes_the_parameters(resnet, tmp_path):
    before = _values(resnet)
    stats = resnet['bn_conv1'].avg_var.copy()
    _check_fresh(resnet, _input())
    for path, value in _values(resnet).items():
        assert value.tobytes() == before[path].tobytes(), path
    assert resnet['bn_conv1'].avg_var.tobytes() == stats.tobytes()
    assert len(fast_path.fold_cache(resnet)) == 3


def test_no_stale_weights_after_an_optimizer_step(resnet):
    x = _input()
    first = _check_fresh(resnet, x)
    computed = fast_path.fold_cache(resnet).computed
    optimizer = chainer.optimizers.SGD(lr=0.1).setup(resnet)

    def loss():
        y, = resnet(inputs={'data': x}, outputs=['fc'])
        return chainer.functions.sum(y * y)
    optimizer.update(loss)
    second = _check_fresh(resnet, x)
    assert _rel(first, second) > 1e-3
    assert fast_path.fold_cache(resnet).computed == computed + 3
    # Unchanged parameters: the folded weights are served from the cache.
    _check_fresh(resnet, x)
    assert fast_path.fold_cache(resnet).computed == computed + 3


def test_no_stale_weights_after_copy_model_or_in_place_edits(tmp_path):
    paths = []
    for seed in (0, 5):
        paths.append(str(tmp_path / 'n{}.caffemodel'.format(seed)))
        resnet_writer(seed).write_caffemodel(paths[-1])
    net, other = load_caffe(paths[0]), load_caffe(paths[1])
    x = _input()
    first = _check_fresh(net, x)
    copy_model(other, net)
    assert _rel(_check_fresh(net, x), first) > 1e-3
    third = _check_fresh(net, x)
    net['bn_branch1'].avg_var[0] *= 4          # statistics, in place
    assert _rel(_check_fresh(net, x), third) > 1e-6
    net['scale_post'].W.array[1] = 0           # a Scale after the sum
    _check_fresh(net, x)
    chainer.serializers.save_npz(str(tmp_path / 'w.npz'), other)
    chainer.serializers.load_npz(str(tmp_path / 'w.npz'), net)
    numpy.testing.assert_array_equal(_check_fresh(net, x),
                                     _check_fresh(other, x))


def test_copies_and_pickles_do_not_carry_the_cache(resnet):
    import pickle
    _check_fresh(resnet, _input())
    assert len(fast_path.fold_cache(resnet)) == 3
    copied = resnet.copy(mode='copy')
    assert len(fast_path.fold_cache(copied)) == 0
    copied['conv1'].W.array[...] *= 2
    assert _rel(_check_fresh(copied, _input()),
                _check_fresh(resnet, _input())) > 1e-3
    restored = pickle.loads(pickle.dumps(resnet))
    assert len(fast_path.fold_cache(restored)) == 0
    numpy.testing.assert_array_equal(_check_fresh(restored, _input()),
                                     _check_fresh(resnet, _input()))


def test_a_user_wrapper_keeps_its_layer_on_chainers_functions(resnet):
    calls = []

    def spy(function, net, *xs):
        calls.append(1)
        return function(net, *xs)
    resnet.wrap_layer_function('scale_conv1', 'spy', spy)
    _check_fresh(resnet, _input())
    assert calls
    assert isinstance(resnet['conv1'], L.Convolution2D)


# (pool, kernel, stride, pad, input side, runs fast): Caffe's rounded-up
# sizes with a last window past the input, padding, a stride larger than
# the kernel, rectangular kernels, global pooling.
POOLINGS = [
    ('MAX', (3, 3), (2, 2), (0, 0), 12, True),    # last window overhangs
    ('MAX', (3, 3), (2, 2), (1, 1), 11, True),
    ('MAX', (2, 3), (2, 1), (1, 0), 9, True),
    ('MAX', (2, 2), (2, 2), (0, 0), 7, True),
    ('MAX', (1, 1), (3, 3), (0, 0), 8, False),    # a window past the input
    ('AVE', (3, 3), (2, 2), (0, 0), 11, True),
    ('AVE', (2, 3), (1, 2), (0, 0), 9, True),
    ('AVE', (3, 3), (2, 2), (0, 0), 12, False),   # clipped divisor
    ('AVE', (3, 3), (2, 2), (1, 1), 11, False),   # padding in the divisor
    ('MAX', 'global', None, None, 7, True),
    ('AVE', 'global', None, None, 7, True),
]


@pytest.mark.parametrize('pool,kernel,stride,pad,side,fast', POOLINGS)
def test_pooling_fast_equals_plain(tmp_path, pool, kernel, stride, pad,
                                   side, fast):
    if kernel == 'global':
        params = {'pool': pool, 'global_pooling': True}
    else:
        params = {'pool': pool, 'kernel_h': kernel[0], 'kernel_w': kernel[1],
                  'stride_h': stride[0], 'stride_w': stride[1],
                  'pad_h': pad[0], 'pad_w': pad[1]}
    w = NetWriter('pool')
    w.input('data', (3, 5, side, side))
    w.layer('pool', 'Pooling', 'data', 'pool',
            params={'pooling_param': params})
    path = str(tmp_path / 'pool.caffemodel')
    w.write_caffemodel(path)
    net = load_caffe(path)
    x = numpy.random.RandomState(2).standard_normal(
        (3, 5, side, side)).astype(numpy.float32) - 3   # all negative too
    x[0, 0] = -5.0
    results = []
    for use_fast in (True, False):
        before = fast_path.groups_run(net)
        net.fast_path = use_fast
        with chainer.no_backprop_mode():
            y, = net(inputs={'data': x}, outputs=['pool'])
        results.append(y.array)
        assert fast_path.groups_run(net) - before == (fast and use_fast)
    assert results[0].shape == results[1].shape
    assert results[0].flags.c_contiguous
    if pool == 'MAX':     # the same elements picked, to the bit
        assert numpy.array_equal(results[0], results[1])
    else:
        assert _rel(results[0], results[1]) <= RTOL
