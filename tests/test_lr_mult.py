"""Learning-rate / weight-decay multipliers: closed forms, schedules, Caffe
ParamSpecs (V1 and V2) and the flickr_style recipe."""

import copy
import pickle

import chainer_finetune  # noqa: F401  (patches Chainer; must precede chainer)

import numpy
import pytest

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import optimizer_hooks
from chainer import optimizers
from chainer import training
from chainer.training import extensions

from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.errors import CaffeModelError
from chainer_finetune.errors import LinkNotFoundError
from chainer_finetune.lr_mult import MultipliedHyperparameter
from chainer_finetune.lr_mult import OptimizerNotSetUpError
from chainer_finetune.lr_mult import ParamMults
from chainer_finetune.lr_mult import UnsupportedOptimizerError
from chainer_finetune.lr_mult import WeightDecayMult
from chainer_finetune.lr_mult import get_lr_mults
from chainer_finetune.lr_mult import lr_mults_from_prototxt
from chainer_finetune.lr_mult import set_lr_mult

BATCH, N_IN, N_OUT = 4, 3, 2


class _Twins(chainer.Chain):
    """Two identical Linear links; the loss is linear in the parameters, so
    every step sees the same gradient for both, whatever their values."""

    def __init__(self, seed=0):
        super().__init__()
        rng = numpy.random.RandomState(seed)
        W = rng.randn(N_OUT, N_IN).astype(numpy.float32)
        b = rng.randn(N_OUT).astype(numpy.float32)
        with self.init_scope():
            self.a = L.Linear(N_IN, N_OUT, initialW=W, initial_bias=b)
            self.b = L.Linear(N_IN, N_OUT, initialW=W, initial_bias=b)

    def forward(self, x):
        return F.sum(self.a(x)) + F.sum(self.b(x))


def _x():
    return numpy.random.RandomState(1).randn(BATCH, N_IN).astype(
        numpy.float32)


def _grads(x):
    """d loss / d W and d loss / d b of either twin."""
    return (numpy.ones((N_OUT, 1), numpy.float32) * x.sum(axis=0),
            numpy.full(N_OUT, BATCH, numpy.float32))


def _snapshot(model):
    return {name: p.array.copy() for name, p in model.namedparams()}


def _steps(model, optimizer, x, n=1):
    before = _snapshot(model)
    for _ in range(n):
        optimizer.update(model, x)
    after = _snapshot(model)
    return {name: after[name] - before[name] for name in after}


# --------------------------------------------------------------------------
# lr_mult
# --------------------------------------------------------------------------

def test_sgd_closed_form():
    model, x = _Twins(), _x()
    opt = optimizers.SGD(lr=0.1)
    opt.setup(model)
    set_lr_mult(model, {'b': 10.0})
    delta = _steps(model, opt, x)
    gW, gb = _grads(x)
    numpy.testing.assert_allclose(delta['/a/W'], -0.1 * gW, rtol=1e-6)
    numpy.testing.assert_allclose(delta['/a/b'], -0.1 * gb, rtol=1e-6)
    numpy.testing.assert_allclose(delta['/b/W'], -1.0 * gW, rtol=1e-5)
    numpy.testing.assert_allclose(delta['/b/b'], -1.0 * gb, rtol=1e-5)
    numpy.testing.assert_allclose(delta['/b/W'], 10 * delta['/a/W'],
                                  rtol=1e-5)


@pytest.mark.parametrize('make', [
    lambda: optimizers.MomentumSGD(lr=0.05, momentum=0.9),
    lambda: optimizers.Adam(alpha=0.01),
    lambda: optimizers.AdamW(alpha=0.01),
    lambda: optimizers.AMSGrad(alpha=0.01),
    lambda: optimizers.AdaBound(alpha=0.01, final_lr=0.05, gamma=1.0),
    lambda: optimizers.NesterovAG(lr=0.05),
    lambda: optimizers.RMSprop(lr=0.01),
], ids=['MomentumSGD', 'Adam', 'AdamW', 'AMSGrad', 'AdaBound',
        'NesterovAG', 'RMSprop'])
def test_ten_times_the_step(make):
    model, x = _Twins(), _x()
    opt = make()
    opt.setup(model)
    set_lr_mult(model, {'b': 10.0})
    delta = _steps(model, opt, x, n=3)
    for name in ('W', 'b'):
        a, b = delta['/a/' + name], delta['/b/' + name]
        assert numpy.abs(a).min() > 0
        numpy.testing.assert_allclose(b, 10 * a, rtol=1e-5)


def test_momentum_sgd_closed_form():
    model, x = _Twins(), _x()
    opt = optimizers.MomentumSGD(lr=0.05, momentum=0.9)
    opt.setup(model)
    set_lr_mult(model, {'b': 10.0})
    delta = _steps(model, opt, x, n=2)
    gW, _ = _grads(x)
    # v1 = -lr g, v2 = 0.9 v1 - lr g: two steps move -2.9 lr g.
    numpy.testing.assert_allclose(delta['/b/W'], -2.9 * 0.5 * gW, rtol=1e-5)


def test_adam_scales_alpha_not_eta():
    model = _Twins()
    opt = optimizers.Adam(alpha=0.01, eta=0.5)
    opt.setup(model)
    set_lr_mult(model, {'b': 10.0})
    hp = model.b.W.update_rule.hyperparam
    assert isinstance(hp, MultipliedHyperparameter)
    assert hp.alpha == pytest.approx(0.1)
    assert hp.eta == 0.5
    assert model.a.W.update_rule.hyperparam.alpha == 0.01
    # One Adam step moves every element by about eta * alpha_t.
    delta = _steps(model, opt, _x())
    numpy.testing.assert_allclose(numpy.abs(delta['/b/W']),
                                  0.5 * 0.1 * numpy.ones((N_OUT, N_IN)),
                                  rtol=1e-4)


def test_per_parameter_and_per_key_forms():
    model = _Twins()
    optimizers.SGD(lr=1.0).setup(model)
    applied = set_lr_mult(model, {'a': {'W': 2.0, 'b': 3.0}, 'b/b': 4.0,
                                  'b/W': ParamMults(5.0, 0.5)})
    assert applied == {'a/W': ParamMults(2.0, 1.0),
                       'a/b': ParamMults(3.0, 1.0),
                       'b/W': ParamMults(5.0, 0.5),
                       'b/b': ParamMults(4.0, 1.0)}
    assert model.a.b.update_rule.hyperparam.lr == 3.0
    assert get_lr_mults(model) == applied


def test_later_keys_override_and_setting_again_does_not_compound():
    model = _Twins()
    opt = optimizers.SGD(lr=0.5)
    opt.setup(model)
    set_lr_mult(model, {'*': 0.1, 'b': 2.0})
    assert model.a.W.update_rule.hyperparam.lr == pytest.approx(0.05)
    assert model.b.W.update_rule.hyperparam.lr == pytest.approx(1.0)
    set_lr_mult(model, {'b': 3.0}, decay_mults={'b/b': 0})
    assert model.b.W.update_rule.hyperparam.lr == pytest.approx(1.5)
    assert get_lr_mults(model)['b/b'] == ParamMults(3.0, 0.0)
    # decay_mults alone leave lr_mult as it was.
    set_lr_mult(model, {}, decay_mults={'a': 2.0})
    assert get_lr_mults(model)['a/W'] == ParamMults(0.1, 2.0)


def test_hyperparameter_reads_the_current_parent_value():
    model = _Twins()
    opt = optimizers.MomentumSGD(lr=0.1)
    opt.setup(model)
    set_lr_mult(model, {'b': 10.0})
    opt.lr = 0.01
    hp = model.b.W.update_rule.hyperparam
    assert hp.lr == pytest.approx(0.1)
    assert hp.momentum == 0.9
    assert hp.get_dict()['lr'] == pytest.approx(0.1)
    assert hp.get_dict()['lr_mult'] == 10.0
    # Copies and pickles (e.g. of a whole model) keep working.
    for clone in (copy.deepcopy(hp), pickle.loads(pickle.dumps(hp))):
        assert clone.lr == pytest.approx(0.1)


def test_exponential_shift_still_applies():
    model, x = _Twins(), _x()
    opt = optimizers.SGD(lr=0.1)
    opt.setup(model)
    set_lr_mult(model, {'b': 10.0})
    it = chainer.iterators.SerialIterator([x_i for x_i in x], BATCH,
                                          shuffle=False)
    updater = training.StandardUpdater(
        it, opt, loss_func=lambda x: model(x))
    trainer = training.Trainer(updater, (3, 'iteration'))
    trainer.extend(extensions.ExponentialShift('lr', 0.5),
                   trigger=(1, 'iteration'))
    steps = []
    last = [_snapshot(model)]

    @training.make_extension(trigger=(1, 'iteration'),
                             priority=training.PRIORITY_WRITER)
    def record(trainer):
        now = _snapshot(model)
        steps.append({k: now[k] - last[0][k] for k in now})
        last[0] = now

    trainer.extend(record)
    trainer.run()
    gW, _ = _grads(x)
    for k, step in enumerate(steps):
        lr = 0.1 * 0.5 ** k
        numpy.testing.assert_allclose(step['/a/W'], -lr * gW, rtol=1e-5)
        numpy.testing.assert_allclose(step['/b/W'], -10 * lr * gW,
                                      rtol=1e-5)


# --------------------------------------------------------------------------
# decay_mult
# --------------------------------------------------------------------------

class _Zero(_Twins):
    """Zero gradients: only weight decay moves anything."""

    def forward(self, x):
        return 0 * (F.sum(self.a(x)) + F.sum(self.b(x)))


@pytest.mark.parametrize('make', [
    lambda: optimizers.SGD(lr=0.1),
    lambda: optimizers.MomentumSGD(lr=0.1),
], ids=['SGD', 'MomentumSGD'])
def test_weight_decay_mult(make):
    model = _Zero()
    opt = make()
    opt.setup(model)
    opt.add_hook(WeightDecayMult(0.01))
    set_lr_mult(model, {'a': 2.0}, decay_mults={'a/b': 0, 'b/W': 3.0})
    before = _snapshot(model)
    _steps(model, opt, _x())
    after = _snapshot(model)
    assert numpy.array_equal(after['/a/b'], before['/a/b'])
    # lr 0.1 x lr_mult x rate 0.01 x decay_mult
    for name, factor in [('/a/W', 0.1 * 2 * 0.01 * 1),
                         ('/b/W', 0.1 * 1 * 0.01 * 3),
                         ('/b/b', 0.1 * 1 * 0.01 * 1)]:
        numpy.testing.assert_allclose(after[name],
                                      (1 - factor) * before[name],
                                      rtol=1e-6, err_msg=name)


def test_weight_decay_mult_replaces_chainers_hook():
    model = _Zero()
    opt = optimizers.SGD()
    opt.setup(model)
    opt.add_hook(optimizer_hooks.WeightDecay(0.01))
    with pytest.raises(KeyError, match='WeightDecay'):
        opt.add_hook(WeightDecayMult(0.01))


def test_adam_weight_decay_rate_scaled_by_decay_mult():
    model = _Zero()
    opt = optimizers.AdamW(alpha=0.01, weight_decay_rate=0.1)
    opt.setup(model)
    set_lr_mult(model, {'a': 0.0}, decay_mults={'b/b': 0.0, 'b/W': 2.0})
    before = _snapshot(model)
    _steps(model, opt, _x())
    after = _snapshot(model)
    # lr_mult 0: nothing moves, decoupled decay included (Caffe).
    for name in ('/a/W', '/a/b', '/b/b'):
        assert numpy.array_equal(after[name], before[name]), name
    numpy.testing.assert_allclose(after['/b/W'], 0.8 * before['/b/W'],
                                  rtol=1e-6)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

def test_before_setup_is_an_error():
    model = _Twins()
    with pytest.raises(OptimizerNotSetUpError, match='optimizer.setup'):
        set_lr_mult(model, {'a': 2.0})


def test_optimizer_without_learning_rate():
    model = _Twins()
    optimizers.AdaDelta().setup(model)
    with pytest.raises(UnsupportedOptimizerError, match='AdaDeltaRule'):
        set_lr_mult(model, {'a': 2.0})
    assert get_lr_mults(model) == {}


@pytest.mark.parametrize('mults,error', [
    ({'c': 1.0}, LinkNotFoundError),
    ({'a/X': 1.0}, LinkNotFoundError),
    ({'a': {'X': 1.0}}, LinkNotFoundError),
    ({'a': -1.0}, ValueError),
    ({'a': float('nan')}, ValueError),
    ({'a': '2'}, TypeError),
    ({'a': True}, TypeError),
])
def test_bad_multipliers(mults, error):
    model = _Twins()
    optimizers.SGD().setup(model)
    with pytest.raises(error):
        set_lr_mult(model, mults)
    assert get_lr_mults(model) == {}


# --------------------------------------------------------------------------
# Caffe ParamSpecs
# --------------------------------------------------------------------------

SPECS = [{'lr_mult': 1, 'decay_mult': 1}, {'lr_mult': 2, 'decay_mult': 0}]
FC8_SPECS = [{'lr_mult': 10, 'decay_mult': 1},
             {'lr_mult': 20, 'decay_mult': 0}]


def _writer(v1=False):
    """conv1 (1/1, 2/0), conv2 (0.1, bias default), [bn + scale + prelu,
    V2 only], fc7 (no specs), fc8 (10/1, 20/0), prob."""
    rng = numpy.random.RandomState(0)
    w = NetWriter('specs')
    w.input('data', (2, 3, 8, 8), form='input_dim' if v1 else 'layer')
    w.layer('conv1/3x3', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rng.randn(4, 3, 3, 3), rng.randn(4)], param_specs=SPECS)
    w.layer('conv2', 'Convolution', 'conv1', 'conv2',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rng.randn(4, 4, 3, 3), rng.randn(4)],
            param_specs=[{'lr_mult': 0.1}])
    if not v1:
        w.layer('bn2', 'BatchNorm', 'conv2', 'conv2',
                blobs=[rng.randn(4), rng.uniform(1, 2, 4), [1.0]],
                param_specs=[{'lr_mult': 0}] * 3)
        w.layer('scale2', 'Scale', 'conv2', 'conv2',
                params={'scale_param': {'bias_term': True}},
                blobs=[rng.uniform(1, 2, 4), rng.randn(4)],
                param_specs=[{'lr_mult': 3, 'decay_mult': 0.5}])
        w.layer('prelu2', 'PReLU', 'conv2', 'conv2', blobs=[rng.randn(4)],
                param_specs=[{'lr_mult': 4, 'decay_mult': 0}])
    w.layer('fc7', 'InnerProduct', 'conv2', 'fc7',
            params={'inner_product_param': {'num_output': 6}},
            blobs=[rng.randn(6, 64) * 0.1, rng.randn(6)])
    w.layer('fc8', 'InnerProduct', 'fc7', 'fc8',
            params={'inner_product_param': {'num_output': 5}},
            blobs=[rng.randn(5, 6), rng.randn(5)], param_specs=FC8_SPECS)
    w.layer('prob', 'Softmax', 'fc8', 'prob')
    return w


EXPECTED_V1 = {
    'conv1/3x3': {'W': ParamMults(1.0, 1.0), 'b': ParamMults(2.0, 0.0)},
    'conv2': {'W': ParamMults(0.1, 1.0), 'b': ParamMults(1.0, 1.0)},
    'fc7': {'W': ParamMults(1.0, 1.0), 'b': ParamMults(1.0, 1.0)},
    'fc8': {'W': ParamMults(10.0, 1.0), 'b': ParamMults(20.0, 0.0)},
}
EXPECTED_V2 = dict(EXPECTED_V1, **{
    'scale2': {'W': ParamMults(3.0, 0.5), 'b': ParamMults(1.0, 1.0)},
    'prelu2': {'W': ParamMults(4.0, 0.0)},
})


def test_v2_prototxt(tmp_path):
    path = tmp_path / 'train_val.prototxt'
    _writer().write_prototxt(path)
    assert 'lr_mult: 10' in path.read_text()
    assert lr_mults_from_prototxt(path) == EXPECTED_V2
    assert lr_mults_from_prototxt(str(path)) == EXPECTED_V2


def test_v1_prototxt_blobs_lr_and_weight_decay(tmp_path):
    path = tmp_path / 'train_val_v1.prototxt'
    _writer(v1=True).write_prototxt(path, version=1)
    text = path.read_text()
    assert 'blobs_lr: 10' in text and 'weight_decay: 0' in text
    assert 'lr_mult' not in text
    assert lr_mults_from_prototxt(path) == EXPECTED_V1


def _load(tmp_path, writer):
    model, prototxt = tmp_path / 'net.caffemodel', tmp_path / 'net.prototxt'
    writer.write_caffemodel(model)
    writer.write_prototxt(prototxt)
    return load_caffe(model, prototxt)


def test_caffe_net_and_set_lr_mult(tmp_path):
    net = _load(tmp_path, _writer())
    mults = lr_mults_from_prototxt(net)
    assert mults == EXPECTED_V2
    opt = optimizers.MomentumSGD(lr=0.01)
    opt.setup(net)
    applied = set_lr_mult(net, mults)
    # Caffe names ('conv1/3x3') were mapped to link names ('conv1_3x3').
    assert applied['conv1_3x3/b'] == ParamMults(2.0, 0.0)
    assert applied['prelu2/W'] == ParamMults(4.0, 0.0)
    assert net['conv1/3x3'].b.update_rule.hyperparam.lr == \
        pytest.approx(0.02)
    assert len(applied) == sum(1 for _ in net.params())


def test_only_the_phase_asked_for(tmp_path):
    w = _writer()
    w.layer('fc_test', 'InnerProduct', 'fc7', 'fc_test',
            params={'inner_product_param': {'num_output': 2}},
            blobs=[numpy.ones((2, 6)), numpy.ones(2)],
            param_specs=FC8_SPECS, include={'phase': 'TEST'})
    path = tmp_path / 'net.prototxt'
    w.write_prototxt(path)
    assert 'fc_test' not in lr_mults_from_prototxt(path)
    assert lr_mults_from_prototxt(path, phase='TEST')['fc_test'] == \
        EXPECTED_V2['fc8']


def test_too_many_specs(tmp_path):
    w = NetWriter('bad')
    w.input('data', (1, 3))
    w.layer('fc', 'InnerProduct', 'data', 'fc',
            params={'inner_product_param': {'num_output': 2,
                                            'bias_term': False}},
            blobs=[numpy.ones((2, 3))], param_specs=SPECS)
    path = tmp_path / 'bad.prototxt'
    w.write_prototxt(path)
    with pytest.raises(CaffeModelError, match="'fc'.*2 param specs"):
        lr_mults_from_prototxt(path)


def test_decimal_multipliers_read_as_written(tmp_path):
    w = NetWriter('dec')
    w.input('data', (1, 3))
    w.layer('fc', 'InnerProduct', 'data', 'fc',
            params={'inner_product_param': {'num_output': 2}},
            blobs=[numpy.ones((2, 3)), numpy.ones(2)],
            param_specs=[{'lr_mult': 0.1, 'decay_mult': 0.3}])
    path = tmp_path / 'dec.prototxt'
    w.write_prototxt(path)
    assert lr_mults_from_prototxt(path)['fc']['W'] == ParamMults(0.1, 0.3)


def _flickr_writer():
    """flickr_style's recipe on a tiny AlexNet-shaped net: every layer at
    lr_mult 1 (weights) / 2 (bias), decay_mult 1 / 0, and the new
    classifier fc8_flickr at 10 / 20."""
    rng = numpy.random.RandomState(0)
    w = NetWriter('FlickrStyleCaffeNet')
    w.input('data', (2, 3, 6, 6))
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rng.randn(4, 3, 3, 3) * 0.3, rng.randn(4) * 0.1],
            param_specs=SPECS)
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    w.layer('fc7', 'InnerProduct', 'conv1', 'fc7',
            params={'inner_product_param': {'num_output': 8}},
            blobs=[rng.randn(8, 64) * 0.1, rng.randn(8) * 0.1],
            param_specs=SPECS)
    w.layer('fc8_flickr', 'InnerProduct', 'fc7', 'fc8_flickr',
            params={'inner_product_param': {'num_output': 20}},
            blobs=[rng.randn(20, 8) * 0.01, numpy.zeros(20)],
            param_specs=FC8_SPECS)
    w.layer('prob', 'Softmax', 'fc8_flickr', 'prob')
    return w


def test_flickr_style_recipe(tmp_path):
    net = _load(tmp_path, _flickr_writer())
    path = tmp_path / 'train_val.prototxt'
    _flickr_writer().write_prototxt(path)
    mults = lr_mults_from_prototxt(path)
    assert mults['fc8_flickr'] == {'W': ParamMults(10.0, 1.0),
                                   'b': ParamMults(20.0, 0.0)}
    assert mults['conv1'] == {'W': ParamMults(1.0, 1.0),
                              'b': ParamMults(2.0, 0.0)}
    # solver.prototxt: base_lr 0.001, momentum 0.9, weight_decay 0.0005
    opt = optimizers.MomentumSGD(lr=0.001, momentum=0.9)
    opt.setup(net)
    opt.add_hook(WeightDecayMult(0.0005))
    set_lr_mult(net, mults)
    rules = {name: p.update_rule.hyperparam
             for name, p in net.namedparams()}
    assert rules['/fc8_flickr/W'].lr == pytest.approx(0.01)
    assert rules['/fc8_flickr/b'].lr == pytest.approx(0.02)
    assert rules['/fc7/W'].lr == pytest.approx(0.001)
    assert rules['/fc7/b'].lr == pytest.approx(0.002)

    # One Caffe SGD step, by hand: v = -lr * lr_mult * (g + wd *
    # decay_mult * w).
    x = numpy.random.RandomState(2).randn(2, 3, 6, 6).astype(numpy.float32)
    t = numpy.array([3, 7], numpy.int32)

    def loss(x, t):
        y, = net(inputs={'data': x}, outputs=['fc8_flickr'])
        return F.softmax_cross_entropy(y, t)

    before = _snapshot(net)
    net.cleargrads()
    loss(x, t).backward()
    grads = {name: p.grad.copy() for name, p in net.namedparams()}
    opt.update(loss, x, t)
    for name, p in net.namedparams():
        layer, param = name.strip('/').split('/')
        m = mults[layer][param]
        expected = before[name] - 0.001 * m.lr_mult * (
            grads[name] + 0.0005 * m.decay_mult * before[name])
        numpy.testing.assert_allclose(p.array, expected, rtol=1e-5,
                                      atol=1e-7, err_msg=name)
