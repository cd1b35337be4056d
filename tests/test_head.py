"""replace_head: a fresh classifier in place of a pretrained one."""

import logging

import chainer_finetune  # noqa: F401  (patches Chainer; must precede chainer)

import numpy
import pytest

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import optimizers

from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.caffe.weight_files import save_weights
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.errors import LinkNotFoundError
from chainer_finetune.head import DEFAULT_STD
from chainer_finetune.head import HeadError
from chainer_finetune.head import replace_head
from chainer_finetune.lr_mult import get_lr_mults
from chainer_finetune.lr_mult import ParamMults
from chainer_finetune.lr_mult import set_lr_mult

N, C, H = 2, 3, 6
FC7 = 16


@pytest.fixture
def net(tmp_path):
    """conv1 (3x3) -> relu -> fc7 (16) -> relu -> fc8 (1000) -> prob."""
    rng = numpy.random.RandomState(0)
    w = NetWriter('tiny')
    w.input('data', (N, C, H, H))
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rng.randn(4, C, 3, 3) * 0.3, rng.randn(4) * 0.1])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    w.layer('fc7', 'InnerProduct', 'conv1', 'fc7',
            params={'inner_product_param': {'num_output': FC7}},
            blobs=[rng.randn(FC7, 64) * 0.1, rng.randn(FC7) * 0.1])
    w.layer('relu7', 'ReLU', 'fc7', 'fc7')
    w.layer('fc8', 'InnerProduct', 'fc7', 'fc8',
            params={'inner_product_param': {'num_output': 1000}},
            blobs=[rng.randn(1000, FC7) * 0.01, rng.randn(1000) * 0.01])
    w.layer('prob', 'Softmax', 'fc8', 'prob')
    model, prototxt = tmp_path / 'tiny.caffemodel', tmp_path / 'tiny.prototxt'
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    return load_caffe(model, prototxt)


def _x():
    return numpy.random.RandomState(1).randn(N, C, H, H).astype(
        numpy.float32)


def _params(link):
    return {name: p.array.copy() for name, p in link.namedparams()}


def test_caffe_net_head(net):
    x = _x()
    fc7_before, = net(inputs={'data': x}, outputs=['fc7'])
    body = {name: a for name, a in _params(net).items()
            if not name.startswith('/fc8/')}
    old = net.fc8
    new = replace_head(net, 'fc8', 10, seed=0)

    assert isinstance(new, L.Linear) and new is not old
    assert net.fc8 is new and net['fc8'] is new
    assert new.W.shape == (10, FC7) and new.W.dtype == numpy.float32
    assert numpy.array_equal(new.b.array, numpy.zeros(10, numpy.float32))
    assert sorted(name for name, _ in net.namedlinks(skipself=True)) == \
        ['/conv1', '/fc7', '/fc8']
    # Earlier layers: same parameters, same activations.
    after = _params(net)
    for name, array in body.items():
        assert numpy.array_equal(after[name], array), name
    fc7_after, prob = net(inputs={'data': x}, outputs=['fc7', 'prob'])
    assert numpy.array_equal(fc7_after.array, fc7_before.array)
    # prob still follows the (new) fc8.
    assert prob.shape == (N, 10)
    expected = F.softmax(new(fc7_after)).array
    numpy.testing.assert_allclose(prob.array, expected, rtol=1e-6)
    numpy.testing.assert_allclose(prob.array.sum(axis=1), 1, rtol=1e-6)
    # The layer description follows the link.
    fc8, = [layer for layer in net.caffe_layers if layer.name == 'fc8']
    assert fc8.inner_product_param.num_output == 10


def test_new_head_trains(net):
    replace_head(net, 'fc8', 10, seed=0)
    opt = optimizers.MomentumSGD(lr=0.1)
    opt.setup(net)
    x, t = _x(), numpy.array([3, 7], numpy.int32)

    def loss():
        y, = net(inputs={'data': x}, outputs=['fc8'])
        return F.softmax_cross_entropy(y, t)

    first = float(loss().array)
    W = net.fc8.W.array.copy()
    net.cleargrads()
    loss().backward()
    assert numpy.abs(net.fc8.W.grad).max() > 0
    assert numpy.abs(net.fc8.b.grad).max() > 0
    assert numpy.abs(net.fc7.W.grad).max() > 0   # and below it
    for _ in range(10):
        opt.update(loss)
    assert not numpy.array_equal(net.fc8.W.array, W)
    assert float(loss().array) < first


def test_seed_and_initializers(net):
    a = replace_head(net, 'fc8', 10, seed=3).W.array.copy()
    b = replace_head(net, 'fc8', 10, seed=3).W.array.copy()
    c = replace_head(net, 'fc8', 10, seed=4).W.array.copy()
    assert numpy.array_equal(a, b) and not numpy.array_equal(a, c)
    chain = chainer.Chain()
    with chain.init_scope():
        chain.fc = L.Linear(400, 1000)
    W = replace_head(chain, 'fc', 300, seed=0).W.array
    assert abs(float(W.std()) - DEFAULT_STD) < 0.001
    assert abs(float(W.mean())) < 0.001
    ones = replace_head(net, 'fc8', 4, initialW=chainer.initializers.One(),
                        initial_bias=2.0)
    assert numpy.array_equal(ones.W.array, numpy.ones((4, FC7)))
    assert numpy.array_equal(ones.b.array, numpy.full(4, 2.0))
    with pytest.raises(ValueError, match='seed'):
        replace_head(net, 'fc8', 4, initialW=chainer.initializers.One(),
                     seed=0)
    with pytest.raises(ValueError, match='n_out'):
        replace_head(net, 'fc8', 0)


def test_export_after_replacing(net, tmp_path):
    replace_head(net, 'fc8', 10, seed=0)
    path = tmp_path / 'tuned.npz'
    save_weights(net, path)
    again = load_caffe(weights=path)
    assert again.fc8.W.shape == (10, FC7)
    x = _x()
    with chainer.using_config('train', False):
        want, = net(inputs={'data': x}, outputs=['prob'])
        got, = again(inputs={'data': x}, outputs=['prob'])
    numpy.testing.assert_array_equal(got.array, want.array)


def test_optimizer_already_set_up(net, caplog):
    opt = optimizers.MomentumSGD(lr=0.01)
    opt.setup(net)
    set_lr_mult(net, {'fc8': {'W': 10.0, 'b': 20.0}},
                decay_mults={'fc8/b': 0})
    new = replace_head(net, 'fc8', 10, optimizer=opt)
    # Update rules of the optimizer's kind, with the layer's multipliers.
    assert type(new.W.update_rule) is type(net.fc7.W.update_rule)
    assert new.W.update_rule.hyperparam.lr == pytest.approx(0.1)
    assert get_lr_mults(net)['fc8/b'] == ParamMults(20.0, 0.0)
    W = new.W.array.copy()
    x, t = _x(), numpy.array([3, 7], numpy.int32)
    opt.update(lambda: F.softmax_cross_entropy(
        net(inputs={'data': x}, outputs=['fc8'])[0], t))
    assert not numpy.array_equal(new.W.array, W)
    # Without the optimizer the new link cannot train: said at WARNING.
    with caplog.at_level(logging.WARNING, logger='chainer_finetune.head'):
        new = replace_head(net, 'fc8', 10)
    assert 'optimizer.setup' in caplog.text
    assert new.W.update_rule is None


class _Classifier(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.features = chainer.Sequential(
                L.Convolution2D(3, 8, 1), F.relu)
            self.head = chainer.Chain()
            with self.head.init_scope():
                self.head.fc = L.Linear(None, 5, nobias=True)
            self.conv_head = L.Convolution2D(8, 5, 1, pad=0)
            self.conv3 = L.Convolution2D(8, 5, 3)

    def forward(self, x):
        return self.head.fc(self.features(x))


def test_plain_chain():
    model = _Classifier()
    # An uninitialised Linear (in_size None) gets a lazy replacement.
    new = replace_head(model, 'head/fc', 7)
    assert model.head.fc is new and new.b is None and new.W.array is None
    assert model(_x()).shape == (N, 7)
    conv = replace_head(model, 'conv_head', 2, seed=0)
    assert isinstance(conv, L.Convolution2D) and conv.W.shape == (2, 8, 1, 1)
    assert model.conv_head is conv
    seq = replace_head(model, 'features/0', 4)
    assert model.features[0] is seq and seq.name == '0'
    assert seq.W.shape == (4, 3, 1, 1)
    assert [name for name, _ in model.features.namedlinks(skipself=True)] \
        == ['/0']


def test_float64_head():
    chain = chainer.Chain()
    with chain.init_scope(), chainer.using_config('dtype', numpy.float64):
        chain.fc = L.Linear(4, 6)
    assert chain.fc.W.dtype == numpy.float64
    new = replace_head(chain, 'fc', 3, seed=0)
    assert new.W.dtype == numpy.float64 and new.b.dtype == numpy.float64


def test_refused():
    model = _Classifier()
    with pytest.raises(HeadError, match='1x1'):
        replace_head(model, 'conv3', 2)
    with pytest.raises(HeadError, match='exactly one'):
        replace_head(model, 'conv*', 2)
    with pytest.raises(HeadError, match='Sequential'):
        replace_head(model, 'features', 2)
    with pytest.raises(LinkNotFoundError):
        replace_head(model, 'fc9', 2)


def test_caffe_name_with_slash_and_transposed_weights(tmp_path):
    rng = numpy.random.RandomState(0)
    w = NetWriter('googlenet_like')
    w.input('data', (N, 8))
    w.layer('loss3/classifier', 'InnerProduct', 'data', 'loss3/classifier',
            params={'inner_product_param': {'num_output': 1000,
                                            'transpose': True}},
            blobs=[rng.randn(8, 1000) * 0.01, rng.randn(1000) * 0.01])
    w.layer('prob', 'Softmax', 'loss3/classifier', 'prob')
    model, prototxt = tmp_path / 'g.caffemodel', tmp_path / 'g.prototxt'
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    net = load_caffe(model, prototxt)
    new = replace_head(net, 'loss3/classifier', 6, seed=1)
    assert net.loss3_classifier is new and new.W.shape == (6, 8)
    x = numpy.random.RandomState(2).randn(N, 8).astype(numpy.float32)
    prob, = net(inputs={'data': x}, outputs=['prob'])
    assert prob.shape == (N, 6)
    save_weights(net, tmp_path / 'g.npz')
    again = load_caffe(weights=tmp_path / 'g.npz')
    got, = again(inputs={'data': x}, outputs=['prob'])
    numpy.testing.assert_array_equal(got.array, prob.array)
