"""Freezing links: DelGradient (optimizer hook) and freeze/unfreeze (model).

"Frozen" is checked bit for bit: after 20 updates, every frozen parameter
(and, for :func:`freeze`, every BatchNormalization statistic) equals its
value before the updates exactly, under SGD, MomentumSGD with momentum built
up before freezing, and Adam with ``weight_decay_rate``, each with
``WeightDecay`` and ``GradientClipping`` hooks added before and after the
freezing hook. The trainable parameters must have changed, ``conv1_1`` and
``conv10`` included (a pattern is never a substring match).

The same tests run on ``@cupy:0`` when CuPy and a GPU are usable (marked
``gpu``; skipped with the reason otherwise).
"""

import copy
import pickle

import chainer_finetune  # noqa: F401  (patches Chainer; must precede chainer)

import numpy
import pytest

import chainer
from chainer import backend
from chainer import computational_graph
import chainer.functions as F
import chainer.links as L
from chainer import optimizer_hooks
from chainer import optimizers
from chainer import serializers

from chainer_finetune import load_caffe
from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.errors import LinkNotFoundError
from chainer_finetune.freeze import DelGradient
from chainer_finetune.freeze import freeze
from chainer_finetune.freeze import frozen_paths
from chainer_finetune.freeze import unfreeze

from gpu_check import cpu_and_gpu_devices  # noqa: E402


DEVICES = cpu_and_gpu_devices()

FROZEN = ['conv1', 'bn1']
TRAINED = ['conv1_1', 'conv10', 'fc']
STEPS = 20


class Net(chainer.Chain):
    """conv1 -> bn1 -> conv1_1 -> conv10 -> pool -> fc; 8x8 inputs."""

    def __init__(self):
        super(Net, self).__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, 4, 3, pad=1)
            self.bn1 = L.BatchNormalization(4)
            self.conv1_1 = L.Convolution2D(4, 4, 3, pad=1)
            self.conv10 = L.Convolution2D(4, 4, 3, pad=1)
            self.fc = L.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.conv1_1(h))
        h = F.max_pooling_2d(F.relu(self.conv10(h)), 2)
        return self.fc(h)


def _net(device='@numpy'):
    numpy.random.seed(0)
    net = Net()
    net.to_device(device)
    return net


def _batches(n, device='@numpy', seed=1):
    rng = numpy.random.RandomState(seed)
    device = chainer.get_device(device)
    return [(device.send(rng.standard_normal((4, 3, 8, 8)).astype('f')),
             device.send(rng.randint(0, 3, 4).astype(numpy.int32)))
            for _ in range(n)]


def _loss(net):
    def lossfun(x, t):
        return F.softmax_cross_entropy(net(x), t)
    return lossfun


def _cpu(array):
    return numpy.array(backend.CpuDevice().send(array))


def _snapshot(net, prefixes):
    """Copies of the parameters and BN statistics under the given links."""
    values = {}
    for path, param in net.namedparams():
        if path.split('/')[1] in prefixes:
            values[path] = _cpu(param.array)
    for path, link in net.namedlinks(skipself=True):
        if path.split('/')[1] in prefixes and \
                isinstance(link, L.BatchNormalization):
            values[path + '/avg_mean'] = _cpu(link.avg_mean)
            values[path + '/avg_var'] = _cpu(link.avg_var)
    return values


def _assert_identical(before, after):
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].tobytes() == after[key].tobytes(), key


def _assert_all_changed(before, after):
    for key in before:
        if key.endswith(('/avg_mean', '/avg_var')):
            continue
        assert not numpy.array_equal(before[key], after[key]), key


OPTIMIZERS = {
    'SGD': lambda: optimizers.SGD(lr=0.1),
    'MomentumSGD': lambda: optimizers.MomentumSGD(lr=0.1, momentum=0.9),
    'Adam': lambda: optimizers.Adam(alpha=0.01, weight_decay_rate=0.1),
}


def _add_other_hooks(optimizer):
    optimizer.add_hook(optimizer_hooks.WeightDecay(0.05))
    optimizer.add_hook(optimizer_hooks.GradientClipping(0.5))


def _warm_up(optimizer, net, device):
    """Three unfrozen steps: MomentumSGD's velocity, Adam's moments."""
    for x, t in _batches(3, device, seed=2):
        optimizer.update(_loss(net), x, t)


def _train(optimizer, net, device, steps=STEPS):
    for x, t in _batches(steps, device):
        optimizer.update(_loss(net), x, t)


# ---------------------------------------------------------------------------
# DelGradient
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('order', ['hooks_before', 'hooks_after'])
@pytest.mark.parametrize('opt_name', sorted(OPTIMIZERS))
def test_del_gradient_holds_params_bit_identical(device, order, opt_name):
    net = _net(device)
    optimizer = OPTIMIZERS[opt_name]().setup(net)
    if order == 'hooks_before':
        _add_other_hooks(optimizer)
    _warm_up(optimizer, net, device)
    if opt_name == 'MomentumSGD':
        v = net.conv1.W.update_rule.state['v']
        assert float(abs(_cpu(v)).max()) > 0   # momentum to resist
    hook = DelGradient(FROZEN)
    optimizer.add_hook(hook)
    if order == 'hooks_after':
        _add_other_hooks(optimizer)
    frozen = _snapshot(net, FROZEN)
    trained = _snapshot(net, TRAINED)

    _train(optimizer, net, device)

    after = _snapshot(net, FROZEN)
    # An optimizer hook cannot keep BN statistics still: forward moves them.
    for key in [k for k in frozen if k.endswith(('avg_mean', 'avg_var'))]:
        assert not numpy.array_equal(frozen.pop(key), after.pop(key))
    _assert_identical(frozen, after)
    _assert_all_changed(trained, _snapshot(net, TRAINED))


@pytest.mark.parametrize('device', DEVICES)
def test_del_gradient_zeroes_grads_in_place(device):
    net = _net(device)
    optimizer = optimizers.SGD(lr=0.1).setup(net)
    hook = DelGradient(FROZEN)
    optimizer.add_hook(hook)
    optimizer.add_hook(optimizer_hooks.GradientClipping(0.5))
    (x, t), = _batches(1, device)
    loss = _loss(net)(x, t)
    net.cleargrads()
    loss.backward()
    grads = {path: param.grad for path, param in net.namedparams()}
    assert float(abs(_cpu(grads['/conv1/W'])).max()) > 0
    optimizer.update()
    for path, param in net.namedparams():
        assert param.grad is grads[path], path      # the same arrays
        if path.split('/')[1] in FROZEN:
            assert not _cpu(param.grad).any(), path
    assert [p for p, _ in hook.params] == [
        'bn1/beta', 'bn1/gamma', 'conv1/W', 'conv1/b']


def test_del_gradient_none_grads_and_uninitialized_params():
    net = _net()
    with net.init_scope():
        net.extra = L.Linear(None, 2)     # never initialized, grad None
    optimizer = optimizers.MomentumSGD().setup(net)
    hook = DelGradient(['conv1', 'extra'])
    net.cleargrads()
    hook(optimizer)                        # every grad is None: no error
    assert net.conv1.W.grad is None
    assert not net.conv1.W.update_rule.enabled
    assert not net.extra.W.update_rule.enabled
    optimizer.add_hook(hook)
    _train(optimizer, net, '@numpy', steps=2)


def test_del_gradient_patterns():
    net = _net()
    # Whole components, never substrings: conv1 is not conv10 or conv1_1.
    hook = DelGradient('conv1', model=net)
    assert [p for p, _ in hook.params] == ['conv1/W', 'conv1/b']
    hook = DelGradient(['conv1*'], model=net)
    assert sorted(p for p, _ in hook.params) == [
        'conv1/W', 'conv1/b', 'conv10/W', 'conv10/b', 'conv1_1/W',
        'conv1_1/b']
    hook = DelGradient(['conv1_?', 'bn*'], model=net)
    assert sorted(p for p, _ in hook.params) == [
        'bn1/beta', 'bn1/gamma', 'conv1_1/W', 'conv1_1/b']


def test_del_gradient_unknown_target_raises():
    net = _net()
    with pytest.raises(LinkNotFoundError, match='conv2'):
        DelGradient(['conv1', 'conv2'], model=net)
    # Without a model: at the first call, before any update.
    optimizer = optimizers.SGD().setup(net)
    optimizer.add_hook(DelGradient(['conv2']))
    before = {k: p.array.copy() for k, p in net.namedparams()}
    (x, t), = _batches(1)
    with pytest.raises(LinkNotFoundError, match='conv2'):
        optimizer.update(_loss(net), x, t)
    for key, param in net.namedparams():     # raised before any update
        assert param.array.tobytes() == before[key].tobytes(), key
    with pytest.raises(TypeError):
        DelGradient([1])


def test_del_gradient_holds_against_enable_update_and_release():
    net = _net()
    optimizer = optimizers.MomentumSGD(lr=0.1).setup(net)
    _warm_up(optimizer, net, '@numpy')
    hook = DelGradient(FROZEN, name='hold')
    optimizer.add_hook(hook)
    _train(optimizer, net, '@numpy', steps=1)
    net.enable_update()       # elsewhere; the hook re-disables
    frozen = _snapshot(net, FROZEN)
    _train(optimizer, net, '@numpy', steps=3)
    after = _snapshot(net, FROZEN)
    for key in list(frozen):
        if key.endswith(('avg_mean', 'avg_var')):
            del frozen[key], after[key]
    _assert_identical(frozen, after)

    hook.release(optimizer)
    assert 'hold' not in optimizer._hookable._pre_update_hooks
    assert net.conv1.W.update_rule.enabled
    _train(optimizer, net, '@numpy', steps=2)
    _assert_all_changed(frozen, _snapshot(net, FROZEN))


def test_del_gradient_rules_disabled_before_loading_a_snapshot(tmp_path):
    net = _net()
    optimizer = optimizers.MomentumSGD().setup(net)
    optimizer.add_hook(DelGradient(FROZEN))
    _train(optimizer, net, '@numpy', steps=2)      # frozen: no state
    assert net.conv1.W.update_rule.state is None
    serializers.save_npz(str(tmp_path / 'opt.npz'), optimizer)

    net2 = _net()
    optimizer2 = optimizers.MomentumSGD().setup(net2)
    with pytest.raises(KeyError):       # Chainer: enabled rule, no state
        serializers.load_npz(str(tmp_path / 'opt.npz'), optimizer2)
    optimizer2 = optimizers.MomentumSGD().setup(net2)
    hook = DelGradient(FROZEN)
    optimizer2.add_hook(hook)
    hook.resolve(optimizer2)
    serializers.load_npz(str(tmp_path / 'opt.npz'), optimizer2)
    _train(optimizer2, net2, '@numpy', steps=1)


# The recipe found in many Chainer fine-tuning posts: it rebinds a local
# name (and matches substrings), so it freezes nothing.
class _PopularDelGradient(object):
    name = 'DelGradient'

    def __init__(self, del_targets):
        self.del_targets = del_targets

    def __call__(self, opt):
        for name, param in opt.target.namedparams():
            for d in self.del_targets:
                if d in name:
                    grad = param.grad
                    with chainer.using_device(param.device):
                        grad = 0  # noqa: F841


# A hook that zeroes in place but leaves the update rules on.
class _ZeroOnly(object):
    name = 'ZeroOnly'

    def __call__(self, opt):
        for name, param in opt.target.namedparams():
            if name.split('/')[1] in FROZEN and param.grad is not None:
                param.grad.fill(0)


def test_popular_recipe_does_not_freeze():
    """Documented contrast: the frozen parameters DO move."""
    net = _net()
    optimizer = optimizers.SGD(lr=0.1).setup(net)
    optimizer.add_hook(_PopularDelGradient(['conv1']))
    before = _snapshot(net, ['conv1'])
    _train(optimizer, net, '@numpy', steps=3)
    _assert_all_changed(before, _snapshot(net, ['conv1']))


@pytest.mark.parametrize('opt_name', ['MomentumSGD', 'Adam'])
def test_zeroing_alone_does_not_freeze(opt_name):
    """Documented contrast: momentum and Adam's weight decay move them."""
    net = _net()
    optimizer = OPTIMIZERS[opt_name]().setup(net)
    _warm_up(optimizer, net, '@numpy')
    optimizer.add_hook(_ZeroOnly())
    before = _snapshot(net, ['conv1'])
    _train(optimizer, net, '@numpy', steps=3)
    _assert_all_changed(before, _snapshot(net, ['conv1']))


# ---------------------------------------------------------------------------
# freeze / unfreeze
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('order', ['hooks_before', 'hooks_after'])
@pytest.mark.parametrize('opt_name', sorted(OPTIMIZERS))
def test_freeze_holds_params_and_statistics_bit_identical(device, order,
                                                          opt_name):
    net = _net(device)
    optimizer = OPTIMIZERS[opt_name]().setup(net)
    if order == 'hooks_before':
        _add_other_hooks(optimizer)
    _warm_up(optimizer, net, device)
    assert freeze(net, FROZEN) == ['bn1', 'conv1']
    if order == 'hooks_after':
        _add_other_hooks(optimizer)
    frozen = _snapshot(net, FROZEN)
    trained = _snapshot(net, TRAINED)

    _train(optimizer, net, device)

    _assert_identical(frozen, _snapshot(net, FROZEN))
    _assert_all_changed(trained, _snapshot(net, TRAINED))


def test_freeze_before_optimizer_setup_and_unfreeze_later():
    net = _net()
    freeze(net, FROZEN)                 # no update rules yet
    optimizer = optimizers.Adam(weight_decay_rate=0.1).setup(net)
    _add_other_hooks(optimizer)
    assert net.conv1.W.update_rule.enabled     # setup made new rules...
    frozen = _snapshot(net, FROZEN)
    _train(optimizer, net, '@numpy', steps=5)
    _assert_identical(frozen, _snapshot(net, FROZEN))   # ...disabled
    assert not net.conv1.W.update_rule.enabled
    assert net.conv1.W.update_rule.state is None

    assert unfreeze(net, FROZEN) == ['bn1', 'conv1']
    assert frozen_paths(net) == []
    assert 'forward' not in net.conv1.__dict__
    _train(optimizer, net, '@numpy', steps=3)   # state made lazily
    assert set(net.conv1.W.update_rule.state) == {'m', 'v'}
    after = _snapshot(net, FROZEN)
    _assert_all_changed(frozen, after)
    for key in ('/bn1/avg_mean', '/bn1/avg_var'):   # statistics move again
        assert not numpy.array_equal(frozen[key], after[key])


def test_freeze_is_idempotent_and_patterns_are_components():
    net = _net()
    assert freeze(net, 'conv1') == ['conv1']
    wrapper = net.conv1.__dict__['forward']
    assert freeze(net, ['conv1']) == ['conv1']
    assert net.conv1.__dict__['forward'] is wrapper
    assert frozen_paths(net) == ['conv1']      # not conv10, conv1_1
    assert freeze(net, 'conv1_*') == ['conv1_1']
    assert frozen_paths(net) == ['conv1', 'conv1_1']
    with pytest.raises(LinkNotFoundError, match='conv2'):
        freeze(net, ['conv10', 'conv2'])
    assert frozen_paths(net) == ['conv1', 'conv1_1']   # nothing half-done
    with pytest.raises(LinkNotFoundError):
        unfreeze(net, 'nothing')
    unfreeze(net, 'conv*')
    assert frozen_paths(net) == []
    unfreeze(net, 'conv*')                     # again: no error


def _graph_functions(loss):
    graph = computational_graph.build_computational_graph([loss])
    return [node for node in graph.nodes
            if isinstance(node, chainer.FunctionNode)]


def test_frozen_prefix_builds_no_graph():
    net = _net()
    freeze(net, ['conv1', 'bn1', 'conv1_1'])
    (x, t), = _batches(1)
    loss = _loss(net)(x, t)
    net.cleargrads()
    loss.backward()
    for path, param in net.namedparams():
        frozen = path.split('/')[1] in ('conv1', 'bn1', 'conv1_1')
        assert (param.grad is None) == frozen, path     # never computed
    names = sorted(type(f).__name__ for f in _graph_functions(loss))
    # conv10 (the first trained link) onwards; nothing of the prefix.
    assert names.count('Convolution2DFunction') == 1
    assert 'FixedBatchNormalization' not in names
    assert 'BatchNormalization' not in names


def test_frozen_link_after_a_trained_one_passes_gradients():
    net = _net()
    freeze(net, ['bn1', 'conv1_1'])      # conv1 before them is trained
    (x, t), = _batches(1)
    loss = _loss(net)(x, t)
    net.cleargrads()
    loss.backward()
    assert net.conv1.W.grad is not None and _cpu(net.conv1.W.grad).any()
    names = [type(f).__name__ for f in _graph_functions(loss)]
    assert 'FixedBatchNormalization' in names  # inference-mode BN in graph


def test_link_with_own_call_warns(caplog):
    class OldStyle(chainer.Chain):
        def __init__(self):
            super(OldStyle, self).__init__()
            with self.init_scope():
                self.fc = L.Linear(3, 2)

        def __call__(self, x):
            return self.fc(x)

    class Model(chainer.Chain):
        def __init__(self):
            super(Model, self).__init__()
            with self.init_scope():
                self.block = OldStyle()

    model = Model()
    optimizer = optimizers.SGD().setup(model)
    with caplog.at_level('WARNING', logger='chainer_finetune.freeze'):
        freeze(model, 'block')
    assert 'OldStyle defines __call__' in caplog.text
    assert not model.block.fc.W.update_rule.enabled
    assert frozen_paths(model) == ['block/fc']     # its children are
    del optimizer


def test_variable_input_that_wants_its_gradient_gets_it():
    net = _net()
    freeze(net, FROZEN)
    (x, t), = _batches(1)
    x = chainer.Variable(x)                  # requires_grad=True
    F.sum(net(x)).backward()
    assert x.grad is not None and _cpu(x.grad).any()
    x = chainer.Variable(x.array, requires_grad=False)
    y = net.conv1(x)
    assert y.creator is None and not y.requires_grad


def test_frozen_batch_norm_statistics_in_train_mode():
    net = _net()
    freeze(net, 'bn1')
    (x, _), = _batches(1)
    before = _snapshot(net, ['bn1'])
    with chainer.using_config('train', True):
        y_train = net.bn1(net.conv1(x))
    _assert_identical(before, _snapshot(net, ['bn1']))
    with chainer.using_config('train', False):
        y_test = net.bn1(net.conv1(x))
    numpy.testing.assert_array_equal(y_train.array, y_test.array)
    unfreeze(net, 'bn1')
    with chainer.using_config('train', True):
        net.bn1(net.conv1(x))
    after = _snapshot(net, ['bn1'])
    assert not numpy.array_equal(before['/bn1/avg_mean'],
                                 after['/bn1/avg_mean'])


def test_freeze_chain_and_unfreeze_a_child():
    class Outer(chainer.Chain):
        def __init__(self):
            super(Outer, self).__init__()
            with self.init_scope():
                self.features = Net()
                self.head = L.Linear(3, 2)

        def forward(self, x):
            return self.head(self.features(x))

    numpy.random.seed(0)
    model = Outer()
    assert freeze(model, 'features') == ['features']
    assert frozen_paths(model) == [
        'features', 'features/bn1', 'features/conv1', 'features/conv10',
        'features/conv1_1', 'features/fc']
    (x, _), = _batches(1)
    model.cleargrads()
    F.sum(model(x)).backward()
    assert all(p.grad is None for p in model.features.params())
    assert model.head.W.grad is not None

    unfreeze(model, 'features/fc')        # fc needs the graph again
    model.cleargrads()
    F.sum(model(x)).backward()
    assert model.features.fc.W.grad is not None
    assert model.features.conv10.W.grad is None
    assert model.features.fc.W.update_rule is None      # no optimizer
    optimizer = optimizers.SGD().setup(model)
    model(x)
    assert model.features.fc.W.update_rule.enabled
    assert not model.features.conv10.W.update_rule.enabled


def test_frozen_model_pickles_and_copies():
    net = _net()
    optimizer = optimizers.MomentumSGD().setup(net)
    freeze(net, FROZEN)
    (x, t), = _batches(1)
    with chainer.using_config('train', False):
        expected = net(x).array
    copies = {
        'pickle': pickle.loads(pickle.dumps(net)),
        'deepcopy': copy.deepcopy(net),
        'copy(share)': net.copy(),
        'copy(copy)': net.copy(mode='copy'),
    }
    for how, other in copies.items():
        assert frozen_paths(other) == ['bn1', 'conv1'], how
        for name in FROZEN:
            link = getattr(other, name)
            # Bound to the copy, not to the original.
            assert link.__dict__['forward'].link is link, how
            assert link.__dict__['copy'].link is link, how
        with chainer.using_config('train', False):
            numpy.testing.assert_array_equal(other(x).array, expected)
        before = _snapshot(other, FROZEN)
        other.cleargrads()
        loss = _loss(other)(x, t)
        loss.backward()
        assert other.conv1.W.grad is None, how
        assert other.fc.W.grad is not None, how
        _assert_identical(before, _snapshot(other, FROZEN))
    # The share copy's BN computes with its own statistics arrays.
    shared = copies['copy(share)']
    shared.bn1.avg_mean = shared.bn1.avg_mean + 1
    assert not numpy.array_equal(shared.bn1(net.conv1(x)).array,
                                 net.bn1(net.conv1(x)).array)
    # Unfreezing a copy leaves the original frozen (a share copy shares
    # the update rules, which the original disables again when it runs).
    unfreeze(copies['deepcopy'], FROZEN)
    unfreeze(copies['copy(share)'], FROZEN)
    assert frozen_paths(net) == ['bn1', 'conv1']
    frozen = _snapshot(net, FROZEN)
    _train(optimizer, net, '@numpy', steps=2)
    _assert_identical(frozen, _snapshot(net, FROZEN))
    # A pickled optimizer + model keeps its frozen rules.
    net2, optimizer2 = pickle.loads(pickle.dumps((net, optimizer)))
    frozen = _snapshot(net2, FROZEN)
    _train(optimizer2, net2, '@numpy', steps=3)
    _assert_identical(frozen, _snapshot(net2, FROZEN))


def test_freeze_resume_from_snapshot(tmp_path):
    net = _net()
    optimizer = optimizers.MomentumSGD().setup(net)
    freeze(net, FROZEN)
    _train(optimizer, net, '@numpy', steps=2)
    serializers.save_npz(str(tmp_path / 'opt.npz'), optimizer)
    net2 = _net()
    optimizer2 = optimizers.MomentumSGD().setup(net2)
    freeze(net2, FROZEN)                  # before loading: rules disabled
    serializers.load_npz(str(tmp_path / 'opt.npz'), optimizer2)
    frozen = _snapshot(net2, FROZEN)
    _train(optimizer2, net2, '@numpy', steps=2)
    _assert_identical(frozen, _snapshot(net2, FROZEN))


# ---------------------------------------------------------------------------
# A CaffeNet: Caffe BatchNorm and Scale layers, parameterless layers between
# ---------------------------------------------------------------------------

@pytest.fixture
def caffe_net(tmp_path):
    rng = numpy.random.RandomState(0)

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(numpy.float32)

    w = NetWriter('small')
    w.input('data', (2, 3, 12, 12))
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[normal(4, 3, 3, 3), normal(4)])
    w.layer('bn1', 'BatchNorm', 'conv1', 'conv1',
            blobs=[normal(4), normal(4) ** 2 + 0.5,
                   numpy.ones(1, numpy.float32)])
    w.layer('scale1', 'Scale', 'conv1', 'conv1',
            params={'scale_param': {'bias_term': True}},
            blobs=[normal(4) + 1, normal(4)])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    w.layer('norm1', 'LRN', 'conv1', 'norm1',
            params={'lrn_param': {'local_size': 3}})
    w.layer('pool1', 'Pooling', 'norm1', 'pool1',
            params={'pooling_param': {'pool': 'MAX', 'kernel_size': 2,
                                      'stride': 2}})
    w.layer('conv2', 'Convolution', 'pool1', 'conv2',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[normal(4, 4, 3, 3), normal(4)])
    w.layer('relu2', 'ReLU', 'conv2', 'conv2')
    w.layer('fc3', 'InnerProduct', 'conv2', 'fc3',
            params={'inner_product_param': {'num_output': 3}},
            blobs=[normal(3, 4 * 3 * 3), normal(3)])
    path = tmp_path / 'small.caffemodel'
    w.write_caffemodel(str(path))
    return load_caffe(str(path))


def _caffe_loss(net, x, t):
    y, = net(inputs={'data': x}, outputs=['fc3'])
    return F.softmax_cross_entropy(y, t)


def test_caffe_net_frozen_prefix(caffe_net):
    net = caffe_net
    assert freeze(net, ['conv*', 'bn1', 'scale1']) == [
        'bn1', 'conv1', 'conv2', 'scale1']
    rng = numpy.random.RandomState(3)
    x = rng.standard_normal((2, 3, 12, 12)).astype('f')
    t = numpy.array([0, 2], numpy.int32)
    stats = (net.bn1.avg_mean.copy(), net.bn1.avg_var.copy())
    loss = _caffe_loss(net, x, t)
    net.cleargrads()
    loss.backward()
    assert [p for p, param in net.namedparams() if param.grad is not None] \
        == ['/fc3/W', '/fc3/b']
    names = sorted(type(f).__name__ for f in _graph_functions(loss))
    # fc3 (and the loss): the ReLU/LRN/pooling between frozen layers do not
    # restart the graph, and relu2 runs in place with the frozen conv2 on
    # the fast path (with Chainer's own functions it is a graph node).
    assert names == ['LinearFunction', 'Reshape', 'SoftmaxCrossEntropy']
    net.fast_path = False
    assert sorted(type(f).__name__ for f in _graph_functions(
        _caffe_loss(net, x, t))) == ['LinearFunction', 'ReLU', 'Reshape',
                                     'SoftmaxCrossEntropy']
    del net.fast_path
    numpy.testing.assert_array_equal(net.bn1.avg_mean, stats[0])
    numpy.testing.assert_array_equal(net.bn1.avg_var, stats[1])

    # A trained Scale between frozen layers: conv2 must pass its gradient.
    unfreeze(net, 'scale1')
    net.cleargrads()
    _caffe_loss(net, x, t).backward()
    assert net.scale1.W.grad is not None and net.conv2.W.grad is not None
    assert net.conv1.W.grad is None
    numpy.testing.assert_array_equal(net.bn1.avg_mean, stats[0])


def test_caffe_net_training_bit_identical(caffe_net):
    net = caffe_net
    optimizer = optimizers.MomentumSGD(lr=0.05).setup(net)
    _add_other_hooks(optimizer)
    rng = numpy.random.RandomState(4)
    data = [(rng.standard_normal((2, 3, 12, 12)).astype('f'),
             rng.randint(0, 3, 2).astype(numpy.int32)) for _ in range(5)]
    for x, t in data[:2]:
        optimizer.update(_caffe_loss, net, x, t)
    freeze(net, ['conv1', 'bn1', 'scale1'])
    frozen = {k: p.array.copy() for k, p in net.namedparams()}
    stats = (net.bn1.avg_mean.copy(), net.bn1.avg_var.copy())
    for x, t in data:
        optimizer.update(_caffe_loss, net, x, t)
    for key, param in net.namedparams():
        same = param.array.tobytes() == frozen[key].tobytes()
        assert same == key.startswith(('/conv1/', '/scale1/')), key
    assert net.bn1.avg_mean.tobytes() == stats[0].tobytes()
    assert net.bn1.avg_var.tobytes() == stats[1].tobytes()
    pickled = pickle.loads(pickle.dumps(net))
    assert frozen_paths(pickled) == ['bn1', 'conv1', 'scale1']
    # Unfreezing a copy leaves the original's layer functions wrapped.
    copied = net.copy()
    unfreeze(copied, 'scale1')
    x, t = data[0]
    net.cleargrads()
    _caffe_loss(net, x, t).backward()
    assert net.scale1.W.grad is None
    copied.cleargrads()
    _caffe_loss(copied, x, t).backward()
    assert copied.scale1.W.grad is not None


def test_caffe_net_freeze_before_setup(caffe_net):
    # scale1's link is never called (the layer reads its W and b): its
    # rules, created after freeze, are disabled by the layer wrapper.
    net = caffe_net
    freeze(net, ['conv1', 'bn1', 'scale1'])
    optimizer = optimizers.Adam(alpha=0.01, weight_decay_rate=0.1)
    optimizer.setup(net)
    _add_other_hooks(optimizer)
    frozen = {k: p.array.copy() for k, p in net.namedparams()}
    rng = numpy.random.RandomState(5)
    for _ in range(5):
        x = rng.standard_normal((2, 3, 12, 12)).astype('f')
        t = rng.randint(0, 3, 2).astype(numpy.int32)
        optimizer.update(_caffe_loss, net, x, t)
    for key, param in net.namedparams():
        same = param.array.tobytes() == frozen[key].tobytes()
        assert same == key.startswith(('/conv1/', '/scale1/')), key


# ---------------------------------------------------------------------------
# CaffeNet's seam for wrapping one layer's function (which freeze uses):
# wrap_layer_function runs a layer through a named wrapper,
# unwrap_layer_function takes it away, layer_function is the function as
# built and layer_wrappers lists the wrappers. Copies and pickles of a
# wrapped net keep its wrappers.
# ---------------------------------------------------------------------------

def _doubled(function, net, *xs):
    return tuple(2 * y for y in function(net, *xs))


def _plus_one(function, net, *xs):
    return tuple(y + 1 for y in function(net, *xs))


@pytest.fixture
def caffe_x():
    return numpy.random.RandomState(1).standard_normal(
        (2, 3, 12, 12)).astype(numpy.float32)


def _fc3(net, x):
    with chainer.using_config('train', False):
        y, = net(inputs={'data': x}, outputs=['fc3'])
    return y.array


def test_caffe_net_wrap_call_and_unwrap(caffe_net, caffe_x):
    net, x = caffe_net, caffe_x
    expected = _fc3(net, x)
    function = net.layer_function('fc3')
    assert net.layer_wrappers('fc3') == {}

    assert net.wrap_layer_function('fc3', 'double', _doubled) is None
    assert net.layer_wrappers('fc3') == {'double': _doubled}
    assert net.layer_function('fc3') is function
    numpy.testing.assert_allclose(_fc3(net, x), 2 * expected, rtol=1e-6)

    assert net.unwrap_layer_function('fc3', 'double') is _doubled
    assert net.layer_wrappers('fc3') == {}
    assert net.layer_function('fc3') is function
    numpy.testing.assert_array_equal(_fc3(net, x), expected)


def test_caffe_net_wrappers_nest_innermost_first(caffe_net, caffe_x):
    net, x = caffe_net, caffe_x
    expected = _fc3(net, x)
    net.wrap_layer_function('fc3', 'plus_one', _plus_one)
    net.wrap_layer_function('fc3', 'double', _doubled)
    assert list(net.layer_wrappers('fc3')) == ['plus_one', 'double']
    numpy.testing.assert_allclose(_fc3(net, x), 2 * (expected + 1),
                                  rtol=1e-6)
    # Removing the inner one keeps the outer one.
    net.unwrap_layer_function('fc3', 'plus_one')
    numpy.testing.assert_allclose(_fc3(net, x), 2 * expected, rtol=1e-6)


def test_caffe_net_wrap_errors(caffe_net):
    net = caffe_net
    net.wrap_layer_function('fc3', 'double', _doubled)
    with pytest.raises(KeyError, match='already has a wrapper'):
        net.wrap_layer_function('fc3', 'double', _plus_one)
    with pytest.raises(KeyError, match='no wrapper named'):
        net.unwrap_layer_function('fc3', 'plus_one')
    with pytest.raises(KeyError, match='no wrapper named'):
        net.unwrap_layer_function('conv1', 'double')
    for layer in ('nonexistent', 'data'):   # no layer; an input layer
        with pytest.raises(KeyError):
            net.wrap_layer_function(layer, 'double', _doubled)
        with pytest.raises(KeyError):
            net.layer_function(layer)
    assert net.layer_wrappers('fc3') == {'double': _doubled}


def test_caffe_net_copy_and_pickle_keep_wrappers(caffe_net, caffe_x):
    net, x = caffe_net, caffe_x
    expected = _fc3(net, x)
    net.wrap_layer_function('fc3', 'double', _doubled)
    for other in (net.copy(), net.copy(mode='copy'),
                  pickle.loads(pickle.dumps(net))):
        assert list(other.layer_wrappers('fc3')) == ['double']
        numpy.testing.assert_allclose(_fc3(other, x), 2 * expected,
                                      rtol=1e-6)
    # Unwrapping a copy leaves the original wrapped, and back.
    copied = net.copy()
    copied.unwrap_layer_function('fc3', 'double')
    numpy.testing.assert_array_equal(_fc3(copied, x), expected)
    numpy.testing.assert_allclose(_fc3(net, x), 2 * expected, rtol=1e-6)
    copied.wrap_layer_function('fc3', 'plus_one', _plus_one)
    assert list(net.layer_wrappers('fc3')) == ['double']


def test_caffe_net_batchnorm_settings_reach_a_wrapped_layer(caffe_net):
    net = caffe_net
    net.wrap_layer_function('bn1', 'double', _doubled)
    net.set_global_stats(True)
    assert net.layer_function('bn1').global_stats is True
    net.set_moving_average_fraction(0.5)
    assert net.layer_function('bn1').moving_average_fraction == 0.5


def test_caffe_net_freeze_wraps_through_the_seam(caffe_net, caffe_x):
    net, x = caffe_net, caffe_x
    expected = _fc3(net, x)
    net.wrap_layer_function('scale1', 'double', _doubled)
    freeze(net, ['scale1', 'fc3'])
    assert list(net.layer_wrappers('scale1')) == ['double', 'freeze']
    assert list(net.layer_wrappers('fc3')) == ['freeze']
    assert net.layer_wrappers('conv1') == {}
    unfreeze(net, ['scale1', 'fc3'])
    # The caller's own wrapper outlives freeze and unfreeze.
    assert list(net.layer_wrappers('scale1')) == ['double']
    assert net.layer_wrappers('fc3') == {}
    net.unwrap_layer_function('scale1', 'double')
    numpy.testing.assert_array_equal(_fc3(net, x), expected)


def test_trained_deconvolution_after_frozen_prefix():
    class Upsample(chainer.Chain):
        def __init__(self):
            super(Upsample, self).__init__()
            with self.init_scope():
                self.conv = L.Convolution2D(3, 4, 3)
                self.up = L.Deconvolution2D(4, 2, 4, stride=2)

        def forward(self, x):
            return self.up(F.relu(self.conv(x)))

    # Chainer 7.8.1's Deconvolution2DFunction.backward fails when its input
    # needs no gradient, which a frozen prefix causes; chainer_finetune's
    # compat patch repairs it. The weight gradient is the one computed
    # through the unfrozen model.
    numpy.random.seed(0)
    model = Upsample()
    (x, _), = _batches(1)
    model.cleargrads()  # Chainer fills fresh gradients with NaN
    F.sum(model(x) ** 2).backward()
    expected = model.up.W.grad.copy()
    model.cleargrads()
    freeze(model, 'conv')
    F.sum(model(x) ** 2).backward()
    assert model.conv.W.grad is None
    numpy.testing.assert_allclose(model.up.W.grad, expected, rtol=1e-5)
