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
    # Found by tests/test_caffe_fuzz.py: these crashed with OverflowError
    # and ZeroDivisionError instead of a CaffeModelError.
    ({'min_size': [float('inf')]}, 'finite'),
    ({'min_size': [10.0], 'aspect_ratio': [0.0]}, 'aspect ratios positive'),
    ({'min_size': [10.0], 'step': float('nan')}, 'finite'),
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


# --------------------------------------------------------------------------
# DetectionOutput
# --------------------------------------------------------------------------

NUM, PRIORS, CLASSES = 2, 30, 4


def crafted_inputs(num_loc_classes, seed=0, conf_scale=1.0):
    """loc, conf and prior blobs whose boxes crowd a few places, so that
    NMS has boxes to suppress."""
    rng = np.random.RandomState(seed)
    groups = rng.uniform(0.3, 0.7, (3, 2))
    centers = groups[rng.randint(0, 3, PRIORS)] + rng.normal(
        0, 0.03, (PRIORS, 2))
    sizes = rng.uniform(0.1, 0.3, (PRIORS, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1)
    variances = np.tile([0.1, 0.1, 0.2, 0.2], PRIORS)
    prior = np.stack([boxes.ravel(), variances]).astype(np.float32)[None]
    loc = rng.normal(0, 0.5, (NUM, PRIORS * num_loc_classes * 4))
    conf = rng.dirichlet(np.ones(CLASSES) * conf_scale, (NUM, PRIORS))
    return {'loc': loc.astype(np.float32),
            'conf': conf.reshape(NUM, -1).astype(np.float32),
            'prior': prior}


def detection_net(tmp_path, param, inputs):
    shapes = {name: value.shape for name, value in inputs.items()}
    return one_layer_net(tmp_path, shapes, 'DetectionOutput',
                         {'detection_output_param': param},
                         ['loc', 'conf', 'prior'])


def by_image_and_score(rows):
    rows = np.asarray(rows).reshape(-1, 7)
    return rows[np.lexsort((rows[:, 1], -rows[:, 2], rows[:, 0]))]


NMS_45 = {'nms_threshold': 0.45, 'top_k': 20}
DETECTION = {
    'center_size_keep_top_k': {
        'share_location': True, 'background_label_id': 0,
        'code_type': 'CENTER_SIZE', 'keep_top_k': 10,
        'confidence_threshold': 0.2, 'nms_param': NMS_45},
    'corner': {'share_location': True, 'background_label_id': 0,
               'code_type': 'CORNER', 'keep_top_k': 100,
               'nms_param': {'nms_threshold': 0.3}},
    'per_class_boxes_top_k': {
        'share_location': False, 'background_label_id': 0,
        'code_type': 'CENTER_SIZE', 'keep_top_k': 50,
        'confidence_threshold': 0.1,
        'nms_param': {'nms_threshold': 0.5, 'top_k': 5}},
    'no_background': {
        'share_location': False, 'background_label_id': -1,
        'code_type': 'CENTER_SIZE', 'confidence_threshold': 0.25,
        'keep_top_k': 40, 'nms_param': {'nms_threshold': 0.4}},
    'variance_in_target': {
        'share_location': True, 'background_label_id': 2,
        'code_type': 'CENTER_SIZE', 'variance_encoded_in_target': True,
        'keep_top_k': 12, 'confidence_threshold': 0.05,
        'nms_param': NMS_45},
    'keep_top_k_across_classes': {
        'share_location': True, 'background_label_id': 0,
        'code_type': 'CENTER_SIZE', 'keep_top_k': 3,
        'nms_param': {'nms_threshold': 0.45}},
}


def detection_param(name):
    param = dict(DETECTION[name], num_classes=CLASSES)
    loc_classes = 1 if param['share_location'] else CLASSES
    return param, loc_classes


@pytest.mark.parametrize('name', sorted(DETECTION))
def test_detection_output(tmp_path, name):
    param, loc_classes = detection_param(name)
    inputs = crafted_inputs(loc_classes)
    w, model, prototxt = detection_net(tmp_path, param, inputs)
    p = w.layers[-1].detection_output_param
    ours = run_ours(model, prototxt, inputs)
    expected = R.detection_output(inputs['loc'], inputs['conf'],
                                  inputs['prior'], p)
    assert ours.shape == expected.shape and ours.dtype == np.float32
    np.testing.assert_array_equal(ours[0, 0, :, :2], expected[0, 0, :, :2])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6)
    # NMS matters: without it more boxes come out.
    p.nms_param.nms_threshold = 1.0
    p.keep_top_k = -1
    assert R.detection_output(inputs['loc'], inputs['conf'],
                              inputs['prior'], p).shape[2] > ours.shape[2]
    if cv2 is not None:
        # OpenCV sorts each image's rows by score (the fork: by label) and
        # pads them with zero rows to keep_top_k per image.
        theirs = opencv_detections(tmp_path, param, inputs)
        rows = ours.shape[2]
        assert not theirs[rows:].any()
        np.testing.assert_allclose(by_image_and_score(ours),
                                   by_image_and_score(theirs[:rows]),
                                   rtol=0, atol=2e-6)


def opencv_detections(tmp_path, param, inputs):
    """OpenCV's rows for the net; with variance_encoded_in_target OpenCV
    wants the priors without their variance channel (the fork ignores
    it)."""
    if param.get('variance_encoded_in_target'):
        inputs = dict(inputs, prior=inputs['prior'][:, :1].copy())
        tmp_path = tmp_path / 'opencv'
        tmp_path.mkdir()
    _, model, prototxt = detection_net(tmp_path, param, inputs)
    return run_opencv(model, prototxt, inputs)[0, 0]


def test_detection_output_keep_top_k_keeps_the_best():
    param, _ = detection_param('keep_top_k_across_classes')
    inputs = crafted_inputs(1)
    ours = detection.detect(np, inputs['loc'], inputs['conf'],
                            inputs['prior'], detection.DetectionSettings(
                                CLASSES, keep_top_k=3, nms_threshold=0.45))
    everything = detection.detect(np, inputs['loc'], inputs['conf'],
                                  inputs['prior'], detection.DetectionSettings(
                                      CLASSES, nms_threshold=0.45))
    for image in range(NUM):
        kept = ours[0, 0][ours[0, 0, :, 0] == image]
        scores = everything[0, 0][everything[0, 0, :, 0] == image, 2]
        assert len(kept) == 3
        np.testing.assert_array_equal(np.sort(kept[:, 2])[::-1],
                                      np.sort(scores)[::-1][:3])
        assert (np.diff(kept[:, 1]) >= 0).all()     # by label, as the fork


def test_detection_output_corner_size_and_eta(tmp_path):
    # OpenCV has no CORNER_SIZE and ignores eta (it passes 1 to its NMS):
    # these are checked against the fork's formulas only.
    inputs = crafted_inputs(1, seed=3)
    for extra in ({'code_type': 'CORNER_SIZE'},
                  {'code_type': 'CENTER_SIZE',
                   'nms_param': {'nms_threshold': 0.9, 'eta': 0.7}}):
        param = dict({'num_classes': CLASSES, 'share_location': True,
                      'background_label_id': 0}, **extra)
        directory = tmp_path / extra['code_type']
        directory.mkdir()
        w, model, prototxt = detection_net(directory, param, inputs)
        p = w.layers[-1].detection_output_param
        ours = run_ours(model, prototxt, inputs)
        expected = R.detection_output(inputs['loc'], inputs['conf'],
                                      inputs['prior'], p)
        assert ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-6)
        if p.nms_param.eta < 1:
            p.nms_param.eta = 1
            assert R.detection_output(
                inputs['loc'], inputs['conf'], inputs['prior'],
                p).shape[2] > ours.shape[2]


def test_detection_output_without_detections(tmp_path):
    # The fork gives one row [image, -1, -1, -1, -1, -1, -1] per image;
    # OpenCV gives keep_top_k zero rows per image.
    inputs = crafted_inputs(1)
    param = {'num_classes': CLASSES, 'share_location': True,
             'background_label_id': 0, 'keep_top_k': 7,
             'code_type': 'CENTER_SIZE',
             'confidence_threshold': 0.999, 'nms_param': NMS_45}
    _, model, prototxt = detection_net(tmp_path, param, inputs)
    ours = run_ours(model, prototxt, inputs)
    np.testing.assert_array_equal(ours[0, 0], [[0] + [-1] * 6,
                                               [1] + [-1] * 6])
    if cv2 is not None:
        theirs = run_opencv(model, prototxt, inputs)
        assert theirs.shape == (1, 1, NUM * 7, 7) and not theirs.any()


def test_detection_output_accepts_priors_without_variances():
    # With variance_encoded_in_target the variances are unused: OpenCV's
    # nets may give the priors alone, (1, 1, num_priors * 4).
    inputs = crafted_inputs(1)
    settings = detection.DetectionSettings(
        CLASSES, variance_encoded_in_target=True, keep_top_k=10)
    both = detection.detect(np, inputs['loc'], inputs['conf'],
                            inputs['prior'], settings)
    alone = detection.detect(np, inputs['loc'], inputs['conf'],
                             inputs['prior'][:, :1], settings)
    np.testing.assert_array_equal(both, alone)
    with pytest.raises(CaffeModelError, match='variances'):
        detection.detect(np, inputs['loc'], inputs['conf'],
                         inputs['prior'][:, :1],
                         detection.DetectionSettings(CLASSES))


def test_detection_output_checks_its_inputs(tmp_path):
    inputs = crafted_inputs(1)
    param = {'num_classes': CLASSES + 1, 'share_location': True}
    _, model, prototxt = detection_net(tmp_path, param, inputs)
    with pytest.raises(CaffeModelError, match='do not fit'):
        run_ours(model, prototxt, inputs)


@pytest.mark.parametrize('param,match', [
    ({'share_location': True}, 'num_classes'),
    ({'num_classes': 3, 'share_location': True,
      'background_label_id': -1}, 'share_location'),
    ({'num_classes': 3, 'nms_param': {'eta': 1.5}}, 'eta'),
])
def test_detection_output_rejects_what_the_fork_rejects(tmp_path, param,
                                                        match):
    # Background -1 with shared boxes: the fork skips the shared label -1
    # as background when decoding, then aborts (OpenCV fails alike).
    _, model, prototxt = detection_net(tmp_path, param, crafted_inputs(1))
    with pytest.raises(CaffeModelError, match=match):
        load_caffe(model, prototxt)


def test_backward_through_detection_output_raises(tmp_path):
    inputs = crafted_inputs(1)
    param, _ = detection_param('center_size_keep_top_k')
    _, model, prototxt = detection_net(tmp_path, param, inputs)
    net = load_caffe(model, prototxt)
    loc = chainer.Variable(inputs['loc'])
    out, = net.forward(dict(inputs, loc=loc), ['out'])
    assert out.requires_grad
    with pytest.raises(NoGradientError, match='DetectionOutput'):
        F.sum(out).backward()


def _cupy_or_skip():
    if not chainer.backends.cuda.available:
        pytest.skip('needs CuPy and a GPU')
    import cupy
    return cupy


def test_detection_output_on_cupy_matches_numpy():
    cupy = _cupy_or_skip()
    inputs = crafted_inputs(CLASSES)
    settings = detection.DetectionSettings(
        CLASSES, share_location=False, background_label_id=-1,
        code_type=detection.caffe_pb2.PriorBoxParameter.CENTER_SIZE,
        keep_top_k=20, confidence_threshold=0.1, nms_threshold=0.45,
        top_k=10)
    on_cpu = detection.detect(np, inputs['loc'], inputs['conf'],
                              inputs['prior'], settings)
    on_gpu = detection.detect(cupy, *(cupy.asarray(inputs[k]) for k in
                                      ('loc', 'conf', 'prior')), settings)
    assert isinstance(on_gpu, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(on_gpu), on_cpu, rtol=0,
                               atol=1e-6)


@pytest.mark.parametrize('eta', [1.0, 0.7])
def test_nms_indices_is_the_forks_greedy_pass(eta):
    """Crowded boxes (many overlaps at the threshold's edge), inverted and
    empty boxes and tied scores: the kept boxes and their order are the
    loop of ApplyNMSFast's, with the fixed threshold's one-pass-per-kept-box
    form and the adaptive one alike."""
    from chainer_finetune.caffe.layers.detection import DetectionSettings
    from chainer_finetune.caffe.layers.detection import nms_indices
    rng = np.random.RandomState(3)
    for trial in range(40):
        n = rng.randint(1, 300)
        corner = rng.uniform(0, 0.6, (n, 2))
        size = rng.uniform(-0.05, 0.4, (n, 2))      # some inverted boxes
        boxes = np.concatenate([corner, corner + size], 1).astype(np.float32)
        boxes[rng.rand(n) < 0.05] = boxes[0]          # exact duplicates
        scores = rng.choice(np.linspace(0, 1, 25), n).astype(np.float32)
        settings = DetectionSettings(
            num_classes=2, confidence_threshold=0.1,
            nms_threshold=float(rng.choice([0.3, 0.45, 0.6])),
            top_k=int(rng.choice([-1, 50])), eta=eta)
        got = nms_indices(np, boxes, scores, settings)
        want = R.nms(boxes, scores, np.float32(0.1),
                     np.float32(settings.nms_threshold), np.float32(eta),
                     settings.top_k)
        assert got.tolist() == want, trial
