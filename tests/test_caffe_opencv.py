"""Small generated Caffe nets against OpenCV's DNN module, layer by layer.

Each case is a tiny net (V2 ``layer`` form, and V1 ``layers`` form where
every layer type has a V1 enum) written by
:class:`chainer_finetune.caffe.writer.NetWriter` as a prototxt plus a
caffemodel with random weights;
:func:`chainer_finetune.caffe.verify.compare_with_opencv` loads both into
our CaffeNet and into ``cv2.dnn.readNetFromCaffe`` and compares every top
of every layer on the same random input.

OpenCV is an independent implementation (its own importer, V1 upgrade and
kernels), with known gaps: its LRN ignores ``k`` (only k = 1 is compared);
and for InnerProduct ``transpose``, the Bias layer and Pooling
``round_mode`` (OpenCV's schema has a boolean ``ceil_mode`` instead) our
net is compared with OpenCV running an equivalent net
(``EQUIVALENT_CASES``).

Skipped without OpenCV (``pip install 'opencv-python-headless<5'``).
"""

from typing import NamedTuple, Tuple

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import numpy  # noqa: E402
import pytest  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from chainer_finetune.caffe import verify  # noqa: E402
from chainer_finetune.caffe.writer import NetWriter  # noqa: E402

cv2 = pytest.importorskip('cv2')

#: Relative L2 error allowed per blob (one or two float32 layers).
TOLERANCE = 1e-5


class Layer(NamedTuple):
    """One layer of a generated net."""

    type: str
    name: str
    bottom: Tuple[str, ...]
    top: Tuple[str, ...]
    params: str = ''            # the layer's parameter fields, text format
    blobs: Tuple[numpy.ndarray, ...] = ()


def writer(inputs, layers, version):
    """A :class:`NetWriter` of the net; V1 declares inputs by input_dim."""
    w = NetWriter('generated')
    for name, shape in inputs.items():
        w.input(name, shape, form='layer' if version == 2 else 'input_dim')
    for spec in layers:
        layer = w.layer(spec.name, spec.type, spec.bottom, spec.top,
                        blobs=spec.blobs)
        text_format.Merge(spec.params, layer)
    return w


def write_net(directory, inputs, layers, version):
    """Writes ``net-vN.prototxt`` and ``net-vN.caffemodel``; returns their
    paths (model, prototxt).

    Args:
        directory: A pathlib.Path.
        inputs: Input blob name to shape.
        layers: The :class:`Layer` list.
        version: 2 (``layer``, an Input layer) or 1 (``layers``, with
            ``input``/``input_dim``).
    """
    w = writer(inputs, layers, version)
    prototxt = directory / 'net-v{}.prototxt'.format(version)
    model = directory / 'net-v{}.caffemodel'.format(version)
    w.write_prototxt(prototxt, version)
    w.write_caffemodel(model, version)
    return str(model), str(prototxt)


# --------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------

_rs = numpy.random.RandomState(2024)


def _w(*shape, scale=0.5):
    return (_rs.standard_normal(shape) * scale).astype(numpy.float32)


def _positive(*shape):
    return _rs.uniform(0.5, 2.0, shape).astype(numpy.float32)


X = (2, 4, 9, 8)          # the default input: odd sizes for ceil pooling
D = {'data': X}
ABC = {'a': X, 'b': X, 'c': X}


def _one(type_, params='', blobs=(), name='l1'):
    return [Layer(type_, name, ('data',), (name,), params, tuple(blobs))]


CASES = {
    # ---- convolution family
    'conv_relu_in_place': (D, [
        Layer('Convolution', 'conv', ('data',), ('conv',),
              'convolution_param { num_output: 6 kernel_size: 3 pad: 1 }',
              (_w(6, 4, 3, 3), _w(6))),
        Layer('ReLU', 'relu', ('conv',), ('conv',)),
        Layer('Convolution', 'conv2', ('conv',), ('conv2',),
              'convolution_param { num_output: 3 kernel_size: 1 }',
              (_w(3, 6, 1, 1), _w(3)))]),
    'conv_rect_stride': (D, _one(
        'Convolution',
        'convolution_param { num_output: 5 kernel_h: 3 kernel_w: 2 '
        'stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 }',
        (_w(5, 4, 3, 2), _w(5)))),
    'conv_group_nobias': (D, _one(
        'Convolution',
        'convolution_param { num_output: 6 kernel_size: 3 group: 2 '
        'bias_term: false }', (_w(6, 2, 3, 3),))),
    'conv_dilation': (D, _one(
        'Convolution',
        'convolution_param { num_output: 3 kernel_size: 3 pad: 2 '
        'dilation: 2 stride: 2 }', (_w(3, 4, 3, 3), _w(3)))),
    'deconv': (D, _one(
        'Deconvolution',
        'convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad: 1 }',
        (_w(4, 3, 4, 4), _w(3)))),
    'deconv_group': (D, _one(
        'Deconvolution',
        'convolution_param { num_output: 4 kernel_size: 3 stride: 2 '
        'group: 2 }', (_w(4, 2, 3, 3), _w(4)))),
    'inner_product': (D, _one(
        'InnerProduct', 'inner_product_param { num_output: 5 }',
        (_w(5, 4 * 9 * 8, scale=0.1), _w(5)))),
    'inner_product_axis2': (D, _one(
        'InnerProduct', 'inner_product_param { num_output: 5 axis: 2 }',
        (_w(5, 9 * 8, scale=0.2), _w(5)))),
    'inner_product_softmax': (D, [
        Layer('InnerProduct', 'ip', ('data',), ('ip',),
              'inner_product_param { num_output: 7 bias_term: false }',
              (_w(7, 4 * 9 * 8, scale=0.1),)),
        Layer('Softmax', 'prob', ('ip',), ('prob',))]),
    # ---- pooling
    'pool_max_ceil': (D, _one(
        'Pooling', 'pooling_param { pool: MAX kernel_size: 3 stride: 2 }')),
    'pool_max_pad': (D, _one(
        'Pooling', 'pooling_param { pool: MAX kernel_size: 3 stride: 2 '
                   'pad: 1 }')),
    'pool_ave_ceil': (D, _one(
        'Pooling', 'pooling_param { pool: AVE kernel_size: 3 stride: 2 }')),
    'pool_ave_pad': (D, _one(
        'Pooling', 'pooling_param { pool: AVE kernel_size: 3 stride: 2 '
                   'pad: 1 }')),
    'pool_ave_rect': (D, _one(
        'Pooling', 'pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 '
                   'stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1 }')),
    'pool_max_rect': (D, _one(
        'Pooling', 'pooling_param { pool: MAX kernel_h: 3 kernel_w: 2 '
                   'stride_h: 3 stride_w: 2 pad_h: 1 pad_w: 1 }')),
    # A last window that would start in the padding is dropped (width:
    # ceil((8 + 4 - 3) / 2) + 1 = 6 windows, the 6th starts at 10 - 2 = 8).
    'pool_max_pad_clip': (D, _one(
        'Pooling', 'pooling_param { pool: MAX kernel_size: 3 stride: 2 '
                   'pad: 2 }')),
    'pool_ave_pad_clip': (D, _one(
        'Pooling', 'pooling_param { pool: AVE kernel_size: 3 stride: 2 '
                   'pad: 2 }')),
    'pool_global_ave': (D, _one(
        'Pooling', 'pooling_param { pool: AVE global_pooling: true }')),
    'pool_global_max': (D, _one(
        'Pooling', 'pooling_param { pool: MAX global_pooling: true }')),
    # ---- activations
    'relu': (D, _one('ReLU')),
    'relu_leaky': (D, _one('ReLU', 'relu_param { negative_slope: 0.1 }')),
    'prelu': (D, _one('PReLU', '', (_w(4),))),
    'prelu_shared': (D, _one('PReLU', 'prelu_param { channel_shared: true }',
                             (numpy.array([0.25], numpy.float32),))),
    'elu': (D, _one('ELU', 'elu_param { alpha: 0.5 }')),
    'sigmoid': (D, _one('Sigmoid')),
    'tanh': (D, _one('TanH')),
    'absval': (D, _one('AbsVal')),
    'bnll': (D, _one('BNLL')),
    'power_square': (D, _one(
        'Power', 'power_param { power: 2 scale: 0.5 shift: 1 }')),
    'power_sqrt': (D, _one(
        'Power', 'power_param { power: 0.5 scale: 0.5 shift: 1 }')),
    'power_cube': (D, _one(
        'Power', 'power_param { power: 3 shift: -0.2 }')),
    'power_zero': (D, _one('Power', 'power_param { power: 0 }')),
    'power_affine': (D, _one(
        'Power', 'power_param { scale: -2 shift: 0.5 }')),
    # ---- normalization
    'lrn_across': (D, _one(
        'LRN', 'lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }')),
    'lrn_across_5': (D, _one(
        'LRN', 'lrn_param { local_size: 5 alpha: 2 beta: 0.6 }')),
    'lrn_within': (D, _one(
        'LRN', 'lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 '
               'norm_region: WITHIN_CHANNEL }')),
    'batchnorm_scale': (D, [
        Layer('BatchNorm', 'bn', ('data',), ('data',),
              'batch_norm_param { use_global_stats: true eps: 0.001 }',
              (_w(4) * 2, _positive(4) * 2,
               numpy.array([2.0], numpy.float32))),
        Layer('Scale', 'scale', ('data',), ('data',),
              'scale_param { bias_term: true }', (_w(4), _w(4)))]),
    'batchnorm_no_statistics': (D, _one(
        'BatchNorm', 'batch_norm_param { use_global_stats: true }',
        (_w(4), _positive(4), numpy.array([0.0], numpy.float32)))),
    'batchnorm_default_eps': (D, _one(
        'BatchNorm', '', (_w(4), _positive(4),
                          numpy.array([1.0], numpy.float32)))),
    'scale_nobias': (D, _one('Scale', '', (_w(4),))),
    'scale_two_axes': (D, _one(
        'Scale', 'scale_param { axis: 1 num_axes: 2 bias_term: true }',
        (_w(4, 9), _w(4, 9)))),
    'scale_second_bottom': ({'data': X, 's': (2, 4)}, [Layer(
        'Scale', 'scale', ('data', 's'), ('scale',),
        'scale_param { axis: 0 }')]),
    # ---- combining and reshaping
    'eltwise_sum_coeff': (ABC, [Layer(
        'Eltwise', 'sum', ('a', 'b', 'c'), ('sum',),
        'eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }')]),
    'eltwise_sum': (ABC, [Layer('Eltwise', 'sum', ('a', 'b'), ('sum',))]),
    'eltwise_prod': (ABC, [Layer(
        'Eltwise', 'prod', ('a', 'b', 'c'), ('prod',),
        'eltwise_param { operation: PROD }')]),
    'eltwise_max': (ABC, [Layer(
        'Eltwise', 'max', ('a', 'b', 'c'), ('max',),
        'eltwise_param { operation: MAX }')]),
    'concat_channels': ({'a': X, 'b': (2, 3, 9, 8)}, [Layer(
        'Concat', 'cat', ('a', 'b'), ('cat',))]),
    'concat_height': ({'a': X, 'b': (2, 4, 2, 8)}, [Layer(
        'Concat', 'cat', ('a', 'b'), ('cat',), 'concat_param { axis: 2 }')]),
    'slice_points': (D, [Layer(
        'Slice', 'slice', ('data',), ('s1', 's2', 's3'),
        'slice_param { axis: 1 slice_point: 1 slice_point: 3 }')]),
    'slice_equal_then_sum': (D, [
        Layer('Slice', 'slice', ('data',), ('s1', 's2')),
        Layer('Eltwise', 'sum', ('s1', 's2'), ('sum',))]),
    'slice_height': (D, [Layer(
        'Slice', 'slice', ('data',), ('s1', 's2'),
        'slice_param { axis: 2 slice_point: 4 }')]),
    'flatten': (D, _one('Flatten')),
    'flatten_axis2': (D, _one('Flatten', 'flatten_param { axis: 2 }')),
    'reshape': (D, _one('Reshape',
                        'reshape_param { shape { dim: 0 dim: 2 dim: -1 } }')),
    'softmax_channels': (D, _one('Softmax')),
    'softmax_axis3': (D, _one('Softmax', 'softmax_param { axis: 3 }')),
    'dropout': (D, _one('Dropout', 'dropout_param { dropout_ratio: 0.3 }')),
    'conv_pool_lrn_ip_chain': (D, [
        Layer('Convolution', 'conv', ('data',), ('conv',),
              'convolution_param { num_output: 8 kernel_size: 3 }',
              (_w(8, 4, 3, 3), _w(8))),
        Layer('ReLU', 'relu', ('conv',), ('conv',)),
        Layer('Pooling', 'pool', ('conv',), ('pool',),
              'pooling_param { pool: MAX kernel_size: 2 stride: 2 }'),
        Layer('LRN', 'norm', ('pool',), ('norm',),
              'lrn_param { local_size: 5 alpha: 0.1 beta: 0.75 }'),
        Layer('InnerProduct', 'fc', ('norm',), ('fc',),
              'inner_product_param { num_output: 4 }',
              (_w(4, 8 * 4 * 3, scale=0.2), _w(4))),
        Layer('Dropout', 'drop', ('fc',), ('fc',)),
        Layer('Softmax', 'prob', ('fc',), ('prob',))]),
}


def _has_v1(layers, inputs=None):
    """Whether the net has a V1 form (types, fields, 4-D inputs)."""
    inputs = inputs or D
    if any(len(shape) != 4 for shape in inputs.values()):
        return False
    return writer(inputs, layers, 1).v1_compatible()


PARAMS = [pytest.param(name, 2, id='{}-v2'.format(name)) for name in CASES]
PARAMS += [pytest.param(name, 1, id='{}-v1'.format(name))
           for name, (inputs, layers) in CASES.items()
           if _has_v1(layers, inputs)]


@pytest.mark.parametrize('case, version', PARAMS)
def test_matches_opencv(case, version, tmp_path):
    inputs, layers = CASES[case]
    model, prototxt = write_net(tmp_path, inputs, layers, version)
    rows = verify.compare_with_opencv(model, prototxt, seed=3)
    expected = [(layer.name, top) for layer in layers for top in layer.top]
    assert [(r.layer, r.blob) for r in rows] == expected
    assert all(r.compared for r in rows), verify.format_comparison(rows)
    bad = [r for r in rows if not r.rel_l2 < TOLERANCE]
    assert not bad, verify.format_comparison(rows, TOLERANCE)


_IP_T = _w(4 * 9 * 8, 5, scale=0.1)
_IP_B = _w(5)
_BIAS = _w(4)

_FLOOR = {'round_mode: FLOOR': 'ceil_mode: false'}

#: Features OpenCV lacks, checked against an equivalent net it can run:
#: (inputs, our net's layers, OpenCV's layers[, text replacements in
#: OpenCV's prototxt]), layer names alike.
EQUIVALENT_CASES = {
    # OpenCV ignores `transpose` (it reads the (in, out) blob as (out, in)).
    'inner_product_transpose': (D, _one(
        'InnerProduct', 'inner_product_param { num_output: 5 '
                        'transpose: true }', (_IP_T, _IP_B)),
        _one('InnerProduct', 'inner_product_param { num_output: 5 }',
             (_IP_T.T.copy(), _IP_B))),
    # OpenCV has no Bias layer: a Scale by ones with the same bias.
    'bias': (D, _one('Bias', '', (_BIAS,)),
             _one('Scale', 'scale_param { bias_term: true }',
                  (numpy.ones(4, numpy.float32), _BIAS))),
    'bias_axis0': ({'data': (4, 3, 5)}, _one(
        'Bias', 'bias_param { axis: 0 num_axes: 1 }', (_BIAS,)),
        _one('Scale', 'scale_param { axis: 0 num_axes: 1 bias_term: true }',
             (numpy.ones(4, numpy.float32), _BIAS))),
    # OpenCV's schema has `ceil_mode` (a bool) where BVLC has `round_mode`.
    'pool_max_floor': (D, _one(
        'Pooling', 'pooling_param { pool: MAX kernel_size: 3 stride: 2 '
                   'round_mode: FLOOR }'), None, _FLOOR),
    'pool_ave_floor_pad': (D, _one(
        'Pooling', 'pooling_param { pool: AVE kernel_size: 3 stride: 2 '
                   'pad: 1 round_mode: FLOOR }'), None, _FLOOR),
    'pool_max_floor_rect': (D, _one(
        'Pooling', 'pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 '
                   'stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 2 '
                   'round_mode: FLOOR }'),
        None, _FLOOR),
}


def _equivalent(name):
    inputs, ours, theirs, *rest = EQUIVALENT_CASES[name]
    return inputs, ours, ours if theirs is None else theirs, \
        rest[0] if rest else {}


EQUIVALENT_PARAMS = [
    pytest.param(name, version, id='{}-v{}'.format(name, version))
    for name in EQUIVALENT_CASES for version in (2, 1)
    if version == 2 or (_has_v1(_equivalent(name)[1], _equivalent(name)[0])
                        and _has_v1(_equivalent(name)[2],
                                    _equivalent(name)[0]))]


@pytest.mark.parametrize('case, version', EQUIVALENT_PARAMS)
def test_matches_equivalent_opencv_net(case, version, tmp_path):
    inputs, ours, theirs, replacements = _equivalent(case)
    (tmp_path / 'ours').mkdir()
    (tmp_path / 'theirs').mkdir()
    model, prototxt = write_net(tmp_path / 'ours', inputs, ours, version)
    net = chainer_finetune.load_caffe(model, prototxt)
    model, prototxt = write_net(tmp_path / 'theirs', inputs, theirs, version)
    text = open(prototxt).read()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    with open(prototxt, 'w') as f:
        f.write(text)
    rows = verify.compare_with_opencv(model, prototxt, seed=5, net=net)
    assert rows and all(r.compared for r in rows)
    bad = [r for r in rows if not r.rel_l2 < TOLERANCE]
    assert not bad, verify.format_comparison(rows, TOLERANCE)


def test_v1_cases_cover_the_v1_types():
    covered = {layer.type for inputs, layers in CASES.values()
               for layer in layers if _has_v1(layers, inputs)}
    assert covered >= {
        'Convolution', 'Deconvolution', 'InnerProduct', 'Pooling', 'ReLU',
        'Sigmoid', 'TanH', 'AbsVal', 'Power', 'BNLL', 'LRN', 'Eltwise',
        'Concat', 'Slice', 'Flatten', 'Softmax', 'Dropout'}


# --------------------------------------------------------------------------
# The verify module itself
# --------------------------------------------------------------------------

def test_compare_arrays():
    a = numpy.array([1.0, 2.0, numpy.nan, numpy.inf], numpy.float32)
    # Equal infinities are equal; a NaN never is, not even against a NaN
    # (tests/test_reliability.py has the NaN cases).
    finite_and_inf = a[[0, 1, 3]]
    assert verify.compare_arrays(finite_and_inf, finite_and_inf.copy()) == (
        0.0, 0.0)
    assert verify.compare_arrays(a, a.copy()) == (numpy.inf, numpy.inf)
    max_abs, rel = verify.compare_arrays(a[:2] + [0, 1e-3], a[:2])
    assert max_abs == pytest.approx(1e-3, rel=1e-3)
    assert rel == pytest.approx(1e-3 / 5 ** 0.5, rel=1e-3)
    assert verify.compare_arrays(a, numpy.zeros(4)) == (numpy.inf,
                                                        numpy.inf)
    assert verify.compare_arrays(numpy.zeros(3), numpy.zeros(4)) == (
        numpy.inf, numpy.inf)
    # Same size, other shape: compared element by element.
    assert verify.compare_arrays(numpy.ones((2, 3)), numpy.ones(6))[1] == 0


def test_a_wrong_weight_is_caught(tmp_path):
    """A blob stored with a wrong value fails the comparison where expected."""
    inputs, layers = CASES['conv_relu_in_place']
    model, prototxt = write_net(tmp_path, inputs, layers, 2)
    net = chainer_finetune.load_caffe(model, prototxt)
    net['conv2'].W.array[0, 0, 0, 0] += 0.5
    rows = verify.compare_with_opencv(model, prototxt, net=net)
    assert [r.rel_l2 < TOLERANCE for r in rows] == [True, True, False]
    table = verify.format_comparison(rows, TOLERANCE)
    assert 'FAIL' in table.splitlines()[3]
    assert '1 beyond tolerance' in table.splitlines()[-1]


def test_generated_prototxt_without_prototxt(tmp_path):
    """Without a prototxt OpenCV reads one written from the caffemodel."""
    inputs, layers = CASES['conv_pool_lrn_ip_chain']
    model, _ = write_net(tmp_path, inputs, layers, 2)
    rows = verify.compare_with_opencv(model, None)
    assert len(rows) == 7 and all(r.rel_l2 < TOLERANCE for r in rows)


def test_run_verify_exit_status(tmp_path, capsys):
    import argparse
    inputs, layers = CASES['conv_pool_lrn_ip_chain']
    model, prototxt = write_net(tmp_path, inputs, layers, 1)
    parser = argparse.ArgumentParser()
    verify.add_verify_arguments(parser)
    assert verify.run_verify(parser.parse_args(
        [model, '--prototxt', prototxt])) == 0
    out = capsys.readouterr().out
    assert out.count('\n') == 1 + 7 + 2 and out.startswith('layer')
    assert out.rstrip().endswith('OK (0 blobs beyond tolerance 0.0001)')
    # --failed-only: nothing failed, so only the summary lines.
    assert verify.run_verify(parser.parse_args(
        [model, '--prototxt', prototxt, '--failed-only'])) == 0
    out = capsys.readouterr().out
    assert out.count('\n') == 2 and 'OK' in out
    # A tolerance no float32 computation meets.
    assert verify.run_verify(parser.parse_args(
        [model, '--prototxt', prototxt, '--tolerance', '0',
         '--input-shape', '1,4,9,8'])) == 1
    assert 'FAIL' in capsys.readouterr().out
    # Not comparable: the shape of a V2 net's input is unknown.
    assert verify.run_verify(parser.parse_args(
        [str(tmp_path / 'missing.caffemodel')])) == 2


def test_missing_opencv_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'cv2', None)
    with pytest.raises(verify.OpenCVUnavailableError,
                       match='opencv-python-headless<5'):
        verify.import_cv2()
    assert issubclass(verify.OpenCVUnavailableError, ImportError)
    assert issubclass(verify.OpenCVUnavailableError,
                      chainer_finetune.errors.ChainerFinetuneError)
