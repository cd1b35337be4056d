"""The layer variants SSD-family detectors use, against OpenCV and against
the NumPy reference: Crop (axis, offsets), Flatten (axis / end_axis),
Reshape (0, -1, axis / num_axes), Concat (axis 1, 2, negative), Softmax on
an inner axis, Deconvolution (group, no bias) and depthwise Convolution
(group equal to the channels) stored as Caffe stores it.

The generated nets follow ``test_caffe_opencv.py``: each case is written
as a prototxt plus a caffemodel and every top of every layer is compared
with ``cv2.dnn`` (Caffe's and OpenCV's semantics agree on all of these).
"""

import dataclasses

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import chainer  # noqa: E402
import numpy  # noqa: E402
import pytest  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from chainer_finetune import CaffeModelError  # noqa: E402
from chainer_finetune import load_caffe  # noqa: E402
from chainer_finetune.caffe import caffe_pb2  # noqa: E402
from chainer_finetune.caffe import layers  # noqa: E402
from chainer_finetune.caffe import verify  # noqa: E402
from chainer_finetune.caffe.layers.structure import crop_slices  # noqa: E402
from chainer_finetune.caffe.reader import Blob  # noqa: E402

import caffe_reference as R  # noqa: E402
from test_caffe_opencv import Layer  # noqa: E402
from test_caffe_opencv import TOLERANCE  # noqa: E402
from test_caffe_opencv import write_net  # noqa: E402
from test_caffe_opencv import writer  # noqa: E402

_rs = numpy.random.RandomState(10)


def _w(*shape, scale=0.5):
    return (_rs.standard_normal(shape) * scale).astype(numpy.float32)


def _positive(*shape):
    return _rs.uniform(0.5, 2.0, shape).astype(numpy.float32)


X = (2, 4, 9, 8)
D = {'data': X}


def _one(type_, params='', blobs=(), bottoms=('data',), name='l1'):
    return [Layer(type_, name, tuple(bottoms), (name,), params,
                  tuple(blobs))]


def _crop(params, reference):
    return ({'data': X, 'ref': reference},
            _one('Crop', params, bottoms=('data', 'ref')))


def _bn_scale_relu(name, channels):
    """BatchNorm + Scale + ReLU in place, as MobileNet-SSD stores them."""
    return [
        Layer('BatchNorm', name + '/bn', (name,), (name,),
              'batch_norm_param { use_global_stats: true eps: 1e-5 }',
              (_w(channels) * 3, _positive(channels) * 3,
               numpy.array([3.0], numpy.float32))),
        Layer('Scale', name + '/scale', (name,), (name,),
              'scale_param { bias_term: true }',
              (_positive(channels), _w(channels))),
        Layer('ReLU', name + '/relu', (name,), (name,))]


def _mobilenet_block(channels, out):
    """Depthwise 3x3 (stride 2, no bias) + BN + Scale + ReLU, then a
    pointwise 1x1 + BN + Scale + ReLU."""
    return [Layer('Convolution', 'dw', ('data',), ('dw',),
                  'convolution_param {{ num_output: {0} group: {0} '
                  'kernel_size: 3 stride: 2 pad: 1 bias_term: false '
                  'engine: CAFFE }}'.format(channels),
                  (_w(channels, 1, 3, 3),))] + \
        _bn_scale_relu('dw', channels) + \
        [Layer('Convolution', 'pw', ('dw',), ('pw',),
               'convolution_param {{ num_output: {} kernel_size: 1 '
               'bias_term: false }}'.format(out), (_w(out, channels, 1, 1),))
         ] + _bn_scale_relu('pw', out)


def _ssd_confidence_head():
    """SSD's mbox_conf path without the Permute: scores for 3 classes per
    position, reshaped to (N, boxes, classes), softmax over the classes,
    flattened."""
    return [
        Layer('Convolution', 'conf', ('data',), ('conf',),
              'convolution_param { num_output: 12 kernel_size: 3 pad: 1 }',
              (_w(12, 4, 3, 3), _w(12))),
        Layer('Reshape', 'conf_reshape', ('conf',), ('conf_reshape',),
              'reshape_param { shape { dim: 0 dim: -1 dim: 3 } }'),
        Layer('Softmax', 'conf_softmax', ('conf_reshape',),
              ('conf_softmax',), 'softmax_param { axis: 2 }'),
        Layer('Flatten', 'conf_flatten', ('conf_softmax',),
              ('conf_flatten',), 'flatten_param { axis: 1 }')]


def _deconv_crop():
    """A RetinaFace / FCN-style upsampling: stride-2 convolution, grouped
    deconvolution without bias back up, cropped to the input and
    concatenated with it."""
    return [
        Layer('Convolution', 'down', ('data',), ('down',),
              'convolution_param { num_output: 6 kernel_size: 3 stride: 2 '
              'pad: 1 }', (_w(6, 4, 3, 3), _w(6))),
        Layer('Deconvolution', 'up', ('down',), ('up',),
              'convolution_param { num_output: 6 kernel_size: 4 stride: 2 '
              'group: 3 bias_term: false }', (_w(6, 2, 4, 4),)),
        Layer('Crop', 'crop', ('up', 'data'), ('crop',),
              'crop_param { axis: 2 offset: 1 }'),
        Layer('Concat', 'cat', ('data', 'crop'), ('cat',))]


CASES = {
    # ---- Crop: bottom 0 cut to bottom 1's shape from `axis` on
    'crop_defaults': _crop('', (2, 4, 5, 6)),
    'crop_one_offset': _crop('crop_param { offset: 2 }', (2, 4, 5, 6)),
    'crop_offset_per_axis': _crop(
        'crop_param { axis: 2 offset: 3 offset: 1 }', (2, 4, 5, 6)),
    'crop_axis1': _crop('crop_param { axis: 1 offset: 1 offset: 2 '
                        'offset: 0 }', (1, 3, 5, 6)),
    'crop_negative_axis': _crop('crop_param { axis: -1 offset: 2 }',
                                (1, 1, 1, 5)),
    'crop_axis0': _crop('crop_param { axis: 0 offset: 1 }', (1, 2, 7, 7)),
    'deconv_crop_concat': (D, _deconv_crop()),
    # ---- Flatten, Reshape
    'flatten_axis_end_axis': (D, _one(
        'Flatten', 'flatten_param { axis: 1 end_axis: 2 }')),
    'flatten_negative': (D, _one(
        'Flatten', 'flatten_param { axis: -3 end_axis: -2 }')),
    'flatten_axis2_to_end': (D, _one(
        'Flatten', 'flatten_param { axis: 2 end_axis: -1 }')),
    'flatten_axis0': (D, _one(
        'Flatten', 'flatten_param { axis: 0 end_axis: 1 }')),
    'reshape_zero_minus_one': (D, _one(
        'Reshape', 'reshape_param { shape { dim: 0 dim: -1 dim: 4 } }')),
    'reshape_axis_num_axes': (D, _one(
        'Reshape', 'reshape_param { shape { dim: -1 } axis: 1 '
                   'num_axes: 2 }')),
    'reshape_axis2': (D, _one(
        'Reshape', 'reshape_param { shape { dim: 3 dim: -1 } axis: 2 }')),
    'reshape_negative_axis': (D, _one(
        'Reshape', 'reshape_param { shape { dim: 3 dim: -1 } axis: -3 }')),
    # ---- Concat, Softmax
    'concat_axis1_2d': ({'a': (2, 40), 'b': (2, 24)}, [Layer(
        'Concat', 'cat', ('a', 'b'), ('cat',), 'concat_param { axis: 1 }')]),
    'concat_axis2_priors': ({'a': (1, 2, 40), 'b': (1, 2, 24)}, [Layer(
        'Concat', 'cat', ('a', 'b'), ('cat',), 'concat_param { axis: 2 }')]),
    'concat_negative_axis': ({'a': X, 'b': (2, 4, 9, 3)}, [Layer(
        'Concat', 'cat', ('a', 'b'), ('cat',),
        'concat_param { axis: -1 }')]),
    'softmax_negative_axis': (D, _one('Softmax',
                                      'softmax_param { axis: -1 }')),
    'ssd_confidence_head': (D, _ssd_confidence_head()),
    # ---- Deconvolution with groups, depthwise convolution
    'deconv_group_nobias': (D, _one(
        'Deconvolution', 'convolution_param { num_output: 6 kernel_size: 3 '
                         'stride: 2 pad: 1 group: 2 bias_term: false }',
        (_w(4, 3, 3, 3),))),
    'deconv_depthwise': (D, _one(
        'Deconvolution', 'convolution_param { num_output: 4 kernel_size: 2 '
                         'stride: 2 group: 4 bias_term: false }',
        (_w(4, 1, 2, 2),))),
    'conv_depthwise': (D, _one(
        'Convolution', 'convolution_param { num_output: 4 group: 4 '
                       'kernel_size: 3 pad: 1 }', (_w(4, 1, 3, 3), _w(4)))),
    'conv_depthwise_engine_caffe_multiplier': (D, _one(
        'Convolution', 'convolution_param { num_output: 8 group: 4 '
                       'kernel_size: 3 stride: 2 bias_term: false '
                       'engine: CAFFE }', (_w(8, 1, 3, 3),))),
    'mobilenet_block': (D, _mobilenet_block(4, 6)),
}


def _versions(inputs, layers_):
    """2, and 1 where the V1 format can express the net."""
    four_d = all(len(shape) == 4 for shape in inputs.values())
    return (2, 1) if four_d and writer(inputs, layers_, 1).v1_compatible() \
        else (2,)


PARAMS = [pytest.param(name, version, id='{}-v{}'.format(name, version))
          for name, (inputs, layers_) in CASES.items()
          for version in _versions(inputs, layers_)]


#: Where OpenCV departs from Caffe, our net (Caffe's semantics) is compared
#: with OpenCV running the prototxt edited to an equivalent: OpenCV's
#: Reshape rejects a negative axis, which Caffe counts from the end with
#: one extra position (ReshapeLayer: ``axis + num_axes + 1``).
OPENCV_EQUIVALENTS = {'reshape_negative_axis': ('axis: -3', 'axis: 2')}


@pytest.mark.parametrize('case, version', PARAMS)
def test_matches_opencv(case, version, tmp_path):
    pytest.importorskip('cv2')
    inputs, layers_ = CASES[case]
    model, prototxt = write_net(tmp_path, inputs, layers_, version)
    net = load_caffe(model, prototxt)
    if case in OPENCV_EQUIVALENTS:
        ours, theirs = OPENCV_EQUIVALENTS[case]
        with open(prototxt) as f:
            text = f.read()
        assert ours in text
        with open(prototxt, 'w') as f:
            f.write(text.replace(ours, theirs))
    rows = verify.compare_with_opencv(model, prototxt, seed=7, net=net)
    expected = [(layer.name, top) for layer in layers_ for top in layer.top]
    assert [(r.layer, r.blob) for r in rows] == expected
    assert all(r.compared for r in rows), verify.format_comparison(rows)
    bad = [r for r in rows if not r.rel_l2 < TOLERANCE]
    assert not bad, verify.format_comparison(rows, TOLERANCE)


@pytest.mark.parametrize('case', sorted(CASES))
def test_matches_numpy_reference(case, tmp_path):
    inputs, layers_ = CASES[case]
    model, _ = write_net(tmp_path, inputs, layers_, 2)
    rng = numpy.random.RandomState(3)
    arrays = {name: rng.uniform(-1, 1, shape).astype(numpy.float32)
              for name, shape in inputs.items()}
    expected = R.forward_net(writer(inputs, layers_, 2), arrays)
    tops = [top for layer in layers_ for top in layer.top]
    net = load_caffe(model)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        actual = net(inputs=arrays, outputs=tops)
    for name, value in zip(tops, actual):
        numpy.testing.assert_allclose(value.array, expected[name],
                                      rtol=1e-4, atol=1e-5, err_msg=name)


def test_v1_forms_are_compared():
    # Crop has no V1 type; the convolutions and the reshaping layers do.
    v1 = {name for name, (inputs, layers_) in CASES.items()
          if 1 in _versions(inputs, layers_)}
    assert {'conv_depthwise', 'deconv_group_nobias',
            'concat_negative_axis'} <= v1
    assert 'crop_defaults' not in v1


# --------------------------------------------------------------------------
# Crop: other input sizes, errors, gradient
# --------------------------------------------------------------------------

@pytest.mark.parametrize('shape', [(1, 4, 13, 11), (3, 4, 7, 6)])
def test_deconv_crop_runs_at_other_input_sizes(shape, tmp_path):
    """The crop window follows the blobs, not the prototxt's input shape."""
    _, layers_ = CASES['deconv_crop_concat']
    model, prototxt = write_net(tmp_path, D, layers_, 2)
    net = load_caffe(model, prototxt)
    x = numpy.random.RandomState(1).uniform(-1, 1, shape).astype(
        numpy.float32)
    expected = R.forward_net(writer(D, layers_, 2), {'data': x})
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        cat, = net(inputs={'data': x}, outputs=['cat'])
    assert cat.shape == (shape[0], 10) + shape[2:]
    numpy.testing.assert_allclose(cat.array, expected['cat'], rtol=1e-4,
                                  atol=1e-5)
    pytest.importorskip('cv2')
    rows = verify.compare_with_opencv(model, prototxt, input_shape=shape,
                                      net=net)
    assert rows and all(r.compared and r.rel_l2 < TOLERANCE for r in rows), \
        verify.format_comparison(rows, TOLERANCE)


@pytest.mark.parametrize('shape, reference, axis, offsets, window', [
    ((2, 4, 9, 8), (2, 4, 5, 6), 2, [], (slice(None), slice(None),
                                         slice(0, 5), slice(0, 6))),
    ((2, 4, 9, 8), (7, 7, 5, 6), 2, [1], (slice(None), slice(None),
                                          slice(1, 6), slice(1, 7))),
    ((2, 4, 9, 8), (1, 3, 5, 6), -3, [1, 4, 2],
     (slice(None), slice(1, 4), slice(4, 9), slice(2, 8))),
    ((6, 9), (2, 5), 0, [4], (slice(4, 6), slice(4, 9))),
])
def test_crop_slices(shape, reference, axis, offsets, window):
    assert crop_slices(shape, reference, axis, offsets) == window


@pytest.mark.parametrize('reference, axis, offsets, match', [
    ((2, 4, 5, 6), 2, [1, 2, 3], '3 crop offsets for the 2 axes'),
    ((2, 4, 5, 6), 2, [5], 'axis 2 to size 5 at offset 5'),
    ((2, 4, 9, 9), 2, [], 'axis 3 to size 9 at offset 0'),
    ((2, 4, 5, 6), 4, [], 'crop axis 4 does not fit'),
    ((2, 4, 5, 6), -5, [], 'crop axis -5 does not fit'),
    ((5, 6), 2, [], 'cannot crop shape'),
])
def test_crop_errors(reference, axis, offsets, match):
    with pytest.raises(CaffeModelError, match=match):
        crop_slices((2, 4, 9, 8), reference, axis, offsets)


def _crop_layer(**params):
    layer = caffe_pb2.LayerParameter(name='crop', type='Crop',
                                     bottom=['x', 'ref'], top=['crop'])
    text_format.Merge(' '.join('{}: {}'.format(k, v) for k, values in
                               params.items() for v in values),
                      layer.crop_param)
    return layer


def test_crop_entry_needs_two_bottoms_and_holds_no_blobs():
    entry = layers.layer_type('Crop')
    assert not entry.holds_blobs and entry.invert is None
    assert layers.learnable_blob_names(_crop_layer()) is None
    assert layers.output_param(_crop_layer()) is None
    one_bottom = _crop_layer()
    del one_bottom.bottom[1]
    with pytest.raises(CaffeModelError, match='expects 2 bottom'):
        layers.build(layers.BuildContext(one_bottom, [], 'test'))


def test_crop_gradient_reaches_bottom_0_only():
    built = layers.build(layers.BuildContext(
        _crop_layer(axis=[2], offset=[1, 2]), [], 'test'))
    x = chainer.Variable(numpy.arange(2 * 3 * 5 * 6, dtype=numpy.float32)
                         .reshape(2, 3, 5, 6))
    reference = chainer.Variable(numpy.zeros((2, 3, 3, 2), numpy.float32))
    y, = built.function(None, x, reference)
    numpy.testing.assert_array_equal(y.array, x.array[:, :, 1:4, 2:4])
    chainer.functions.sum(y * 2).backward()
    expected = numpy.zeros(x.shape, numpy.float32)
    expected[:, :, 1:4, 2:4] = 2
    numpy.testing.assert_array_equal(x.grad, expected)
    assert reference.grad is None


def _run_one(layer, x):
    built = layers.build(layers.BuildContext(layer, [], 'test'))
    with chainer.no_backprop_mode():
        return built.function(None, x)[0]


@pytest.mark.parametrize('axis, end_axis, shape', [
    (2, 1, (2, 4, 1, 9, 8)),     # Caffe inserts an axis of size 1
    (-1, -1, (2, 4, 9, 8)),
    (-4, 3, (576,)),
])
def test_flatten_edge_axes_follow_caffe(axis, end_axis, shape):
    layer = caffe_pb2.LayerParameter(name='flat', type='Flatten',
                                     bottom=['x'], top=['flat'])
    layer.flatten_param.axis = axis
    layer.flatten_param.end_axis = end_axis
    x = _w(*X)
    y = _run_one(layer, x)
    assert y.shape == shape
    reference = R.run_layer(layer, [], [x])[0]
    numpy.testing.assert_array_equal(y.array, reference.astype(
        numpy.float32))


@pytest.mark.parametrize('axis, end_axis', [(4, -1), (1, 4), (-5, -1),
                                            (3, 1)])
def test_flatten_axes_that_do_not_fit(axis, end_axis):
    layer = caffe_pb2.LayerParameter(name='flat', type='Flatten',
                                     bottom=['x'], top=['flat'])
    layer.flatten_param.axis = axis
    layer.flatten_param.end_axis = end_axis
    with pytest.raises(CaffeModelError, match='do not fit shape'):
        _run_one(layer, _w(*X))


# --------------------------------------------------------------------------
# Depthwise convolution: Caffe's (C, 1, kh, kw) weights, Chainer's groups
# --------------------------------------------------------------------------

def _conv_layer(type_name, params):
    layer = caffe_pb2.LayerParameter(name='conv', type=type_name,
                                     bottom=['x'], top=['conv'])
    text_format.Merge(params, layer.convolution_param)
    return layer


@pytest.mark.parametrize('type_name, params, blobs', [
    ('Convolution', 'num_output: 32 group: 32 kernel_size: 3 pad: 1 '
                    'engine: CAFFE', [(32, 1, 3, 3), (32,)]),
    ('Convolution', 'num_output: 64 group: 32 kernel_size: 3 '
                    'bias_term: false', [(64, 1, 3, 3)]),
    ('Deconvolution', 'num_output: 32 group: 32 kernel_size: 4 stride: 2 '
                      'bias_term: false', [(32, 1, 4, 4)]),
    ('Deconvolution', 'num_output: 8 group: 2 kernel_size: 2 '
                      'bias_term: false', [(6, 4, 2, 2)]),
])
def test_grouped_weights_are_stored_as_caffe_stores_them(type_name, params,
                                                         blobs):
    """No dense block-diagonal weight: the link holds Caffe's blob and runs
    Chainer's grouped convolution; its inverse gives the blobs back."""
    layer = _conv_layer(type_name, params)
    stored = [Blob(_w(*shape), False) for shape in blobs]
    built = layers.build(layers.BuildContext(layer, stored, 'test'))
    link = built.link
    assert link.groups == layer.convolution_param.group
    assert link.W.shape == blobs[0]
    assert sum(p.size for p in link.params()) == sum(
        int(numpy.prod(shape)) for shape in blobs)
    inverted = layers.layer_type(type_name).invert(layer, link)
    assert [b.attr for b in inverted] == layers.learnable_blob_names(layer)
    for blob, original in zip(inverted, stored):
        numpy.testing.assert_array_equal(blob.array, original.array)
    channels = blobs[0][0] if type_name == 'Deconvolution' else \
        blobs[0][1] * link.groups
    x = _w(1, channels, 6, 6)
    net = chainer.Chain()
    with net.init_scope():
        net.conv = link
    function = dataclasses.replace(built.function, link_name='conv')
    with chainer.no_backprop_mode():
        y, = function(net, x)
    reference = R.run_layer(layer, [b.array for b in stored], [x])[0]
    numpy.testing.assert_allclose(y.array, reference, rtol=1e-4, atol=1e-5)

