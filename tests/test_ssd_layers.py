"""The SSD fork's layers (Normalize, Permute, PriorBox, DetectionOutput):
each against a NumPy reference of the fork's formulas
(``ssd_reference.py``) and against OpenCV on small generated nets.

Where OpenCV differs from the fork (noted at each test), the fork's source
is followed and the comparison with OpenCV is made where they agree.
"""

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from chainer_finetune import load_caffe  # noqa: E402
from chainer_finetune.caffe import verify  # noqa: E402
from chainer_finetune.caffe.layers import detection  # noqa: E402
from chainer_finetune.caffe.writer import NetWriter  # noqa: E402
from chainer_finetune.errors import CaffeModelError  # noqa: E402
from chainer_finetune.errors import NoGradientError  # noqa: E402
from chainer_finetune.errors import UnsupportedLayerError  # noqa: E402

import ssd_reference as R  # noqa: E402

try:
    import cv2
except ImportError:   # the NumPy references still run
    cv2 = None

needs_opencv = pytest.mark.skipif(cv2 is None, reason='needs OpenCV 4.x')


def one_layer_net(tmp_path, inputs, type_, params, bottoms, blobs=()):
    """Writes a net of Input layers and one layer ``out``; returns the
    writer and the (model, prototxt) paths."""
    w = NetWriter('ssd')
    for name, shape in inputs.items():
        w.input(name, shape, form='layer')
    w.layer('out', type_, bottoms, 'out', params=params, blobs=blobs)
    model, prototxt = tmp_path / 'net.caffemodel', tmp_path / 'net.prototxt'
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    return w, str(model), str(prototxt)


def run_ours(model, prototxt, values):
    net = load_caffe(model, prototxt)
    with chainer.using_config('train', False):
        out, = net.forward(values, ['out'])
    return out.array


def run_opencv(model, prototxt, values):
    return verify.opencv_outputs(model, prototxt, values, ['out'])['out'][0]


def rel_l2(actual, expected):
    expected = np.asarray(expected, np.float64)
    diff = np.linalg.norm(np.asarray(actual, np.float64) - expected)
    return diff / max(np.linalg.norm(expected), 1e-30)


# --------------------------------------------------------------------------
# Normalize
# --------------------------------------------------------------------------

NORMALIZE = [
    {'across_spatial': True, 'channel_shared': True},
    {'across_spatial': False, 'channel_shared': True},
    {'across_spatial': True, 'channel_shared': False},
    {'across_spatial': False, 'channel_shared': False, 'eps': 1e-3},
    {'across_spatial': False, 'channel_shared': False},
]


@pytest.mark.parametrize('param', NORMALIZE, ids=str)
def test_normalize(tmp_path, param):
    rng = np.random.RandomState(1)
    x = rng.standard_normal((2, 5, 4, 6)).astype(np.float32)
    x[1, :, 0, 0] = 0     # eps keeps an all-zero position finite
    scale = rng.uniform(1, 20, 1 if param['channel_shared'] else 5)
    w, model, prototxt = one_layer_net(
        tmp_path, {'data': x.shape}, 'Normalize', {'norm_param': param},
        'data', [scale.astype(np.float32)])
    ours = run_ours(model, prototxt, {'data': x})
    expected = R.normalize(x, scale, w.layers[-1].norm_param)
    np.testing.assert_allclose(ours, expected, rtol=2e-6, atol=1e-6)
    # OpenCV fails on across_spatial with a scale per channel (it expects
    # one scale per normalized plane).
    if cv2 is not None and not (param['across_spatial'] and
                                not param['channel_shared']):
        assert rel_l2(ours, run_opencv(model, prototxt, {'data': x})) < 1e-6


def test_normalize_checks_the_scale_shape(tmp_path):
    _, model, prototxt = one_layer_net(
        tmp_path, {'data': (1, 5, 2, 2)}, 'Normalize',
        {'norm_param': {'channel_shared': True}}, 'data',
        [np.ones(5, np.float32)])
    with pytest.raises(CaffeModelError, match='scale'):
        load_caffe(model, prototxt)


def test_normalize_trains_its_scale(tmp_path):
    x = np.random.RandomState(2).standard_normal((2, 3, 2, 2)).astype(
        np.float32)
    _, model, prototxt = one_layer_net(
        tmp_path, {'data': x.shape}, 'Normalize',
        {'norm_param': {'channel_shared': False}}, 'data',
        [np.array([1, 2, 3], np.float32)])
    net = load_caffe(model, prototxt)
    out, = net.forward({'data': x}, ['out'])
    F.sum(out * out).backward()
    grad = net.out.W.grad
    assert grad.shape == (3,) and np.all(grad > 0)


# --------------------------------------------------------------------------
# Permute
# --------------------------------------------------------------------------

@pytest.mark.parametrize('order', [[0, 2, 3, 1], [0, 3, 1, 2], [0, 1, 3, 2],
                                   [0, 2], [], [0, 1, 2, 3]], ids=str)
def test_permute(tmp_path, order):
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    w, model, prototxt = one_layer_net(
        tmp_path, {'data': x.shape}, 'Permute',
        {'permute_param': {'order': order}}, 'data')
    ours = run_ours(model, prototxt, {'data': x})
    np.testing.assert_array_equal(
        ours, R.permute(x, w.layers[-1].permute_param))
    if cv2 is not None and len(order) in (0, x.ndim):
        # OpenCV needs every axis in the order; the fork appends the
        # missing ones.
        np.testing.assert_array_equal(
            ours, run_opencv(model, prototxt, {'data': x}))


def test_permute_fills_in_missing_axes_in_order():
    assert detection.permute_order([2], 4) == (2, 0, 1, 3)
    assert detection.permute_order([], 3) == (0, 1, 2)
    with pytest.raises(CaffeModelError, match='beyond'):
        detection.permute_order([4], 4)
    with pytest.raises(CaffeModelError, match='repeats'):
        detection.permute_order([1, 1], 4)


# --------------------------------------------------------------------------
# PriorBox
# --------------------------------------------------------------------------

PRIOR_BOX = {
    'ssd300_conv4': {'min_size': [30.0], 'max_size': [60.0],
                     'aspect_ratio': [2.0], 'flip': True, 'clip': False,
                     'variance': [0.1, 0.1, 0.2, 0.2], 'step': 8.0,
                     'offset': 0.5},
    'mobilenet_two_ratios': {'min_size': [60.0], 'max_size': [150.0],
                             'aspect_ratio': [2.0, 3.0], 'flip': True,
                             'clip': False,
                             'variance': [0.1, 0.1, 0.2, 0.2],
                             'offset': 0.5},
    'several_sizes_no_flip_clip': {'min_size': [10.0, 25.0],
                                   'max_size': [20.0, 40.0],
                                   'aspect_ratio': [2.0, 0.5, 2.0],
                                   'flip': False, 'clip': True,
                                   'variance': [0.2]},
    'no_max_default_variance': {'min_size': [16.0], 'aspect_ratio': [3.0]},
    'step_hw_offset': {'min_size': [12.0], 'step_h': 6.0, 'step_w': 10.0,
                       'offset': 0.25, 'variance': [0.1, 0.1, 0.2, 0.2],
                       'clip': False},
    'img_size': {'min_size': [20.0], 'max_size': [32.0], 'img_size': 64,
                 'aspect_ratio': [2.0], 'clip': True},
    'img_hw_step': {'min_size': [20.0], 'img_h': 50, 'img_w': 80,
                    'step': 12.0, 'aspect_ratio': [1.5], 'variance': [0.1],
                    'clip': False},
}

#: (feature map, image): the prototxt's size and another one.
SIZES = [((1, 4, 5, 7), (1, 3, 40, 56)), ((2, 4, 9, 4), (2, 3, 75, 33))]


@pytest.mark.parametrize('name', sorted(PRIOR_BOX))
def test_prior_box_at_two_input_sizes(tmp_path, name):
    feature, image = SIZES[0]
    w, model, prototxt = one_layer_net(
        tmp_path, {'feat': feature, 'data': image}, 'PriorBox',
        {'prior_box_param': PRIOR_BOX[name]}, ['feat', 'data'])
    p = w.layers[-1].prior_box_param
    net = load_caffe(model, prototxt)
    for feature, image in SIZES:
        values = {'feat': np.zeros(feature, np.float32),
                  'data': np.zeros(image, np.float32)}
        ours, = net.forward(values, ['out'])
        ours = ours.array
        expected = R.prior_box(feature, image, p)
        assert ours.shape == expected.shape
        assert expected.shape[:2] == (1, 2)
        assert expected.shape[2] % (feature[2] * feature[3] * 4) == 0
        np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-7)
        # OpenCV refuses a PriorBox without variance (the fork: 0.1),
        # clips unless told not to (the fork's clip defaults to false) and
        # divides by the actual image size despite img_h/img_w (4.14).
        if cv2 is not None and len(p.variance) and p.HasField('clip') \
                and not p.HasField('img_h'):
            np.testing.assert_allclose(
                ours, run_opencv(model, prototxt, values), rtol=0,
                atol=2e-7)


def test_prior_box_counts_and_order():
    p = PRIOR_BOX['mobilenet_two_ratios']
    w = NetWriter('p')
    layer = w.layer('p', 'PriorBox', ['f', 'd'], 'p',
                    params={'prior_box_param': p})
    x = np.zeros((1, 1, 1, 1), np.float32)
    priors = R.prior_box(x.shape, (1, 3, 300, 300), layer.prior_box_param)
    # 1 (min) + 1 (sqrt(min * max)) + 2 ratios x 2 (flip) = 6 per cell.
    assert priors.shape == (1, 2, 6 * 4)
    boxes = priors[0, 0].reshape(6, 4)
    widths = (boxes[:, 2] - boxes[:, 0]) * 300
    np.testing.assert_allclose(
        widths, [60, np.sqrt(60 * 150), 60 * np.sqrt(2), 60 / np.sqrt(2),
                 60 * np.sqrt(3), 60 / np.sqrt(3)], rtol=1e-5)


@needs_opencv
def test_prior_box_clip_defaults_to_false_unlike_opencv(tmp_path):
    shapes = {'feat': (1, 1, 2, 2), 'data': (1, 3, 20, 20)}
    _, model, prototxt = one_layer_net(
        tmp_path, shapes, 'PriorBox',
        {'prior_box_param': {'min_size': [16.0], 'variance': [0.1]}},
        ['feat', 'data'])
    values = {k: np.zeros(v, np.float32) for k, v in shapes.items()}
    ours = run_ours(model, prototxt, values)[0, 0]
    theirs = run_opencv(model, prototxt, values)[0, 0]
    assert ours.min() < 0 and ours.max() > 1          # the fork's default
    np.testing.assert_allclose(theirs, np.clip(ours, 0, 1), atol=2e-7)


def test_prior_box_truncates_min_size_like_the_fork(tmp_path):
    # The fork keeps min_size/max_size in int variables; OpenCV uses the
    # float (it gives 10.7-pixel boxes here). The fork is followed.
    _, model, prototxt = one_layer_net(
        tmp_path, {'feat': (1, 1, 1, 1), 'data': (1, 3, 100, 100)},
        'PriorBox', {'prior_box_param': {'min_size': [10.7]}},
        ['feat', 'data'])
    values = {'feat': np.zeros((1, 1, 1, 1), np.float32),
              'data': np.zeros((1, 3, 100, 100), np.float32)}
    box = run_ours(model, prototxt, values)[0, 0]
    np.testing.assert_allclose(box, [0.45, 0.45, 0.55, 0.55], atol=1e-7)


@pytest.mark.parametrize('param,match', [
    ({'min_size': [10.0], 'variance': [0.1, 0.2]}, 'variance'),
    ({'min_size': [10.0], 'max_size': [5.0]}, 'max_size'),
    ({'max_size': [5.0]}, 'min_size'),
    ({'min_size': [10.0], 'step': 2.0, 'step_h': 3.0}, 'step'),
    ({'min_size': [10.0], 'img_size': 4, 'img_h': 3}, 'img_size'),
])
def test_prior_box_rejects_what_the_fork_rejects(tmp_path, param, match):
    _, model, prototxt = one_layer_net(
        tmp_path, {'feat': (1, 1, 2, 2), 'data': (1, 3, 8, 8)}, 'PriorBox',
        {'prior_box_param': param}, ['feat', 'data'])
    with pytest.raises(CaffeModelError, match=match):
        load_caffe(model, prototxt)


def test_prior_box_opencv_extensions_are_unsupported(tmp_path):
    _, model, prototxt = one_layer_net(
        tmp_path, {'feat': (1, 1, 2, 2), 'data': (1, 3, 8, 8)}, 'PriorBox',
        {'prior_box_param': {'width': [4.0], 'height': [4.0]}},
        ['feat', 'data'])
    with pytest.raises(UnsupportedLayerError, match='width'):
        load_caffe(model, prototxt)
