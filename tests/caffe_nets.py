"""Fixture nets for the tests, written with chainer_finetune's writer.

:func:`all_layers_writer` declares a tiny net that uses every layer type
the loader supports, with seeded random weights: the tests load it, run it
against the NumPy reference (``caffe_reference.py``), save it back and
mutate it. The published architectures (AlexNet, VGG-16) are in
:mod:`chainer_finetune.caffe.zoo_shapes`, which the example and the
benchmark use too.
"""

from typing import Dict, Optional

import numpy

from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.caffe.writer import PathLike
from chainer_finetune.caffe.writer import check_format_version
from chainer_finetune.caffe.zoo_shapes import WEIGHT_BIAS_PARAM_SPECS


# The all-layers net: blob shapes are small so that a NumPy reference of
# every layer runs in milliseconds.
ALL_LAYERS_INPUT_SHAPE = (2, 4, 7, 7)
ALL_LAYERS_N_CLASS = 5

# Types of make_all_layers_net's layers that V1 cannot express: in the V1
# net they are left out (they are in-place or on a side branch, so the rest
# of the net is unchanged).
# The SSD fork's layers (no V1 type codes): a tiny detection head.
_SSD_LAYERS = ('ssd_norm', 'ssd_perm', 'ssd_loc', 'ssd_conf', 'ssd_prior',
               'ssd_det')
_V2_ONLY_LAYERS = ('bn1', 'scale1', 'prelu2', 'elu2', 'bias3', 'reshape',
                   'fc_t', 'crop') + _SSD_LAYERS


class _Weights:
    """Seeded float32 weights, drawn in the order the layers ask."""

    def __init__(self, seed: int) -> None:
        self.rng = numpy.random.RandomState(seed)

    def normal(self, *shape: int, scale: float = 0.5) -> numpy.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(
            numpy.float32)

    def positive(self, *shape: int) -> numpy.ndarray:
        return self.rng.uniform(0.5, 1.5, shape).astype(numpy.float32)


def all_layers_writer(version: int = 2, seed: int = 0) -> NetWriter:
    """A tiny net using every layer type the loader supports (see
    :func:`make_all_layers_net`)."""
    check_format_version(version)
    weights = _Weights(seed)
    w = NetWriter('all_layers')
    _add_inputs(w, version)
    _add_trunk(w, weights)
    _add_branches(w, weights)
    _add_heads(w, weights)
    _add_ssd_head(w, weights)
    if version == 1:
        for name in _V2_ONLY_LAYERS:
            w.remove_layer(name)
    return w


def _add_inputs(w: NetWriter, version: int) -> None:
    """data and label, and data layers of every kind: no-ops whose tops
    the caller would supply, consumed by a Silence layer."""
    n, c, h, _ = ALL_LAYERS_INPUT_SHAPE
    if version == 2:
        w.input('data', ALL_LAYERS_INPUT_SHAPE, form='layer')
        w.input('label', (n,), form='layer')
    else:
        w.input('data', ALL_LAYERS_INPUT_SHAPE, form='input_dim')
        w.input('label', (n, 1, 1, 1), form='input_dim')
    w.layer('memory', 'MemoryData', (), ['mem_data', 'mem_label'],
            params={'memory_data_param': {'batch_size': n, 'channels': c,
                                          'height': h, 'width': h}})
    w.layer('dummy', 'DummyData', (), 'dummy',
            params={'dummy_data_param': {'shape': [{'dim': [n, c]}]}})
    w.layer('db', 'Data', (), ['db_data', 'db_label'],
            params={'data_param': {'source': 'train_lmdb', 'batch_size': n,
                                   'backend': 'LMDB'}})
    w.layer('images', 'ImageData', (), ['img_data', 'img_label'],
            params={'image_data_param': {'source': 'list.txt'}})
    w.layer('hdf5', 'HDF5Data', (), ['h5_data', 'h5_label'],
            params={'hdf5_data_param': {'source': 'h5.txt',
                                        'batch_size': n}})
    w.layer('windows', 'WindowData', (), ['win_data', 'win_label'],
            params={'window_data_param': {'source': 'windows.txt',
                                          'batch_size': n}})
    w.layer('silence_data', 'Silence',
            ['mem_data', 'mem_label', 'dummy', 'db_data', 'db_label',
             'img_data', 'img_label', 'h5_data', 'h5_label', 'win_data',
             'win_label'], [])


def _add_trunk(w: NetWriter, weights: _Weights) -> None:
    c = ALL_LAYERS_INPUT_SHAPE[1]
    # conv1 (2,6,7,7) -> BatchNorm -> Scale -> leaky ReLU
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 6, 'kernel_size': 3,
                                          'pad': 1}},
            blobs=[weights.normal(6, c, 3, 3), weights.normal(6)],
            param_specs=WEIGHT_BIAS_PARAM_SPECS)
    factor = 2.5
    w.layer('bn1', 'BatchNorm', 'conv1', 'conv1',
            params={'batch_norm_param': {'eps': 1e-3}},
            blobs=[weights.normal(6) * factor, weights.positive(6) * factor,
                   numpy.array([factor], numpy.float32)])
    w.layer('scale1', 'Scale', 'conv1', 'conv1',
            params={'scale_param': {'bias_term': True}},
            blobs=[weights.positive(6), weights.normal(6)])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1',
            params={'relu_param': {'negative_slope': 0.1}})
    # LRN both ways, then 3x3/2 pad 1 max pooling: (2,6,4,4)
    w.layer('norm1', 'LRN', 'conv1', 'norm1',
            params={'lrn_param': {'local_size': 3, 'alpha': 0.3,
                                  'beta': 0.75, 'k': 1.5}})
    w.layer('norm2', 'LRN', 'norm1', 'norm2',
            params={'lrn_param': {'local_size': 3, 'alpha': 0.3,
                                  'beta': 0.75,
                                  'norm_region': 'WITHIN_CHANNEL'}})
    w.layer('pool1', 'Pooling', 'norm2', 'pool1',
            params={'pooling_param': {'pool': 'MAX', 'kernel_size': 3,
                                      'stride': 2, 'pad': 1}})
    w.layer('split1', 'Split', 'pool1', ['pool1_a', 'pool1_b'])


def _add_branches(w: NetWriter, weights: _Weights) -> None:
    # Two branches: dilated group conv + PReLU, group deconv + ELU.
    w.layer('conv2', 'Convolution', 'pool1_a', 'conv2',
            params={'convolution_param': {'num_output': 6, 'kernel_size': 3,
                                          'pad': 2, 'dilation': 2,
                                          'group': 2}},
            blobs=[weights.normal(6, 3, 3, 3), weights.normal(6)])
    w.layer('prelu2', 'PReLU', 'conv2', 'conv2', blobs=[weights.normal(6)])
    w.layer('deconv2', 'Deconvolution', 'pool1_b', 'deconv2',
            params={'convolution_param': {'num_output': 6, 'kernel_size': 3,
                                          'pad': 1, 'group': 2}},
            blobs=[weights.normal(6, 3, 3, 3), weights.normal(6)])
    w.layer('elu2', 'ELU', 'deconv2', 'deconv2',
            params={'elu_param': {'alpha': 0.7}})
    w.layer('sum2', 'Eltwise', ['conv2', 'deconv2'], 'sum2',
            params={'eltwise_param': {'operation': 'SUM',
                                      'coeff': [1.0, -0.5]}})
    w.layer('prod2', 'Eltwise', ['sum2', 'pool1_a'], 'prod2',
            params={'eltwise_param': {'operation': 'PROD'}})
    w.layer('max2', 'Eltwise', ['prod2', 'sum2', 'conv2'], 'max2',
            params={'eltwise_param': {'operation': 'MAX'}})
    w.layer('sigmoid', 'Sigmoid', 'max2', 'sigmoid')
    w.layer('tanh', 'TanH', 'sum2', 'tanh')
    w.layer('absval', 'AbsVal', 'tanh', 'absval')
    w.layer('bnll', 'BNLL', 'prod2', 'bnll')
    w.layer('power', 'Power', 'absval', 'power',
            params={'power_param': {'power': 2.0, 'scale': 0.5,
                                    'shift': 1.0}})
    w.layer('concat', 'Concat', ['sigmoid', 'bnll', 'power'], 'concat')
    w.layer('slice', 'Slice', 'concat', ['s1', 's2', 's3'],
            params={'slice_param': {'slice_point': [6, 12]}})
    w.layer('bias3', 'Bias', 's1', 's1', blobs=[weights.normal(6)])


def _add_heads(w: NetWriter, weights: _Weights) -> None:
    w.layer('pool2', 'Pooling', 's1', 'pool2',
            params={'pooling_param': {'pool': 'AVE', 'kernel_size': 3,
                                      'stride': 2, 'pad': 1}})
    w.layer('drop2', 'Dropout', 'pool2', 'pool2',
            params={'dropout_param': {'dropout_ratio': 0.3}})
    # s2 (2,6,4,4) cut to pool2's (2,6,3,3) from (0,0,1,1).
    w.layer('crop', 'Crop', ['s2', 'pool2'], 'crop',
            params={'crop_param': {'axis': 2, 'offset': [1]}})
    w.layer('gpool', 'Pooling', 's2', 'gpool',
            params={'pooling_param': {'pool': 'AVE',
                                      'global_pooling': True}})
    w.layer('flat', 'Flatten', 'pool2', 'flat')
    w.layer('fc1', 'InnerProduct', 'flat', 'fc1',
            params={'inner_product_param': {
                'num_output': ALL_LAYERS_N_CLASS}},
            blobs=[weights.normal(ALL_LAYERS_N_CLASS, 54),
                   weights.normal(ALL_LAYERS_N_CLASS)],
            param_specs=WEIGHT_BIAS_PARAM_SPECS)
    w.layer('reshape', 'Reshape', 'gpool', 'rs',
            params={'reshape_param': {'shape': {'dim': [0, 3, -1]}}})
    w.layer('fc_t', 'InnerProduct', 'rs', 'fc_t',
            params={'inner_product_param': {'num_output': 4, 'axis': 2,
                                            'transpose': True}},
            blobs=[weights.normal(2, 4), weights.normal(4)])
    w.layer('prob', 'Softmax', 'fc1', 'prob')
    w.layer('loss', 'SoftmaxWithLoss', ['fc1', 'label'], 'loss',
            params={'loss_param': {'ignore_label': -1}})
    w.layer('accuracy', 'Accuracy', ['fc1', 'label'], 'accuracy',
            params={'accuracy_param': {'top_k': 2}})
    w.layer('silence', 'Silence', ['s3'], [])


def _add_ssd_head(w: NetWriter, weights: _Weights) -> None:
    """Normalize, Permute, PriorBox and DetectionOutput: 24 priors (on
    gpool's 1x1 map: 4 sizes x 5 ratios + 4 max sizes), 4 classes."""
    w.layer('ssd_norm', 'Normalize', 's3', 'ssd_norm',
            params={'norm_param': {'across_spatial': False,
                                   'channel_shared': False}},
            blobs=[weights.positive(6)])
    w.layer('ssd_perm', 'Permute', 'ssd_norm', 'ssd_perm',
            params={'permute_param': {'order': [0, 2, 3, 1]}})
    w.layer('ssd_loc', 'Flatten', 'ssd_perm', 'ssd_loc')
    w.layer('ssd_conf', 'Flatten', 'sigmoid', 'ssd_conf')
    w.layer('ssd_prior', 'PriorBox', ['gpool', 'data'], 'ssd_prior',
            params={'prior_box_param': {
                'min_size': [1.0, 2.0, 3.0, 4.0],
                'max_size': [2.0, 3.0, 5.0, 6.0],
                'aspect_ratio': [2.0, 3.0], 'flip': True, 'clip': True,
                'variance': [0.1, 0.1, 0.2, 0.2]}})
    w.layer('ssd_det', 'DetectionOutput', ['ssd_loc', 'ssd_conf',
                                           'ssd_prior'], 'ssd_det',
            params={'detection_output_param': {
                'num_classes': 4, 'share_location': True,
                'background_label_id': 0, 'code_type': 'CENTER_SIZE',
                'keep_top_k': 8, 'confidence_threshold': 0.5,
                'nms_param': {'nms_threshold': 0.45, 'top_k': 10}}})


def all_layers_inputs(seed: int = 0) -> Dict[str, numpy.ndarray]:
    """Inputs for :func:`make_all_layers_net`'s net: ``data`` (float32) and
    ``label`` (int32, one label ignored)."""
    rng = numpy.random.RandomState(seed)
    data = rng.standard_normal(ALL_LAYERS_INPUT_SHAPE).astype(numpy.float32)
    label = rng.randint(0, ALL_LAYERS_N_CLASS,
                        ALL_LAYERS_INPUT_SHAPE[0]).astype(numpy.int32)
    return {'data': data, 'label': label}


def make_all_layers_net(path_caffemodel: PathLike,
                        path_prototxt: Optional[PathLike] = None,
                        version: int = 2, seed: int = 0) -> NetWriter:
    """Writes a tiny net that uses every layer type the loader supports.

    Input ``data`` is ``(2, 4, 7, 7)`` and ``label`` holds 2 labels of 5
    classes (:func:`all_layers_inputs`). Every data-layer type (Input,
    Data, MemoryData, DummyData, ImageData, HDF5Data, WindowData), Silence,
    Convolution (pad, dilation, group), Deconvolution (group), BatchNorm,
    Scale (with bias), Bias, ReLU (leaky), PReLU, ELU, LRN (both regions),
    Pooling (MAX, AVE, global), Split, Eltwise (SUM with coeff, PROD,
    MAX), Sigmoid, TanH, AbsVal, BNLL, Power, Concat, Slice, Crop, Dropout,
    Flatten, Reshape, InnerProduct (also axis 2 + transpose), Softmax,
    SoftmaxWithLoss, Accuracy and the SSD fork's Normalize, Permute,
    PriorBox and DetectionOutput. Outputs include ``prob``, ``loss``,
    ``accuracy``, ``fc_t``, ``ssd_det``.

    With ``version=1`` the net is written in the V1 format without the
    layers whose types V1 lacks (Input, BatchNorm, Scale, Bias, PReLU,
    ELU, Crop, Reshape and the InnerProduct after it, the SSD head); inputs
    are then declared with ``input_dim``.

    Returns:
        NetWriter: The net written.
    """
    w = all_layers_writer(version, seed)
    w.write_caffemodel(path_caffemodel, version)
    if path_prototxt is not None:
        w.write_prototxt(path_prototxt, version)
    return w
