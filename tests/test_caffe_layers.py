"""Caffe layers loaded by chainer_finetune against an independent reference.

Every case builds a small net with :mod:`chainer_finetune.caffe.writer`,
writes it as a caffemodel (V2, and V1 where the V1 format can express it),
loads it with ``load_caffe`` and compares the forward pass with
``caffe_reference`` (NumPy transcriptions of BVLC Caffe's C++ layers, in
float64). V1 and V2 files of the same net must give bit-identical outputs.
"""

import os
import pickle

import numpy as np
import pytest

import chainer_finetune  # noqa: F401  (before chainer)
import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402

from chainer_finetune import CaffeModelError  # noqa: E402
from chainer_finetune import UnsupportedLayerError  # noqa: E402
from chainer_finetune import load_caffe  # noqa: E402
from chainer_finetune import load_mean  # noqa: E402
from chainer_finetune.caffe import caffe_pb2  # noqa: E402
from chainer_finetune.caffe import reader  # noqa: E402
from chainer_finetune.caffe import supported_types  # noqa: E402
from chainer_finetune.caffe import writer as W  # noqa: E402
from chainer_finetune.caffe import zoo_shapes  # noqa: E402

import caffe_nets  # noqa: E402
import caffe_reference as R  # noqa: E402

RTOL = 1e-5


def assert_close(actual, expected, rtol=RTOL, what=''):
    """max |actual - expected| <= rtol * max(1, max |expected|)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, '{}: shape {} != {}'.format(
        what, actual.shape, expected.shape)
    if not expected.size:
        return
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= rtol * scale, \
        '{}: max abs error {:.3g} > {:.3g} (expected scale {:.3g})'.format(
            what, err, rtol * scale, scale)


def forward(net, inputs, outputs, train=False):
    with chainer.using_config('train', train), chainer.no_backprop_mode():
        ys = net(inputs=inputs, outputs=outputs)
    return [y.array for y in ys]


def load_and_run(tmp_path, writer, inputs, outputs, version=2, train=False,
                 name='net'):
    path = os.path.join(str(tmp_path), '{}_v{}.caffemodel'.format(
        name, version))
    writer.write_caffemodel(path, version)
    return forward(load_caffe(path), inputs, outputs, train)


def check_against_reference(tmp_path, writer, inputs, outputs, train=False,
                            rtol=RTOL):
    """Loader vs reference, V2 and (where possible) V1; V1 == V2 bitwise.

    Returns:
        dict: version -> list of output arrays.
    """
    expected = R.forward_net(writer, inputs, train=train)
    versions = (2, 1) if writer.v1_compatible() else (2,)
    results = {}
    for version in versions:
        actual = load_and_run(tmp_path, writer, inputs, outputs, version,
                              train)
        for name, value in zip(outputs, actual):
            assert_close(value, expected[name], rtol,
                         'V{} blob {!r}'.format(version, name))
        results[version] = actual
    if 1 in results:
        for name, v1, v2 in zip(outputs, results[1], results[2]):
            assert v1.dtype == v2.dtype and np.array_equal(v1, v2), \
                'V1 and V2 differ on {!r}'.format(name)
    return results


# ---------------------------------------------------------------------------
# One layer at a time
# ---------------------------------------------------------------------------

_RNG = np.random.RandomState(42)


def _positive(*shape):
    return _RNG.uniform(0.5, 2.0, shape).astype(np.float32)


def _normal(*shape):
    return _RNG.standard_normal(shape).astype(np.float32)


def case(id, type, params=None, blobs=(), shape=(2, 3, 4, 4), **kw):
    """A one-layer net: input ``data`` (+ ``extra`` inputs, + ``label``)
    -> layer -> tops ``out``/``out0``...

    ``blobs`` entries are shapes (random normal * 0.5) or arrays;
    ``data`` overrides the random input; ``expect`` is the expected shape
    of the first top (checked independently of the reference).
    """
    spec = dict(type=type, params=params or {}, blobs=blobs, shape=shape)
    spec.update(kw)
    return pytest.param(spec, id=id)


def build_case(spec):
    rng = np.random.RandomState(0)
    w = W.NetWriter('case')
    w.input('data', spec['shape'], form='input_shape')
    data = spec.get('data')
    if data is None:
        data = rng.standard_normal(spec['shape']) * spec.get('scale', 1.0)
    inputs = {'data': np.asarray(data, np.float32)}
    bottoms = ['data']
    for name, shape in spec.get('extra', ()):
        w.input(name, shape, form='input_shape')
        inputs[name] = rng.standard_normal(shape).astype(np.float32)
        bottoms.append(name)
    label = spec.get('label')
    if label is not None:
        label = np.asarray(label, np.int32)
        w.input('label', label.shape, form='input_shape')
        inputs['label'] = label
        bottoms.append('label')
    blobs = [b if isinstance(b, np.ndarray) else
             (rng.standard_normal(b) * 0.5).astype(np.float32)
             for b in spec['blobs']]
    n_tops = spec.get('n_tops', 1)
    tops = ['out'] if n_tops == 1 else ['out{}'.format(i)
                                        for i in range(n_tops)]
    w.layer('layer', spec['type'], bottoms, tops, spec['params'], blobs)
    return w, inputs, tops


def pool(**p):
    return {'pooling_param': p}


def conv(**p):
    return {'convolution_param': p}


POOLING = [
    # Caffe rounds up, then drops a last window starting in the padding:
    # 5x5, k2 s2 pad1 -> ceil(5/2) + 1 = 4 -> 3.
    case('max-k2s2p1-5x5', 'Pooling',
         pool(pool='MAX', kernel_size=2, stride=2, pad=1), shape=(2, 3, 5, 5),
         expect=(2, 3, 3, 3)),
    case('ave-k2s2p1-5x5', 'Pooling',
         pool(pool='AVE', kernel_size=2, stride=2, pad=1), shape=(2, 3, 5, 5),
         expect=(2, 3, 3, 3)),
    # No padding: the last window is clipped; AVE divides by the clipped
    # extent.
    case('ave-k3s2-8x8', 'Pooling',
         pool(pool='AVE', kernel_size=3, stride=2), shape=(2, 3, 8, 8),
         expect=(2, 3, 4, 4)),
    case('max-k3s2-8x8', 'Pooling',
         pool(pool='MAX', kernel_size=3, stride=2), shape=(2, 3, 8, 8),
         expect=(2, 3, 4, 4)),
    case('max-k3s3-7x7', 'Pooling',
         pool(pool='MAX', kernel_size=3, stride=3), shape=(1, 2, 7, 7),
         expect=(1, 2, 3, 3)),
    case('max-k3s2p1-floor', 'Pooling',
         pool(pool='MAX', kernel_size=3, stride=2, pad=1, round_mode='FLOOR'),
         shape=(2, 3, 8, 8), expect=(2, 3, 4, 4)),
    case('ave-k3s2p1-floor', 'Pooling',
         pool(pool='AVE', kernel_size=3, stride=2, pad=1, round_mode='FLOOR'),
         shape=(2, 3, 8, 8), expect=(2, 3, 4, 4)),
    case('ave-k3s2p1-ceil', 'Pooling',
         pool(pool='AVE', kernel_size=3, stride=2, pad=1),
         shape=(2, 3, 8, 8), expect=(2, 3, 5, 5)),
    # The padding counts in the AVE divisor (up to size + pad).
    case('ave-k3s1p1', 'Pooling',
         pool(pool='AVE', kernel_size=3, stride=1, pad=1), shape=(2, 3, 4, 4),
         expect=(2, 3, 4, 4)),
    case('ave-k3s2p2', 'Pooling',
         pool(pool='AVE', kernel_size=3, stride=2, pad=2), shape=(2, 3, 5, 5),
         expect=(2, 3, 4, 4)),
    case('max-rect-hw-fields', 'Pooling',
         pool(pool='MAX', kernel_h=3, kernel_w=2, stride_h=2, stride_w=1,
              pad_h=1, pad_w=0), shape=(2, 3, 7, 6), expect=(2, 3, 4, 5)),
    case('ave-rect-hw-fields', 'Pooling',
         pool(pool='AVE', kernel_h=3, kernel_w=2, stride_h=2, stride_w=1,
              pad_h=1, pad_w=0), shape=(2, 3, 7, 6), expect=(2, 3, 4, 5)),
    # Caffe's drop rule applies to both axes as soon as either is padded:
    # width 4, k1 s2 pad 0 -> ceil(3/2) + 1 = 3, dropped to 2.
    case('max-drop-rule-unpadded-axis', 'Pooling',
         pool(pool='MAX', kernel_h=3, kernel_w=1, stride_h=2, stride_w=2,
              pad_h=1, pad_w=0), shape=(2, 3, 5, 4), expect=(2, 3, 3, 2)),
    case('ave-drop-rule-unpadded-axis', 'Pooling',
         pool(pool='AVE', kernel_h=3, kernel_w=1, stride_h=2, stride_w=2,
              pad_h=1, pad_w=0), shape=(2, 3, 5, 4), expect=(2, 3, 3, 2)),
    case('global-max', 'Pooling', pool(pool='MAX', global_pooling=True),
         shape=(2, 3, 5, 4), expect=(2, 3, 1, 1)),
    case('global-ave', 'Pooling', pool(pool='AVE', global_pooling=True),
         shape=(2, 3, 5, 4), expect=(2, 3, 1, 1)),
]

CONVOLUTION = [
    case('conv-k3p1', 'Convolution', conv(num_output=5, kernel_size=3, pad=1),
         [(5, 4, 3, 3), (5,)], shape=(2, 4, 6, 6), expect=(2, 5, 6, 6)),
    case('conv-k3s2', 'Convolution',
         conv(num_output=5, kernel_size=3, stride=2),
         [(5, 4, 3, 3), (5,)], shape=(2, 4, 7, 7), expect=(2, 5, 3, 3)),
    case('conv-group2', 'Convolution',
         conv(num_output=6, kernel_size=3, pad=1, group=2),
         [(6, 2, 3, 3), (6,)], shape=(2, 4, 5, 5), expect=(2, 6, 5, 5)),
    case('conv-depthwise', 'Convolution',
         conv(num_output=4, kernel_size=3, group=4),
         [(4, 1, 3, 3), (4,)], shape=(2, 4, 5, 5), expect=(2, 4, 3, 3)),
    case('conv-dilation2', 'Convolution',
         conv(num_output=3, kernel_size=3, pad=2, dilation=2),
         [(3, 4, 3, 3), (3,)], shape=(2, 4, 6, 6), expect=(2, 3, 6, 6)),
    case('conv-hw-fields', 'Convolution',
         conv(num_output=3, kernel_h=3, kernel_w=2, stride_h=2, stride_w=1,
              pad_h=1, pad_w=0),
         [(3, 4, 3, 2), (3,)], shape=(2, 4, 7, 6), expect=(2, 3, 4, 5)),
    case('conv-two-values', 'Convolution',
         conv(num_output=3, kernel_size=[3, 1], stride=[1, 2], pad=[0, 1],
              dilation=[2, 1]),
         [(3, 4, 3, 1), (3,)], shape=(2, 4, 7, 5), expect=(2, 3, 3, 4)),
    case('conv-no-bias', 'Convolution',
         conv(num_output=5, kernel_size=3, bias_term=False),
         [(5, 4, 3, 3)], shape=(2, 4, 5, 5), expect=(2, 5, 3, 3)),
    case('conv-1x1-s2', 'Convolution',
         conv(num_output=5, kernel_size=1, stride=2),
         [(5, 4, 1, 1), (5,)], shape=(2, 4, 5, 5), expect=(2, 5, 3, 3)),
    case('deconv-k4s2p1', 'Deconvolution',
         conv(num_output=3, kernel_size=4, stride=2, pad=1),
         [(4, 3, 4, 4), (3,)], shape=(2, 4, 3, 3), expect=(2, 3, 6, 6)),
    case('deconv-group2', 'Deconvolution',
         conv(num_output=6, kernel_size=3, stride=2, pad=1, group=2),
         [(4, 3, 3, 3), (6,)], shape=(2, 4, 3, 3), expect=(2, 6, 5, 5)),
    case('deconv-dilation-no-bias', 'Deconvolution',
         conv(num_output=2, kernel_size=3, dilation=2, bias_term=False),
         [(4, 2, 3, 3)], shape=(1, 4, 3, 3), expect=(1, 2, 7, 7)),
    case('deconv-hw-fields', 'Deconvolution',
         conv(num_output=2, kernel_h=2, kernel_w=3, stride_h=2, stride_w=1),
         [(4, 2, 2, 3), (2,)], shape=(1, 4, 3, 3), expect=(1, 2, 6, 5)),
]


def ip(**p):
    return {'inner_product_param': p}


INNER_PRODUCT = [
    case('ip-flatten-4d', 'InnerProduct', ip(num_output=5),
         [(5, 48), (5,)], shape=(2, 3, 4, 4), expect=(2, 5)),
    case('ip-axis2', 'InnerProduct', ip(num_output=5, axis=2),
         [(5, 4), (5,)], shape=(2, 3, 4), expect=(2, 3, 5)),
    case('ip-axis-1', 'InnerProduct', ip(num_output=5, axis=-1),
         [(5, 4), (5,)], shape=(2, 3, 4), expect=(2, 3, 5)),
    case('ip-transpose', 'InnerProduct', ip(num_output=5, transpose=True),
         [(6, 5), (5,)], shape=(2, 6), expect=(2, 5)),
    case('ip-transpose-axis2', 'InnerProduct',
         ip(num_output=3, axis=2, transpose=True),
         [(8, 3), (3,)], shape=(2, 3, 2, 4), expect=(2, 3, 3)),
    case('ip-no-bias', 'InnerProduct', ip(num_output=4, bias_term=False),
         [(4, 6)], shape=(3, 6), expect=(3, 4)),
]

NEURONS = [
    case('relu', 'ReLU'),
    case('relu-leaky', 'ReLU', {'relu_param': {'negative_slope': 0.1}}),
    case('relu-negative-slope-neg', 'ReLU',
         {'relu_param': {'negative_slope': -0.5}}),
    case('prelu-per-channel', 'PReLU', blobs=[_normal(3)]),
    case('prelu-2d', 'PReLU', blobs=[_normal(3)], shape=(4, 3)),
    # Caffe stores a shared slope as a 0-axis blob (no shape written).
    case('prelu-shared-0axis-blob', 'PReLU',
         {'prelu_param': {'channel_shared': True}},
         [np.array(0.25, np.float32)]),
    case('prelu-shared-shape-1', 'PReLU',
         {'prelu_param': {'channel_shared': True}},
         [np.array([-0.3], np.float32)]),
    case('elu', 'ELU'),
    case('elu-alpha', 'ELU', {'elu_param': {'alpha': 0.3}}),
    case('sigmoid', 'Sigmoid', scale=3.0),
    case('tanh', 'TanH', scale=2.0),
    case('absval', 'AbsVal'),
    case('bnll', 'BNLL', scale=20.0),
    case('power', 'Power',
         {'power_param': {'power': 2.0, 'scale': 0.5, 'shift': 1.0}}),
    case('power-sqrt', 'Power',
         {'power_param': {'power': 0.5, 'scale': 0.5, 'shift': 3.0}}),
    case('power-reciprocal', 'Power',
         {'power_param': {'power': -1.0, 'shift': 5.0}}),
    case('power-0', 'Power', {'power_param': {'power': 0.0, 'scale': 2.0}}),
    case('power-scale-0', 'Power',
         {'power_param': {'power': 3.0, 'scale': 0.0, 'shift': 1.5}}),
    case('dropout-test-identity', 'Dropout',
         {'dropout_param': {'dropout_ratio': 0.3}}),
]


def lrn(**p):
    return {'lrn_param': p}


NORMALIZATION = [
    case('lrn-across-k2', 'LRN',
         lrn(local_size=5, alpha=1.0, beta=0.75, k=2.0), shape=(2, 7, 3, 3),
         scale=2.0),
    case('lrn-across-defaults', 'LRN', lrn(local_size=3, alpha=0.5),
         shape=(2, 4, 3, 3)),
    case('lrn-within-k-ignored', 'LRN',
         lrn(local_size=3, alpha=0.7, beta=0.75, k=3.0,
             norm_region='WITHIN_CHANNEL'), shape=(2, 3, 5, 5), scale=2.0),
    case('lrn-within-5', 'LRN',
         lrn(local_size=5, alpha=2.0, beta=0.5, norm_region='WITHIN_CHANNEL'),
         shape=(1, 2, 6, 5)),
    # Stored statistics are sums: mean = blob0 / factor.
    case('batchnorm-factor', 'BatchNorm',
         {'batch_norm_param': {'eps': 1e-3}},
         [_normal(3) * 4, _positive(3) * 4, np.array([4.0], np.float32)]),
    # A factor of 0 means zero statistics (not a division by zero).
    case('batchnorm-factor-0', 'BatchNorm', {},
         [_normal(3), _positive(3), np.array([0.0], np.float32)]),
    case('batchnorm-2d', 'BatchNorm', {},
         [_normal(5), _positive(5), np.array([1.0], np.float32)],
         shape=(4, 5)),
    case('batchnorm-global-stats-in-train', 'BatchNorm',
         {'batch_norm_param': {'use_global_stats': True}},
         [_normal(3) * 2, _positive(3) * 2, np.array([2.0], np.float32)],
         train=True),
    case('batchnorm-batch-stats-in-train', 'BatchNorm',
         {'batch_norm_param': {'eps': 1e-4}},
         [_normal(3), _positive(3), np.array([1.0], np.float32)],
         train=True),
]

SCALE_BIAS = [
    case('scale-with-bias', 'Scale', {'scale_param': {'bias_term': True}},
         [(3,), (3,)], shape=(2, 3, 4, 5)),
    case('scale-no-bias', 'Scale', {}, [(3,)], shape=(2, 3, 4, 5)),
    case('scale-num-axes-2', 'Scale',
         {'scale_param': {'num_axes': 2, 'bias_term': True}},
         [(3, 4), (3, 4)], shape=(2, 3, 4, 5)),
    case('scale-axis2-to-end', 'Scale',
         {'scale_param': {'axis': 2, 'num_axes': -1}}, [(4, 5)],
         shape=(2, 3, 4, 5)),
    case('scale-axis-neg2', 'Scale', {'scale_param': {'axis': -2}},
         [(4,)], shape=(2, 3, 4, 5)),
    case('scale-axis0', 'Scale', {'scale_param': {'axis': 0}}, [(2,)],
         shape=(2, 3, 4, 5)),
    # num_axes 0: one scalar; Caffe writes a 0-axis blob without a shape.
    case('scale-scalar', 'Scale',
         {'scale_param': {'num_axes': 0, 'bias_term': True}},
         [np.array(1.7, np.float32), np.array(-0.4, np.float32)],
         shape=(2, 3, 4, 5)),
    case('scale-two-bottoms', 'Scale', {}, shape=(2, 3, 4, 5),
         extra=[('factor', (3,))]),
    case('scale-two-bottoms-axis0', 'Scale', {'scale_param': {'axis': 0}},
         shape=(2, 3, 4, 5), extra=[('factor', (2, 3))]),
    # With 2 bottoms the bias has bottom[1]'s axes, whatever num_axes says.
    case('scale-two-bottoms-2d-bias', 'Scale',
         {'scale_param': {'axis': 0, 'bias_term': True}}, [(2, 3)],
         shape=(2, 3, 4, 5), extra=[('factor', (2, 3))]),
    case('bias-one-bottom', 'Bias', {}, [(3,)], shape=(2, 3, 4, 5)),
    case('bias-num-axes-2', 'Bias', {'bias_param': {'num_axes': 2}},
         [(3, 4)], shape=(2, 3, 4, 5)),
    case('bias-axis2-to-end', 'Bias',
         {'bias_param': {'axis': 2, 'num_axes': -1}}, [(4, 5)],
         shape=(2, 3, 4, 5)),
    case('bias-two-bottoms', 'Bias', {}, shape=(2, 3, 4, 5),
         extra=[('b', (3, 4))]),
]


def eltwise(op, coeff=None):
    p = {'operation': op}
    if coeff is not None:
        p['coeff'] = coeff
    return {'eltwise_param': p}


STRUCTURE = [
    case('eltwise-sum', 'Eltwise', eltwise('SUM'),
         extra=[('b', (2, 3, 4, 4))]),
    case('eltwise-sum-coeff', 'Eltwise', eltwise('SUM', [1.0, -0.5, 2.0]),
         extra=[('b', (2, 3, 4, 4)), ('c', (2, 3, 4, 4))]),
    case('eltwise-prod', 'Eltwise', eltwise('PROD'),
         extra=[('b', (2, 3, 4, 4)), ('c', (2, 3, 4, 4))]),
    case('eltwise-max', 'Eltwise', eltwise('MAX'),
         extra=[('b', (2, 3, 4, 4)), ('c', (2, 3, 4, 4))]),
    case('concat-axis1', 'Concat', {}, extra=[('b', (2, 2, 4, 4))],
         expect=(2, 5, 4, 4)),
    case('concat-axis2', 'Concat', {'concat_param': {'axis': 2}},
         extra=[('b', (2, 3, 1, 4))], expect=(2, 3, 5, 4)),
    case('concat-axis-neg1', 'Concat', {'concat_param': {'axis': -1}},
         extra=[('b', (2, 3, 4, 2))], expect=(2, 3, 4, 6)),
    case('concat-legacy-concat-dim', 'Concat',
         {'concat_param': {'concat_dim': 0}}, extra=[('b', (1, 3, 4, 4))],
         expect=(3, 3, 4, 4)),
    case('slice-points', 'Slice', {'slice_param': {'slice_point': [1, 3]}},
         shape=(2, 6, 4, 4), n_tops=3, expect=(2, 1, 4, 4)),
    case('slice-equal-axis2', 'Slice', {'slice_param': {'axis': 2}},
         shape=(2, 3, 4, 4), n_tops=2, expect=(2, 3, 2, 4)),
    case('slice-legacy-slice-dim', 'Slice',
         {'slice_param': {'slice_dim': 3, 'slice_point': [1]}},
         shape=(2, 3, 4, 4), n_tops=2, expect=(2, 3, 4, 1)),
    case('slice-axis-neg1-equal', 'Slice', {'slice_param': {'axis': -1}},
         shape=(2, 3, 4, 4), n_tops=4, expect=(2, 3, 4, 1)),
    case('split', 'Split', n_tops=3, expect=(2, 3, 4, 4)),
    case('flatten', 'Flatten', expect=(2, 48)),
    case('flatten-axis2', 'Flatten', {'flatten_param': {'axis': 2}},
         expect=(2, 3, 16)),
    case('flatten-end-axis2', 'Flatten', {'flatten_param': {'end_axis': 2}},
         expect=(2, 12, 4)),
    case('flatten-end-axis-neg2', 'Flatten',
         {'flatten_param': {'axis': 0, 'end_axis': -2}}, expect=(24, 4)),
    case('reshape-0-minus1', 'Reshape',
         {'reshape_param': {'shape': {'dim': [0, -1]}}}, expect=(2, 48)),
    case('reshape-copy-and-infer', 'Reshape',
         {'reshape_param': {'shape': {'dim': [0, 2, -1, 0]}}},
         shape=(2, 6, 4, 4), expect=(2, 2, 12, 4)),
    case('reshape-axis1-num-axes1', 'Reshape',
         {'reshape_param': {'shape': {'dim': [3, -1]}, 'axis': 1,
                            'num_axes': 1}},
         shape=(2, 6, 4, 4), expect=(2, 3, 2, 4, 4)),
    case('reshape-insert-leading', 'Reshape',
         {'reshape_param': {'shape': {'dim': [1]}, 'axis': 0,
                            'num_axes': 0}}, expect=(1, 2, 3, 4, 4)),
    case('reshape-insert-trailing', 'Reshape',
         {'reshape_param': {'shape': {'dim': [1]}, 'axis': -1,
                            'num_axes': 0}}, expect=(2, 3, 4, 4, 1)),
    case('reshape-axis-neg3', 'Reshape',
         {'reshape_param': {'shape': {'dim': [2, -1]}, 'axis': -3,
                            'num_axes': 1}}, shape=(2, 3, 4, 5),
         expect=(2, 3, 2, 2, 5)),
    case('softmax', 'Softmax', scale=3.0),
    case('softmax-axis2', 'Softmax', {'softmax_param': {'axis': 2}}),
    case('softmax-axis-neg1', 'Softmax', {'softmax_param': {'axis': -1}},
         shape=(2, 3, 5)),
]

_LABELS = np.array([0, 4, 2, 4, 1, 3], np.int32)


def loss(normalization=None, ignore=None, normalize=None, axis=None):
    p = {}
    if normalization is not None:
        p['normalization'] = normalization
    if ignore is not None:
        p['ignore_label'] = ignore
    if normalize is not None:
        p['normalize'] = normalize
    params = {'loss_param': p}
    if axis is not None:
        params['softmax_param'] = {'axis': axis}
    return params


LOSS = [
    case('loss-valid-ignore', 'SoftmaxWithLoss', loss('VALID', ignore=4),
         shape=(6, 5), label=_LABELS, scale=2.0),
    case('loss-valid-no-ignore', 'SoftmaxWithLoss', loss('VALID'),
         shape=(6, 5), label=_LABELS),
    case('loss-full-ignore', 'SoftmaxWithLoss', loss('FULL', ignore=4),
         shape=(6, 5), label=_LABELS),
    case('loss-batch-size', 'SoftmaxWithLoss', loss('BATCH_SIZE'),
         shape=(6, 5), label=_LABELS),
    case('loss-none', 'SoftmaxWithLoss', loss('NONE', ignore=0),
         shape=(6, 5), label=_LABELS),
    case('loss-legacy-normalize-false', 'SoftmaxWithLoss',
         loss(normalize=False, ignore=4), shape=(6, 5), label=_LABELS),
    case('loss-legacy-normalize-true', 'SoftmaxWithLoss',
         loss(normalize=True, ignore=4), shape=(6, 5), label=_LABELS),
    case('loss-all-ignored', 'SoftmaxWithLoss', loss('VALID', ignore=1),
         shape=(3, 4), label=np.array([1, 1, 1], np.int32)),
    case('loss-spatial', 'SoftmaxWithLoss', loss('VALID', ignore=0),
         shape=(2, 4, 3, 3),
         label=np.random.RandomState(3).randint(0, 4, (2, 3, 3))),
    # BATCH_SIZE divides by outer_num_ = count(0, axis), not shape[0].
    case('loss-axis2-batch-size', 'SoftmaxWithLoss',
         loss('BATCH_SIZE', axis=2), shape=(2, 3, 4),
         label=np.array([[0, 3, 1], [2, 2, 0]], np.int32)),
    case('loss-axis2-valid', 'SoftmaxWithLoss', loss('VALID', axis=2),
         shape=(2, 3, 4), label=np.array([[0, 3, 1], [2, 2, 0]], np.int32)),
    case('accuracy-top1', 'Accuracy', shape=(6, 5), label=_LABELS),
    case('accuracy-top3', 'Accuracy', {'accuracy_param': {'top_k': 3}},
         shape=(6, 5), label=_LABELS),
    case('accuracy-ignore', 'Accuracy',
         {'accuracy_param': {'ignore_label': 4}}, shape=(6, 5),
         label=_LABELS),
    case('accuracy-all-ignored', 'Accuracy',
         {'accuracy_param': {'ignore_label': 1}}, shape=(3, 4),
         label=np.array([1, 1, 1], np.int32)),
    case('accuracy-axis2', 'Accuracy', {'accuracy_param': {'axis': 2}},
         shape=(2, 3, 4), label=np.array([[0, 3, 1], [2, 2, 0]], np.int32)),
    case('accuracy-spatial', 'Accuracy', {'accuracy_param': {'top_k': 2}},
         shape=(2, 4, 3, 3),
         label=np.random.RandomState(4).randint(0, 4, (2, 3, 3))),
    # Ties: Caffe counts scores >= the true class's as better.
    case('accuracy-ties', 'Accuracy', {'accuracy_param': {'top_k': 2}},
         shape=(4, 4),
         data=np.array([[1, 1, 1, 0], [2, 0, 2, 2], [0, 3, 1, 3],
                        [5, 5, 5, 5]], np.float32),
         label=np.array([0, 3, 2, 1], np.int32)),
]

LAYER_CASES = (POOLING + CONVOLUTION + INNER_PRODUCT + NEURONS +
               NORMALIZATION + SCALE_BIAS + STRUCTURE + LOSS)


@pytest.mark.parametrize('spec', LAYER_CASES)
def test_layer_matches_caffe_reference(tmp_path, spec):
    writer, inputs, tops = build_case(spec)
    results = check_against_reference(tmp_path, writer, inputs, tops,
                                      train=spec.get('train', False))
    if 'expect' in spec:
        assert results[2][0].shape == spec['expect']


def test_cases_cover_v1_for_every_v1_type():
    # Every type with a V1 code that the loader supports is exercised in
    # V1 form by some case above.
    v1_types = set()
    for param in LAYER_CASES:
        writer, _, _ = build_case(param.values[0])
        if writer.v1_compatible():
            v1_types.update(layer.type for layer in writer.layers)
    expected = {t for t in supported_types() if t in W.V1_TYPE_CODES} - {
        'Data', 'MemoryData', 'ImageData', 'DummyData', 'HDF5Data',
        'WindowData', 'Silence'}   # no-ops, covered by the all-layers net
    assert expected <= v1_types, sorted(expected - v1_types)


# ---------------------------------------------------------------------------
# Dropout in training
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('version', [2, 1])
def test_dropout_train_masks_and_scales(tmp_path, version):
    ratio = 0.4
    w = W.NetWriter('drop')
    w.input('data', (20, 500), form='input_shape')
    w.layer('drop', 'Dropout', 'data', 'out',
            {'dropout_param': {'dropout_ratio': ratio}})
    x = np.random.RandomState(0).uniform(0.5, 1.5, (20, 500)).astype(
        np.float32)
    np.random.seed(0)
    y, = load_and_run(tmp_path, w, {'data': x}, ['out'], version, train=True)
    kept = y != 0
    # Caffe: x * mask / (1 - ratio), mask ~ Bernoulli(1 - ratio).
    np.testing.assert_allclose(y[kept], x[kept] / (1 - ratio), rtol=1e-6)
    assert abs(1 - kept.mean() - ratio) < 0.02
    expected = R.dropout(x.astype(np.float64), ratio, train=True, mask=kept)
    assert_close(y, expected)
    # In testing Dropout is the identity.
    y, = load_and_run(tmp_path, w, {'data': x}, ['out'], version, train=False)
    assert np.array_equal(y, x)


# ---------------------------------------------------------------------------
# Whole nets
# ---------------------------------------------------------------------------

def test_all_layers_net_covers_every_supported_type():
    v2 = {layer.type for layer in caffe_nets.all_layers_writer(2).layers}
    assert v2 == set(supported_types())
    v1_writer = caffe_nets.all_layers_writer(1)
    assert v1_writer.v1_compatible()
    v1 = {layer.type for layer in v1_writer.layers}
    assert v1 == {t for t in supported_types() if t in W.V1_TYPE_CODES}


@pytest.mark.parametrize('version', [2, 1])
def test_all_layers_net_matches_reference(tmp_path, version):
    path = str(tmp_path / 'all.caffemodel')
    writer = caffe_nets.make_all_layers_net(path, version=version)
    inputs = caffe_nets.all_layers_inputs()
    expected = R.forward_net(writer, inputs)
    outputs = sorted(name for name in expected if name not in inputs)
    assert {'prob', 'loss', 'accuracy', 'gpool'} <= set(outputs)
    if version == 2:
        assert 'fc_t' in outputs
    actual = forward(load_caffe(path), inputs, outputs)
    for name, value in zip(outputs, actual):
        assert_close(value, expected[name], what=name)


def test_loss_and_accuracy_skipped_without_label(tmp_path):
    path = str(tmp_path / 'all.caffemodel')
    caffe_nets.make_all_layers_net(path)
    net = load_caffe(path)
    data = caffe_nets.all_layers_inputs()['data']
    prob, = forward(net, {'data': data}, ['prob'])
    assert prob.shape == (2, caffe_nets.ALL_LAYERS_N_CLASS)
    assert 'loss' not in net.variables and 'accuracy' not in net.variables
    with pytest.raises(CaffeModelError, match='loss'):
        forward(net, {'data': data}, ['loss'])


def test_data_layers_are_inputs(tmp_path):
    # Data, MemoryData... declare blobs the caller supplies; a layer
    # restricted to TRAIN is dropped.
    w = W.NetWriter('data')
    w.layer('train_data', 'Data', (), ['data', 'label'],
            {'data_param': {'source': 'lmdb', 'batch_size': 4}},
            include={'phase': 'TRAIN'})
    w.layer('test_data', 'MemoryData', (), ['data', 'label'],
            {'memory_data_param': {'batch_size': 4, 'channels': 3,
                                   'height': 1, 'width': 1}},
            include={'phase': 'TEST'})
    w.layer('fc', 'InnerProduct', 'data', 'fc', ip(num_output=2),
            [_normal(2, 3), _normal(2)])
    w.layer('silence', 'Silence', ['label'], [])
    x = _normal(4, 3, 1, 1)
    results = check_against_reference(tmp_path, w, {'data': x}, ['fc'])
    assert set(results) == {1, 2}
    net = load_caffe(str(tmp_path / 'net_v2.caffemodel'))
    assert [name for name, _, _ in net.layers] == ['test_data', 'fc',
                                                   'silence']


@pytest.mark.parametrize('version', [2, 1])
def test_input_forms_are_equivalent(tmp_path, version):
    forms = ['input_shape', 'input_dim'] + (['layer'] if version == 2
                                            else [])
    x = _normal(2, 3, 5, 5)
    outputs = []
    for form in forms:
        w = W.NetWriter('inputs')
        w.input('data', (2, 3, 5, 5), form=form)
        w.layer('conv', 'Convolution', 'data', 'conv',
                conv(num_output=4, kernel_size=3),
                [np.full((4, 3, 3, 3), 0.1, np.float32), np.ones(4)])
        w.layer('relu', 'ReLU', 'conv', 'conv')
        path = str(tmp_path / '{}.caffemodel'.format(form))
        w.write_caffemodel(path, version)
        net = load_caffe(path)
        assert net.inputs == {'data': (2, 3, 5, 5)}
        outputs.append(forward(net, {'data': x}, ['conv'])[0])
        # The prototxt form declares the same input.
        proto = str(tmp_path / '{}.prototxt'.format(form))
        w.write_prototxt(proto, version)
        assert load_caffe(path, proto).inputs == {'data': (2, 3, 5, 5)}
    for y in outputs[1:]:
        assert np.array_equal(y, outputs[0])


def test_multiple_inputs_and_input_shape_of_any_rank(tmp_path):
    w = W.NetWriter('two')
    w.input('a', (2, 3), form='input_shape')
    w.input('b', (2, 3), form='input_shape')
    w.layer('sum', 'Eltwise', ['a', 'b'], 'sum', eltwise('SUM', [2.0, -1.0]))
    check_against_reference(tmp_path, w, {'a': _normal(2, 3),
                                          'b': _normal(2, 3)}, ['sum'])
    net = load_caffe(str(tmp_path / 'net_v1.caffemodel'))
    assert net.inputs == {'a': (2, 3), 'b': (2, 3)}


# ---------------------------------------------------------------------------
# prototxt + caffemodel
# ---------------------------------------------------------------------------

def _small_model(train=False, pool_method='MAX', conv_out=8, extra=False):
    """conv1 -> relu1 -> pool1 -> fc -> prob (or a training head)."""
    rng = np.random.RandomState(5)
    w = W.NetWriter('small')
    if train:
        w.layer('data', 'Data', (), ['data', 'label'],
                {'data_param': {'source': 'train_lmdb', 'batch_size': 2}},
                include={'phase': 'TRAIN'})
    else:
        w.input('data', (2, 3, 8, 8), form='layer')
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            conv(num_output=conv_out, kernel_size=3),
            [rng.standard_normal((conv_out, 3, 3, 3)) * 0.3,
             rng.standard_normal(conv_out)],
            param_specs=[{'lr_mult': 1}, {'lr_mult': 2}])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    w.layer('pool1', 'Pooling', 'conv1', 'pool1',
            pool(pool=pool_method, kernel_size=3, stride=2))
    w.layer('fc', 'InnerProduct', 'pool1', 'fc', ip(num_output=4),
            [rng.standard_normal((4, conv_out * 9)) * 0.2,
             rng.standard_normal(4)])
    if extra:
        w.layer('fc_extra', 'InnerProduct', 'pool1', 'fc_extra',
                ip(num_output=3), [rng.standard_normal((3, conv_out * 9)),
                                   rng.standard_normal(3)])
    if train:
        w.layer('loss', 'SoftmaxWithLoss', ['fc', 'label'], 'loss')
    else:
        w.layer('prob', 'Softmax', 'fc', 'prob')
    return w


@pytest.mark.parametrize('model_version,proto_version',
                         [(2, 2), (1, 2), (2, 1), (1, 1)])
def test_prototxt_gives_structure_caffemodel_weights(tmp_path, model_version,
                                                     proto_version):
    trained = _small_model(train=True, extra=True)
    deploy = _small_model(pool_method='AVE')   # the prototxt's choice wins
    for layer in deploy.layers:               # weights only in the model
        deploy.set_blobs(layer.name, [])
    model = str(tmp_path / 'm.caffemodel')
    proto = str(tmp_path / 'deploy.prototxt')
    trained.write_caffemodel(model, model_version)
    if proto_version == 1:
        deploy.remove_layer('data')
        deploy.input('data', (2, 3, 8, 8), form='input_dim')
    deploy.write_prototxt(proto, proto_version)
    net = load_caffe(model, proto)
    assert [n for n, _, _ in net.layers if n in ('loss', 'fc_extra')] == []
    x = _normal(2, 3, 8, 8)
    # Reference: the deploy structure with the trained weights.
    layers = deploy.layers
    weights = {layer.name: trained.blob_arrays(layer.name)
               for layer in trained.layers}
    expected = R.forward_net((layers, weights), {'data': x})
    prob, = forward(net, {'data': x}, ['prob'])
    assert_close(prob, expected['prob'])
    assert sorted(net.link_names) == ['conv1', 'fc']


def test_prototxt_layer_without_weights_is_an_error(tmp_path):
    model = str(tmp_path / 'm.caffemodel')
    _small_model(train=True).write_caffemodel(model)
    deploy = _small_model()
    deploy.layer('conv_new', 'Convolution', 'pool1', 'conv_new',
                 conv(num_output=2, kernel_size=1))
    proto = str(tmp_path / 'deploy.prototxt')
    deploy.write_prototxt(proto)
    with pytest.raises(CaffeModelError) as info:
        load_caffe(model, proto)
    message = str(info.value)
    assert 'conv_new' in message and 'Convolution' in message
    assert 'deploy.prototxt' in message and 'm.caffemodel' in message


@pytest.mark.parametrize('version', [2, 1])
def test_prototxt_shape_mismatch_names_both_shapes(tmp_path, version):
    model = str(tmp_path / 'm.caffemodel')
    _small_model(train=True, conv_out=8).write_caffemodel(model, version)
    proto = str(tmp_path / 'deploy.prototxt')
    _small_model(conv_out=6).write_prototxt(proto)
    with pytest.raises(CaffeModelError) as info:
        load_caffe(model, proto)
    message = str(info.value)
    assert 'conv1' in message
    assert '(8, 3, 3, 3)' in message      # in the file
    assert '(6, *, 3, 3)' in message      # from the prototxt


def test_inner_product_shape_mismatch_names_both_shapes(tmp_path):
    model = str(tmp_path / 'm.caffemodel')
    _small_model(train=True).write_caffemodel(model, 1)   # (1, 1, 4, 72)
    deploy = _small_model()
    deploy.get_layer('fc').inner_product_param.num_output = 5
    proto = str(tmp_path / 'deploy.prototxt')
    deploy.write_prototxt(proto)
    with pytest.raises(CaffeModelError) as info:
        load_caffe(model, proto)
    message = str(info.value)
    assert "'fc'" in message and '(1, 1, 4, 72)' in message and \
        '(5, *)' in message


# ---------------------------------------------------------------------------
# Names, stop_at, pickling, gradients
# ---------------------------------------------------------------------------

def test_layer_names_with_slashes_are_addressable(tmp_path):
    w = W.NetWriter('googlenet-ish')
    w.input('data', (1, 3, 6, 6), form='input_shape')
    w.layer('conv1/7x7_s2', 'Convolution', 'data', 'conv1/7x7_s2',
            conv(num_output=4, kernel_size=3),
            [_normal(4, 3, 3, 3), _normal(4)])
    w.layer('conv1/relu_7x7', 'ReLU', 'conv1/7x7_s2', 'conv1/7x7_s2')
    w.layer('a/b', 'Convolution', 'conv1/7x7_s2', 'a/b',
            conv(num_output=2, kernel_size=1),
            [_normal(2, 4, 1, 1), _normal(2)])
    w.layer('a_b', 'Convolution', 'conv1/7x7_s2', 'a_b',
            conv(num_output=2, kernel_size=1),
            [_normal(2, 4, 1, 1), _normal(2)])
    w.layer('5x5', 'Convolution', 'a/b', '5x5',
            conv(num_output=2, kernel_size=1, bias_term=False),
            [_normal(2, 2, 1, 1)])
    check_against_reference(tmp_path, w, {'data': _normal(1, 3, 6, 6)},
                            ['conv1/7x7_s2', 'a/b', 'a_b', '5x5'])
    net = load_caffe(str(tmp_path / 'net_v2.caffemodel'))
    assert net.link_names == {'conv1/7x7_s2': 'conv1_7x7_s2',
                              'a/b': 'a_b', 'a_b': 'a_b_2', '5x5': '_5x5'}
    assert net['conv1/7x7_s2'] is net.conv1_7x7_s2
    assert net['conv1_7x7_s2'] is net.conv1_7x7_s2
    assert net['a_b'] is net.a_b_2 and net['a/b'] is net.a_b
    np.testing.assert_array_equal(net['conv1/7x7_s2'].W.array,
                                  w.blob_arrays('conv1/7x7_s2')[0])
    with pytest.raises(KeyError):
        net['conv1/relu_7x7']


def _net_with_head(head_type, head_params=None):
    w = W.NetWriter('detector')
    w.input('data', (1, 3, 8, 8), form='layer')
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            conv(num_output=4, kernel_size=3, pad=1),
            [_normal(4, 3, 3, 3), _normal(4)])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    w.layer('pool1', 'Pooling', 'conv1', 'pool1',
            pool(pool='MAX', kernel_size=2, stride=2))
    w.layer('fc', 'InnerProduct', 'pool1', 'fc', ip(num_output=3),
            [_normal(3, 64), _normal(3)])
    w.layer('head', head_type, ['pool1', 'data'], 'head', head_params)
    return w


@pytest.mark.parametrize('head_type,params', [
    ('Proposal', None),   # Faster R-CNN's; PriorBox is supported now
    ('Python', {'python_param': {'module': 'rpn.proposal_layer',
                                 'layer': 'ProposalLayer'}}),
])
def test_stop_at_loads_backbone_below_unsupported_head(tmp_path, head_type,
                                                       params):
    w = _net_with_head(head_type, params)
    path = str(tmp_path / 'det.caffemodel')
    w.write_caffemodel(path)
    with pytest.raises(UnsupportedLayerError) as info:
        load_caffe(path)
    message = str(info.value)
    assert "'head'" in message and repr(head_type) in message
    assert 'supported types' in message
    assert 'Convolution' in message and 'InnerProduct' in message
    x = _normal(1, 3, 8, 8)
    expected = R.forward_net((w.layers[:-1], {
        name: w.blob_arrays(name) for name in ('conv1', 'fc')}), {'data': x})
    net = load_caffe(path, stop_at='pool1')
    assert [n for n, _, _ in net.layers] == [
        'data', 'conv1', 'relu1', 'pool1']
    pool1, = forward(net, {'data': x}, ['pool1'])
    assert_close(pool1, expected['pool1'])
    net = load_caffe(path, stop_at=['fc', 'conv1'])
    fc, conv1 = forward(net, {'data': x}, ['fc', 'conv1'])
    assert_close(fc, expected['fc'])
    assert_close(conv1, expected['conv1'])
    with pytest.raises(CaffeModelError, match='nowhere'):
        load_caffe(path, stop_at='nowhere')


def test_pickled_net_gives_identical_outputs(tmp_path):
    path = str(tmp_path / 'all.caffemodel')
    caffe_nets.make_all_layers_net(path)
    net = load_caffe(path)
    inputs = caffe_nets.all_layers_inputs()
    outputs = ['prob', 'loss', 'accuracy', 'fc_t', 'conv1']
    before = forward(net, inputs, outputs)
    clone = pickle.loads(pickle.dumps(net))
    assert clone.link_names == net.link_names
    after = forward(clone, inputs, outputs)
    for a, b in zip(before, after):
        assert np.array_equal(a, b)


def test_gradients_reach_every_parameter(tmp_path):
    path = str(tmp_path / 'all.caffemodel')
    caffe_nets.make_all_layers_net(path)
    net = load_caffe(path)
    inputs = caffe_nets.all_layers_inputs()
    x = chainer.Variable(inputs['data'])
    rng = np.random.RandomState(0)
    with chainer.using_config('train', False):
        fc1, fc_t, loss_value, s3, ssd_norm = net(
            inputs={'data': x, 'label': inputs['label']},
            outputs=['fc1', 'fc_t', 'loss', 's3', 'ssd_norm'])
    total = (F.sum(fc1 * rng.standard_normal(fc1.shape).astype(np.float32)) +
             F.sum(fc_t * rng.standard_normal(fc_t.shape).astype(np.float32))
             + loss_value + F.sum(s3 * s3) + F.sum(
                 ssd_norm * rng.standard_normal(ssd_norm.shape).astype(
                     np.float32)))
    net.cleargrads()
    total.backward()
    params = dict(net.namedparams())
    parametric = {'conv1', 'scale1', 'conv2', 'prelu2', 'deconv2', 'bias3',
                  'fc1', 'fc_t', 'ssd_norm'}
    assert {name.split('/')[1] for name in params} == parametric
    for name, param in params.items():
        assert param.grad is not None, name
        assert np.isfinite(param.grad).all(), name
        assert np.abs(param.grad).max() > 0, name
    assert x.grad is not None and np.abs(x.grad).max() > 0


@pytest.mark.parametrize('spec', [
    p for p in LAYER_CASES
    if p.values[0]['type'] in ('Convolution', 'Deconvolution',
                               'InnerProduct', 'PReLU', 'Scale', 'Bias')
    and p.values[0]['blobs']])
def test_parameter_gradients_match_finite_differences(tmp_path, spec):
    # The outputs are linear in each parameter, so central differences
    # of sum(y * r) are exact up to rounding.
    writer, inputs, tops = build_case(spec)
    path = str(tmp_path / 'g.caffemodel')
    writer.write_caffemodel(path)
    net = load_caffe(path)
    rng = np.random.RandomState(1)
    weights = None
    # Inputs that need a gradient too (see the Deconvolution test below).
    inputs = {name: chainer.Variable(value) for name, value in inputs.items()
              if name != 'label'}

    def objective():
        nonlocal weights
        with chainer.using_config('train', False):
            y, = net(inputs=inputs, outputs=tops[:1])
        if weights is None:
            weights = rng.standard_normal(y.shape).astype(np.float32)
        return F.sum(y * weights)

    net.cleargrads()
    objective().backward()
    for name, param in net.namedparams():
        assert param.grad is not None, name
        grad = param.grad.copy()
        flat = param.array.reshape(-1)
        for index in rng.choice(flat.size, min(flat.size, 3), replace=False):
            old = flat[index]
            flat[index] = old + 0.5
            up = float(objective().array)
            flat[index] = old - 0.5
            down = float(objective().array)
            flat[index] = old
            numeric = up - down
            analytic = grad.reshape(-1)[index]
            assert abs(numeric - analytic) <= 1e-3 * max(1, abs(numeric)), \
                (name, index, numeric, analytic)


def test_deconvolution_weight_gradient_with_constant_input(tmp_path):
    # A Deconvolution applied to the net's input: only W and b need
    # gradients. Chainer 7.8.1 fails on this path without the compat patch
    # ('shapes for Deconvolution2DFunction._set_cover_all').
    spec = [p for p in CONVOLUTION if p.id == 'deconv-k4s2p1'][0].values[0]
    writer, inputs, tops = build_case(spec)
    path = str(tmp_path / 'd.caffemodel')
    writer.write_caffemodel(path)
    net = load_caffe(path)
    grads = []
    for as_variable in (False, True):
        net.cleargrads()
        feed = {k: chainer.Variable(v) if as_variable else v
                for k, v in inputs.items()}
        y, = net(inputs=feed, outputs=tops)
        F.sum(y * y).backward()
        grads.append(net['layer'].W.grad.copy())
    # Same weight gradient as when the input needs a gradient too.
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)
    assert np.abs(grads[0]).max() > 0


# ---------------------------------------------------------------------------
# Ready-made models
# ---------------------------------------------------------------------------

ALEXNET_LAYERS = [
    ('data', 'Input'), ('conv1', 'Convolution'), ('relu1', 'ReLU'),
    ('norm1', 'LRN'), ('pool1', 'Pooling'), ('conv2', 'Convolution'),
    ('relu2', 'ReLU'), ('norm2', 'LRN'), ('pool2', 'Pooling'),
    ('conv3', 'Convolution'), ('relu3', 'ReLU'), ('conv4', 'Convolution'),
    ('relu4', 'ReLU'), ('conv5', 'Convolution'), ('relu5', 'ReLU'),
    ('pool5', 'Pooling'), ('fc6', 'InnerProduct'), ('relu6', 'ReLU'),
    ('drop6', 'Dropout'), ('fc7', 'InnerProduct'), ('relu7', 'ReLU'),
    ('drop7', 'Dropout'), ('fc8', 'InnerProduct'), ('prob', 'Softmax')]

ALEXNET_BLOBS = {
    'conv1': [(96, 3, 11, 11), (96,)], 'conv2': [(256, 48, 5, 5), (256,)],
    'conv3': [(384, 256, 3, 3), (384,)], 'conv4': [(384, 192, 3, 3), (384,)],
    'conv5': [(256, 192, 3, 3), (256,)], 'fc6': [(4096, 9216), (4096,)],
    'fc7': [(4096, 4096), (4096,)], 'fc8': [(1000, 4096), (1000,)]}


def test_alexnet_writer_has_bvlc_structure():
    w = zoo_shapes.alexnet_writer()
    assert [(layer.name, layer.type) for layer in w.layers] == \
        ALEXNET_LAYERS
    assert {name: [tuple(b.shape) for b in w.blobs(name)]
            for name in ALEXNET_BLOBS} == ALEXNET_BLOBS
    assert w.n_params() == 60965224
    assert w.input_shapes == {'data': (10, 3, 227, 227)}
    conv1 = w.get_layer('conv1').convolution_param
    assert (list(conv1.kernel_size), list(conv1.stride)) == ([11], [4])
    assert [w.get_layer(n).convolution_param.group
            for n in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')] == \
        [1, 2, 1, 2, 2]
    norm = w.get_layer('norm1').lrn_param
    assert (norm.local_size, norm.beta) == (5, 0.75)
    assert abs(norm.alpha - 1e-4) < 1e-10
    pool5 = w.get_layer('pool5').pooling_param
    assert (pool5.pool, pool5.kernel_size, pool5.stride) == (
        caffe_pb2.PoolingParameter.MAX, 3, 2)
    assert w.get_layer('drop6').dropout_param.dropout_ratio == 0.5


def test_vgg16_writer_has_released_shapes():
    w = zoo_shapes.vgg16_writer()
    assert w.n_params() == 138357544
    convs = [layer.name for layer in w.layers if layer.type == 'Convolution']
    assert convs == ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1',
                     'conv3_2', 'conv3_3', 'conv4_1', 'conv4_2', 'conv4_3',
                     'conv5_1', 'conv5_2', 'conv5_3']
    assert [tuple(b.shape) for b in w.blobs('fc6')] == [(4096, 25088),
                                                        (4096,)]
    assert [tuple(b.shape) for b in w.blobs('conv4_1')] == [
        (512, 256, 3, 3), (512,)]


def test_alexnet_end_to_end(tmp_path):
    x = np.random.RandomState(0).standard_normal((1, 3, 227, 227)).astype(
        np.float32)
    outputs = {}
    for version in (2, 1):
        model = str(tmp_path / 'alexnet_v{}.caffemodel'.format(version))
        proto = str(tmp_path / 'deploy_v{}.prototxt'.format(version))
        zoo_shapes.make_alexnet(model, proto, version=version,
                                train_layers=True)
        net = load_caffe(model, proto)
        assert net.inputs == {'data': (10, 3, 227, 227)}
        outputs[version] = forward(net, {'data': x}, ['prob', 'fc8'])
        del net
        os.remove(model)
    for a, b in zip(outputs[1], outputs[2]):
        assert np.array_equal(a, b)
    prob, fc8 = outputs[2]
    assert prob.shape == (1, 1000)
    assert abs(prob.sum() - 1) < 1e-5
    expected = R.forward_net(zoo_shapes.alexnet_writer(), {'data': x})
    assert_close(fc8, expected['fc8'], rtol=1e-4, what='fc8')
    assert_close(prob, expected['prob'], rtol=1e-4, what='prob')


# ---------------------------------------------------------------------------
# The writer itself
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('version,legacy', [(2, False), (2, True),
                                            (1, True)])
def test_streamed_bytes_equal_protobuf_serialization(tmp_path, version,
                                                     legacy):
    w = caffe_nets.all_layers_writer(version)
    w.layer('random', 'InnerProduct', 'fc1', 'random', ip(num_output=3),
            [W.RandomBlob((3, 5), std=0.1, seed=(1, 2)),
             W.RandomBlob((3,), seed=3, distribution='normal')])
    path = str(tmp_path / 'w.caffemodel')
    size = w.write_caffemodel(path, version, legacy=legacy)
    data = open(path, 'rb').read()
    assert size == len(data)
    assert data == w.net_parameter(version, legacy=legacy).SerializeToString()
    parsed = caffe_pb2.NetParameter.FromString(data)
    assert len(parsed.layer if version == 2 else parsed.layers) == \
        len(w.layers)
    # Our reader: the same values, legacy flag as written.
    model = reader.read_caffemodel(path)
    for record in model.layers:
        expected = w.blob_arrays(record.param.name)
        assert len(record.blobs) == len(expected)
        for blob, array in zip(record.blobs, expected):
            assert blob.legacy == legacy
            assert np.array_equal(blob.array.reshape(-1), array.reshape(-1))


def test_v1_blobs_use_legacy_4d_dims(tmp_path):
    w = W.NetWriter('v1')
    w.input('data', (2, 6), form='input_shape')
    w.layer('fc', 'InnerProduct', 'data', 'fc', ip(num_output=4),
            [_normal(4, 6), _normal(4)])
    path = str(tmp_path / 'v1.caffemodel')
    w.write_caffemodel(path, 1)
    net = caffe_pb2.NetParameter.FromString(open(path, 'rb').read())
    assert not net.layer and len(net.layers) == 1
    layer = net.layers[0]
    assert layer.type == caffe_pb2.V1LayerParameter.INNER_PRODUCT
    dims = [(b.num, b.channels, b.height, b.width, b.HasField('shape'))
            for b in layer.blobs]
    assert dims == [(1, 1, 4, 6, False), (1, 1, 1, 4, False)]


def test_v1_param_specs_become_blobs_lr_and_weight_decay(tmp_path):
    w = W.NetWriter('v1')
    w.input('data', (1, 3, 4, 4), form='input_dim')
    w.layer('conv', 'Convolution', 'data', 'conv',
            conv(num_output=2, kernel_size=1), [(2, 3, 1, 1), (2,)],
            param_specs=[{'lr_mult': 1, 'decay_mult': 1},
                         {'lr_mult': 2, 'decay_mult': 0}])
    path = str(tmp_path / 'v1.prototxt')
    w.write_prototxt(path, 1)
    text = open(path).read()
    assert 'type: CONVOLUTION' in text and 'input_dim: 4' in text
    net = reader.read_prototxt(path)
    assert list(net.layers[0].blobs_lr) == [1, 2]
    assert list(net.layers[0].weight_decay) == [1, 0]


@pytest.mark.parametrize('type,params', [
    ('BatchNorm', None), ('Scale', None), ('Bias', None), ('ELU', None),
    ('PReLU', None), ('Reshape', {'reshape_param': {'shape': {'dim': [-1]}}}),
    ('Flatten', {'flatten_param': {'axis': 2}}),
])
def test_v1_refuses_what_v1_cannot_express(tmp_path, type, params):
    w = W.NetWriter('v1')
    w.input('data', (1, 3, 4, 4), form='input_dim')
    w.layer('layer', type, 'data', 'out', params)
    assert not w.v1_compatible()
    path = str(tmp_path / 'v1.caffemodel')
    with pytest.raises(ValueError, match='layer'):
        w.write_caffemodel(path, 1)
    assert not os.path.exists(path)
    w.write_caffemodel(path, 2)   # fine as V2


def test_v1_refuses_input_layer(tmp_path):
    w = W.NetWriter('v1')
    w.input('data', (1, 3, 4, 4), form='layer')
    with pytest.raises(ValueError, match='Input'):
        w.write_caffemodel(str(tmp_path / 'v1.caffemodel'), 1)


def test_random_blob_is_deterministic_and_chunked():
    blob = W.RandomBlob((3, (1 << 20) // 3 + 5), std=0.5, mean=1.0,
                        seed=(7, 1))
    chunks = list(blob.chunks())
    assert len(chunks) == 2 and all(c.dtype == np.float32 for c in chunks)
    array = blob.array()
    assert array.shape == blob.shape and array.dtype == np.float32
    assert np.array_equal(np.concatenate(chunks), array.reshape(-1))
    assert np.array_equal(W.RandomBlob(blob.shape, 0.5, 1.0, (7, 1)).array(),
                          array)
    assert abs(array.mean() - 1.0) < 0.01 and abs(array.std() - 0.5) < 0.01
    assert np.abs(array - 1.0).max() <= 0.5 * np.sqrt(3) + 1e-6
    normal = W.RandomBlob((1000,), seed=1, distribution='normal').array()
    assert np.abs(normal).max() > 0.5 * np.sqrt(3) * 2


def test_scalar_blob_written_without_shape(tmp_path):
    w = W.NetWriter('scalar')
    w.input('data', (1, 2), form='input_shape')
    w.layer('prelu', 'PReLU', 'data', 'out',
            {'prelu_param': {'channel_shared': True}},
            [np.array(0.5, np.float32)])
    path = str(tmp_path / 's.caffemodel')
    w.write_caffemodel(path)
    net = caffe_pb2.NetParameter.FromString(open(path, 'rb').read())
    blob = net.layer[0].blobs[0]
    assert not blob.HasField('shape') and list(blob.data) == [0.5]


def test_prototxt_round_trip(tmp_path):
    w = caffe_nets.all_layers_writer()
    path = str(tmp_path / 'all.prototxt')
    w.write_prototxt(path)
    parsed = reader.read_prototxt(path)
    assert parsed == w.net_parameter(with_blobs=False)
    assert not any(layer.blobs for layer in parsed.layer)


def test_write_binaryproto_is_a_caffe_mean_file(tmp_path):
    mean = np.random.RandomState(0).uniform(0, 255, (3, 4, 5)).astype(
        np.float32)
    path = str(tmp_path / 'mean.binaryproto')
    W.write_binaryproto(path, mean)
    blob = caffe_pb2.BlobProto.FromString(open(path, 'rb').read())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5)
    np.testing.assert_array_equal(load_mean(path), mean)


def test_fill_message_rejects_unknown_fields():
    with pytest.raises(ValueError, match='no field'):
        W.NetWriter().layer('x', 'ReLU', 'a', 'b',
                            {'convolution_param': {'kernel': 3}})


@pytest.mark.parametrize('factor', [0.0, 2.5, 999.0])
def test_batchnorm_running_statistics_follow_caffe(tmp_path, factor):
    """Training steps update the stored statistics by Caffe's rule.

    Caffe (batch_norm_layer.cpp) keeps sums and a factor: f = maf * f + 1,
    s_mean = maf * s_mean + batch_mean, s_var = maf * s_var + m / (m - 1) *
    batch_var, and tests with s / f.
    """
    maf = 0.9
    rng = np.random.RandomState(3)
    s_mean = rng.randn(3).astype(np.float32) * factor
    s_var = (rng.rand(3).astype(np.float32) + 0.5) * factor
    w = W.NetWriter('bn')
    w.input('data', (4, 3, 2, 2))
    w.layer('bn', 'BatchNorm', 'data', 'bn',
            params={'batch_norm_param': {'moving_average_fraction': maf}},
            blobs=[s_mean, s_var, np.array([factor], np.float32)])
    path = str(tmp_path / 'bn.caffemodel')
    w.write_caffemodel(path)
    net = load_caffe(path)
    f, sm, sv = factor, s_mean.astype(np.float64), s_var.astype(np.float64)
    for _ in range(3):
        x = rng.randn(4, 3, 2, 2).astype(np.float32) * 3 + 1
        with chainer.using_config('train', True):
            net(inputs={'data': x}, outputs=['bn'])
        m = x.size // 3
        f = maf * f + 1
        sm = maf * sm + x.mean(axis=(0, 2, 3))
        sv = maf * sv + x.var(axis=(0, 2, 3)) * m / (m - 1)
        link = net['bn']
        np.testing.assert_allclose(link.avg_mean, sm / f, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(link.avg_var, sv / f, rtol=1e-5)
        assert link.caffe_factor == pytest.approx(f)
