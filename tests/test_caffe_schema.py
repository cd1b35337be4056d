"""The project's own Caffe schema (caffe.proto -> caffe_pb2.py).

Field numbers, types, defaults and enum values must be BVLC Caffe's: they are
facts of the .caffemodel / .prototxt formats.  The wire-format tests compare
serialized bytes with encodings worked out by hand from BVLC's schema, so a
wrong number, type or packing in caffe.proto fails here.
"""

import importlib.util
import os
import struct
import subprocess
import sys

import pytest
from google.protobuf import text_format
from google.protobuf.internal import api_implementation

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.wire import FIXED32 as I32
from chainer_finetune.caffe.wire import LEN
from chainer_finetune.caffe.wire import VARINT
from chainer_finetune.caffe.wire import encode_varint as varint
from chainer_finetune.caffe.wire import field_key as key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN_TOOL = os.path.join(ROOT, 'tools', 'gen_caffe_pb2.py')
PB2_PATH = os.path.join(ROOT, 'chainer_finetune', 'caffe', 'caffe_pb2.py')


def f32(x):
    """The float32 value a proto `float` field actually holds for x."""
    return struct.unpack('<f', struct.pack('<f', x))[0]


def test_key_helper_matches_hand_encoded_bytes():
    # The wire module's encoders, against keys worked out on paper.
    assert key(1, LEN) == b'\x0a'
    assert key(5, VARINT) == b'\x28'
    assert key(15, LEN) == b'\x7a'
    assert key(16, VARINT) == b'\x80\x01'
    assert key(100, LEN) == b'\xa2\x06'    # NetParameter.layer
    assert key(106, LEN) == b'\xd2\x06'    # LayerParameter.convolution_param
    assert key(121, LEN) == b'\xca\x07'    # LayerParameter.pooling_param
    assert key(1001, LEN) == b'\xca\x3e'   # V1LayerParameter.param
    assert varint(300) == b'\xac\x02'
    assert varint(-1) == b'\xff' * 9 + b'\x01'


# ---------------------------------------------------------------------------
# (a), (b): the module and the protobuf backend
# ---------------------------------------------------------------------------

def test_module_identity():
    assert caffe_pb2.DESCRIPTOR.name == 'caffe.proto'
    assert caffe_pb2.DESCRIPTOR.package == 'caffe'
    assert caffe_pb2.NetParameter.DESCRIPTOR.full_name == 'caffe.NetParameter'
    assert os.path.abspath(caffe_pb2.__file__) == PB2_PATH


def test_backend_is_upb():
    assert api_implementation.Type() == 'upb'


def test_generated_module_header_and_no_runtime_guard():
    with open(PB2_PATH, encoding='utf-8') as f:
        text = f.read()
    head = text.splitlines()[:8]
    assert head[0] == '# -*- coding: utf-8 -*-'
    assert head[1].startswith('# GENERATED FILE, DO NOT EDIT.')
    assert head[2] == '#     python tools/gen_caffe_pb2.py'
    assert 'libprotoc' in head[3] and 'grpcio-tools' in head[3]
    assert 'from google.protobuf import runtime_version' not in text
    assert '_runtime_version.' not in text
    assert 'AddSerializedFile' in text


# ---------------------------------------------------------------------------
# (c) wire format: field numbers, types and packing pinned by bytes
# ---------------------------------------------------------------------------

def test_netparameter_wire_format():
    net = caffe_pb2.NetParameter()
    net.name = 'n'
    net.input.append('data')
    net.input_dim.extend([1, 3])            # int32, not packed
    net.force_backward = True
    net.debug_info = True
    net.input_shape.add().dim.extend([1, 3])
    net.state.phase = caffe_pb2.TRAIN
    net.layers.add()
    net.layer.add()
    expected = (
        b'\x0a\x01n'                      # name = 1
        b'\x12\x00'                       # layers = 2 (V1)
        b'\x1a\x04data'                   # input = 3
        b'\x20\x01\x20\x03'               # input_dim = 4, one key per value
        b'\x28\x01'                       # force_backward = 5
        b'\x32\x02\x08\x00'               # state = 6 { phase = 1: TRAIN }
        b'\x38\x01'                       # debug_info = 7
        b'\x42\x04\x0a\x02\x01\x03'       # input_shape = 8 { dim = 1 packed }
        b'\xa2\x06\x00'                   # layer = 100
    )
    assert net.SerializeToString() == expected
    assert caffe_pb2.NetParameter.FromString(expected) == net


def test_layerparameter_common_fields_wire_format():
    layer = caffe_pb2.LayerParameter()
    layer.name = 'c'
    layer.type = 'Convolution'
    layer.bottom.append('a')
    layer.top.append('b')
    layer.loss_weight.append(1.0)           # float, not packed
    layer.param.add().lr_mult = 2.0
    layer.blobs.add().num = 1
    layer.include.add().phase = caffe_pb2.TEST
    layer.exclude.add().min_level = 1
    layer.phase = caffe_pb2.TEST
    layer.propagate_down.append(True)
    expected = (
        b'\x0a\x01c'                              # name = 1
        b'\x12\x0bConvolution'                    # type = 2
        b'\x1a\x01a'                              # bottom = 3
        b'\x22\x01b'                              # top = 4
        b'\x2d\x00\x00\x80\x3f'                   # loss_weight = 5 (fixed32)
        b'\x32\x05\x1d\x00\x00\x00\x40'           # param = 6 { lr_mult = 3 }
        b'\x3a\x02\x08\x01'                       # blobs = 7 { num = 1 }
        b'\x42\x02\x08\x01'                       # include = 8 { phase = 1 }
        b'\x4a\x02\x10\x01'                       # exclude = 9 {min_level = 2}
        b'\x50\x01'                               # phase = 10
        b'\x58\x01'                               # propagate_down = 11
    )
    assert layer.SerializeToString() == expected


# BVLC's LayerParameter sub-message fields and their numbers.
LAYER_PARAM_FIELDS = {
    'transform_param': 100, 'loss_param': 101, 'accuracy_param': 102,
    'argmax_param': 103, 'concat_param': 104, 'contrastive_loss_param': 105,
    'convolution_param': 106, 'data_param': 107, 'dropout_param': 108,
    'dummy_data_param': 109, 'eltwise_param': 110, 'exp_param': 111,
    'hdf5_data_param': 112, 'hdf5_output_param': 113,
    'hinge_loss_param': 114, 'image_data_param': 115,
    'infogain_loss_param': 116, 'inner_product_param': 117, 'lrn_param': 118,
    'memory_data_param': 119, 'mvn_param': 120, 'pooling_param': 121,
    'power_param': 122, 'relu_param': 123, 'sigmoid_param': 124,
    'softmax_param': 125, 'slice_param': 126, 'tanh_param': 127,
    'threshold_param': 128, 'window_data_param': 129, 'python_param': 130,
    'prelu_param': 131, 'spp_param': 132, 'reshape_param': 133,
    'log_param': 134, 'flatten_param': 135, 'reduction_param': 136,
    'embed_param': 137, 'tile_param': 138, 'batch_norm_param': 139,
    'elu_param': 140, 'bias_param': 141, 'scale_param': 142,
    'input_param': 143, 'crop_param': 144, 'parameter_param': 145,
    'recurrent_param': 146, 'swish_param': 147, 'clip_param': 148,
}

# The SSD fork's (weiliu89/caffe, branch ssd) LayerParameter additions.
SSD_LAYER_PARAM_FIELDS = {
    'annotated_data_param': 200, 'multibox_loss_param': 201,
    'permute_param': 202, 'prior_box_param': 203,
    'detection_output_param': 204, 'detection_evaluate_param': 205,
    'norm_param': 206, 'video_data_param': 207,
}


@pytest.mark.parametrize('field,number', sorted(
    {**LAYER_PARAM_FIELDS, **SSD_LAYER_PARAM_FIELDS}.items()))
def test_layerparameter_param_field_numbers(field, number):
    layer = caffe_pb2.LayerParameter()
    getattr(layer, field).SetInParent()
    # Partial: ClipParameter has required fields, left unset here.
    raw = layer.SerializePartialToString()
    assert raw == key(number, LEN) + b'\x00'


def test_layerparameter_key_params_hand_encoded():
    # A few of the above, written out byte by byte.
    cases = {
        'convolution_param': b'\xd2\x06', 'pooling_param': b'\xca\x07',
        'inner_product_param': b'\xaa\x07', 'batch_norm_param': b'\xda\x08',
        'scale_param': b'\xf2\x08', 'input_param': b'\xfa\x08',
    }
    for field, tag in cases.items():
        layer = caffe_pb2.LayerParameter()
        getattr(layer, field).SetInParent()
        assert layer.SerializeToString() == tag + b'\x00', field


def test_layerparameter_has_exactly_bvlc_and_ssd_param_fields():
    names = {f.name for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields
             if f.name.endswith('_param')}
    assert names == set(LAYER_PARAM_FIELDS) | set(SSD_LAYER_PARAM_FIELDS)


# BVLC's V1LayerParameter fields and their numbers.
V1_SUBMESSAGE_FIELDS = {
    'layer': 1, 'concat_param': 9, 'convolution_param': 10, 'data_param': 11,
    'dropout_param': 12, 'hdf5_data_param': 13, 'hdf5_output_param': 14,
    'image_data_param': 15, 'infogain_loss_param': 16,
    'inner_product_param': 17, 'lrn_param': 18, 'pooling_param': 19,
    'window_data_param': 20, 'power_param': 21, 'memory_data_param': 22,
    'argmax_param': 23, 'eltwise_param': 24, 'threshold_param': 25,
    'dummy_data_param': 26, 'accuracy_param': 27, 'hinge_loss_param': 29,
    'relu_param': 30, 'slice_param': 31, 'include': 32, 'exclude': 33,
    'mvn_param': 34, 'transform_param': 36, 'tanh_param': 37,
    'sigmoid_param': 38, 'softmax_param': 39, 'contrastive_loss_param': 40,
    'exp_param': 41, 'loss_param': 42,
}


@pytest.mark.parametrize('field,number', sorted(V1_SUBMESSAGE_FIELDS.items()))
def test_v1layerparameter_submessage_field_numbers(field, number):
    layer = caffe_pb2.V1LayerParameter()
    value = getattr(layer, field)
    if field in ('include', 'exclude'):
        value.add()
    else:
        value.SetInParent()
    assert layer.SerializeToString() == key(number, LEN) + b'\x00'


def test_v1layerparameter_scalar_fields_wire_format():
    layer = caffe_pb2.V1LayerParameter()
    layer.bottom.append('a')
    layer.top.append('b')
    layer.name = 'c'
    layer.type = caffe_pb2.V1LayerParameter.CONVOLUTION
    layer.blobs.add()
    layer.blobs_lr.append(1.0)
    layer.weight_decay.append(0.0)
    layer.loss_weight.append(1.0)
    layer.param.append('w')
    layer.blob_share_mode.append(caffe_pb2.V1LayerParameter.PERMISSIVE)
    expected = (
        b'\x12\x01a'                      # bottom = 2
        b'\x1a\x01b'                      # top = 3
        b'\x22\x01c'                      # name = 4
        b'\x28\x04'                       # type = 5: CONVOLUTION (4)
        b'\x32\x00'                       # blobs = 6
        b'\x3d\x00\x00\x80\x3f'           # blobs_lr = 7
        b'\x45\x00\x00\x00\x00'           # weight_decay = 8
        b'\x9d\x02\x00\x00\x80\x3f'       # loss_weight = 35
        b'\xca\x3e\x01w'                  # param = 1001
        b'\xd0\x3e\x01'                   # blob_share_mode = 1002
    )
    assert layer.SerializeToString() == expected


def test_blobproto_wire_format():
    blob = caffe_pb2.BlobProto()
    blob.num, blob.channels, blob.height, blob.width = 2, 3, 4, 5
    blob.data.extend([1.0, 2.0])
    blob.diff.append(-2.0)
    blob.shape.dim.extend([1, 3, 224, 224])
    blob.double_data.append(1.0)
    blob.double_diff.append(0.5)
    expected = (
        b'\x08\x02\x10\x03\x18\x04\x20\x05'               # num..width = 1..4
        b'\x2a\x08\x00\x00\x80\x3f\x00\x00\x00\x40'       # data = 5, packed
        b'\x32\x04\x00\x00\x00\xc0'                       # diff = 6, packed
        b'\x3a\x08\x0a\x06\x01\x03\xe0\x01\xe0\x01'       # shape = 7 {dim}
        b'\x42\x08' + struct.pack('<d', 1.0) +            # double_data = 8
        b'\x4a\x08' + struct.pack('<d', 0.5)              # double_diff = 9
    )
    assert blob.SerializeToString() == expected
    assert caffe_pb2.BlobProto.FromString(expected) == blob


def test_blobproto_reads_unpacked_data_too():
    # Packed and unpacked encodings of a repeated float are both valid input.
    raw = b'\x2d\x00\x00\x80\x3f\x2d\x00\x00\x00\x40'
    assert list(caffe_pb2.BlobProto.FromString(raw).data) == [1.0, 2.0]


def test_blobproto_legacy_dims_are_int32():
    # int32 fields: a negative value is a 10-byte varint (sign extended).
    blob = caffe_pb2.BlobProto(num=-1)
    assert blob.SerializeToString() == b'\x08' + b'\xff' * 9 + b'\x01'
    with pytest.raises(ValueError):
        caffe_pb2.BlobProto(num=2 ** 31)


def test_integer_field_widths_and_signedness():
    # Same bytes for small positive values, so pin the types by their ranges:
    # int32 rejects 2**31, uint32 rejects -1, int64 takes 2**40.
    int32_fields = [(caffe_pb2.NetParameter().input_dim, 'input_dim'),
                    (caffe_pb2.BlobProto, 'channels'),
                    (caffe_pb2.InnerProductParameter, 'axis'),
                    (caffe_pb2.FillerParameter, 'sparse')]
    for target, name in int32_fields:
        with pytest.raises(ValueError):
            if isinstance(target, type):
                setattr(target(), name, 2 ** 31)
            else:
                target.append(2 ** 31)
    uint32_fields = [(caffe_pb2.ConvolutionParameter().kernel_size, None),
                     (caffe_pb2.ConvolutionParameter, 'num_output'),
                     (caffe_pb2.PoolingParameter, 'kernel_size'),
                     (caffe_pb2.LRNParameter, 'local_size')]
    for target, name in uint32_fields:
        with pytest.raises(ValueError):
            if isinstance(target, type):
                setattr(target(), name, -1)
            else:
                target.append(-1)
    shape = caffe_pb2.BlobShape(dim=[2 ** 40])
    assert shape.SerializeToString() == b'\x0a\x06' + varint(2 ** 40)
    seed = caffe_pb2.SolverParameter(random_seed=2 ** 40)
    assert seed.SerializeToString() == key(20, VARINT) + varint(2 ** 40)


def test_blobprotovector_wire_format():
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.add().num = 1
    assert vec.SerializeToString() == b'\x0a\x02\x08\x01'


def test_convolution_parameter_wire_format():
    p = caffe_pb2.ConvolutionParameter()
    p.num_output = 1
    p.bias_term = False
    p.pad.append(1)
    p.kernel_size.append(3)
    p.group = 2
    p.stride.append(1)
    p.weight_filler.SetInParent()
    p.bias_filler.SetInParent()
    p.pad_h, p.pad_w, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w = (
        1, 1, 1, 1, 1, 1)
    p.engine = p.CUDNN
    p.axis = 1
    p.force_nd_im2col = True
    p.dilation.append(2)
    expected = (
        b'\x08\x01'          # num_output = 1
        b'\x10\x00'          # bias_term = 2
        b'\x18\x01'          # pad = 3 (repeated, not packed)
        b'\x20\x03'          # kernel_size = 4 (repeated, not packed)
        b'\x28\x02'          # group = 5
        b'\x30\x01'          # stride = 6 (repeated, not packed)
        b'\x3a\x00'          # weight_filler = 7
        b'\x42\x00'          # bias_filler = 8
        b'\x48\x01\x50\x01'  # pad_h = 9, pad_w = 10
        b'\x58\x01\x60\x01'  # kernel_h = 11, kernel_w = 12
        b'\x68\x01\x70\x01'  # stride_h = 13, stride_w = 14
        b'\x78\x02'          # engine = 15: CUDNN
        b'\x80\x01\x01'      # axis = 16
        b'\x88\x01\x01'      # force_nd_im2col = 17
        b'\x90\x01\x02'      # dilation = 18
    )
    assert p.SerializeToString() == expected


def test_pooling_parameter_wire_format():
    p = caffe_pb2.PoolingParameter()
    p.pool = p.AVE
    p.kernel_size, p.stride, p.pad = 2, 2, 1
    p.kernel_h, p.kernel_w, p.stride_h, p.stride_w = 1, 1, 1, 1
    p.pad_h, p.pad_w = 1, 1
    p.engine = p.CAFFE
    p.global_pooling = True
    p.round_mode = p.FLOOR
    expected = (
        b'\x08\x01'                  # pool = 1: AVE
        b'\x10\x02\x18\x02\x20\x01'  # kernel_size = 2, stride = 3, pad = 4
        b'\x28\x01\x30\x01'          # kernel_h = 5, kernel_w = 6
        b'\x38\x01\x40\x01'          # stride_h = 7, stride_w = 8
        b'\x48\x01\x50\x01'          # pad_h = 9, pad_w = 10
        b'\x58\x01'                  # engine = 11: CAFFE
        b'\x60\x01'                  # global_pooling = 12
        b'\x68\x01'                  # round_mode = 13: FLOOR
    )
    assert p.SerializeToString() == expected


def test_small_parameter_messages_wire_format():
    cases = [
        (caffe_pb2.InnerProductParameter(num_output=1, bias_term=True, axis=2,
                                         transpose=True),
         b'\x08\x01\x10\x01\x28\x02\x30\x01'),
        (caffe_pb2.LRNParameter(local_size=3, alpha=1.0, beta=1.0,
                                norm_region=1, k=2.0, engine=1),
         b'\x08\x03\x15\x00\x00\x80\x3f\x1d\x00\x00\x80\x3f\x20\x01'
         b'\x2d\x00\x00\x00\x40\x30\x01'),
        (caffe_pb2.BatchNormParameter(use_global_stats=True,
                                      moving_average_fraction=1.0, eps=1.0),
         b'\x08\x01\x15\x00\x00\x80\x3f\x1d\x00\x00\x80\x3f'),
        (caffe_pb2.ScaleParameter(axis=1, num_axes=1, bias_term=True),
         b'\x08\x01\x10\x01\x20\x01'),
        (caffe_pb2.BiasParameter(axis=1, num_axes=1),
         b'\x08\x01\x10\x01'),
        (caffe_pb2.DropoutParameter(dropout_ratio=1.0),
         b'\x0d\x00\x00\x80\x3f'),
        (caffe_pb2.EltwiseParameter(operation=0, coeff=[1.0],
                                    stable_prod_grad=False),
         b'\x08\x00\x15\x00\x00\x80\x3f\x18\x00'),
        (caffe_pb2.ConcatParameter(concat_dim=1, axis=1),
         b'\x08\x01\x10\x01'),
        (caffe_pb2.SliceParameter(slice_dim=1, slice_point=[2], axis=1),
         b'\x08\x01\x10\x02\x18\x01'),
        (caffe_pb2.ReshapeParameter(axis=1, num_axes=-1),
         b'\x10\x01\x18' + b'\xff' * 9 + b'\x01'),
        (caffe_pb2.FlattenParameter(axis=1, end_axis=2),
         b'\x08\x01\x10\x02'),
        (caffe_pb2.ReLUParameter(negative_slope=1.0, engine=2),
         b'\x0d\x00\x00\x80\x3f\x10\x02'),
        (caffe_pb2.PReLUParameter(channel_shared=True),
         b'\x10\x01'),
        (caffe_pb2.ELUParameter(alpha=2.0), b'\x0d\x00\x00\x00\x40'),
        (caffe_pb2.PowerParameter(power=1.0, scale=1.0, shift=1.0),
         b'\x0d\x00\x00\x80\x3f\x15\x00\x00\x80\x3f\x1d\x00\x00\x80\x3f'),
        (caffe_pb2.SoftmaxParameter(engine=1, axis=2), b'\x08\x01\x10\x02'),
        (caffe_pb2.SigmoidParameter(engine=2), b'\x08\x02'),
        (caffe_pb2.TanHParameter(engine=2), b'\x08\x02'),
        (caffe_pb2.ThresholdParameter(threshold=1.0), b'\x0d\x00\x00\x80\x3f'),
        (caffe_pb2.ArgMaxParameter(out_max_val=True, top_k=2, axis=1),
         b'\x08\x01\x10\x02\x18\x01'),
        (caffe_pb2.AccuracyParameter(top_k=5, axis=1, ignore_label=3),
         b'\x08\x05\x10\x01\x18\x03'),
        (caffe_pb2.CropParameter(axis=1, offset=[4]), b'\x08\x01\x10\x04'),
        (caffe_pb2.EmbedParameter(num_output=1, input_dim=2, bias_term=False),
         b'\x08\x01\x10\x02\x18\x00'),
        (caffe_pb2.ExpParameter(base=2.0), b'\x0d\x00\x00\x00\x40'),
        (caffe_pb2.LogParameter(shift=2.0), b'\x1d\x00\x00\x00\x40'),
        (caffe_pb2.InputParameter(shape=[caffe_pb2.BlobShape(dim=[1])]),
         b'\x0a\x03\x0a\x01\x01'),
        (caffe_pb2.ParameterParameter(shape=caffe_pb2.BlobShape(dim=[1])),
         b'\x0a\x03\x0a\x01\x01'),
        (caffe_pb2.SwishParameter(beta=2.0), b'\x0d\x00\x00\x00\x40'),
        (caffe_pb2.ClipParameter(min=1.0, max=2.0),
         b'\x0d\x00\x00\x80\x3f\x15\x00\x00\x00\x40'),
        (caffe_pb2.MemoryDataParameter(batch_size=1, channels=2, height=3,
                                       width=4),
         b'\x08\x01\x10\x02\x18\x03\x20\x04'),
        (caffe_pb2.DataParameter(source='s', batch_size=1, backend=1,
                                 prefetch=2),
         b'\x0a\x01s\x20\x01\x40\x01\x50\x02'),
        (caffe_pb2.ImageDataParameter(source='s', batch_size=2,
                                      root_folder='r'),
         b'\x0a\x01s\x20\x02\x62\x01r'),
        (caffe_pb2.HDF5DataParameter(source='s', batch_size=1, shuffle=True),
         b'\x0a\x01s\x10\x01\x18\x01'),
        (caffe_pb2.HDF5OutputParameter(file_name='f'), b'\x0a\x01f'),
        (caffe_pb2.LossParameter(ignore_label=1, normalize=True,
                                 normalization=0),
         b'\x08\x01\x10\x01\x18\x00'),
        (caffe_pb2.TransformationParameter(scale=1.0, mirror=True,
                                           crop_size=2, mean_file='m',
                                           mean_value=[1.0], force_color=True,
                                           force_gray=True),
         b'\x0d\x00\x00\x80\x3f\x10\x01\x18\x02\x22\x01m'
         b'\x2d\x00\x00\x80\x3f\x30\x01\x38\x01'),
        (caffe_pb2.ParamSpec(name='w', share_mode=1, lr_mult=1.0,
                             decay_mult=1.0),
         b'\x0a\x01w\x10\x01\x1d\x00\x00\x80\x3f\x25\x00\x00\x80\x3f'),
        (caffe_pb2.NetStateRule(phase=0, min_level=1, max_level=2,
                                stage=['a'], not_stage=['b']),
         b'\x08\x00\x10\x01\x18\x02\x22\x01a\x2a\x01b'),
        (caffe_pb2.NetState(phase=0, level=1, stage=['a']),
         b'\x08\x00\x10\x01\x1a\x01a'),
        (caffe_pb2.FillerParameter(type='xavier', std=2.0, sparse=1,
                                   variance_norm=2),
         b'\x0a\x06xavier\x35\x00\x00\x00\x40\x38\x01\x40\x02'),
        (caffe_pb2.V0LayerParameter(kernelsize=3, k=2.0, concat_dim=1),
         b'\x40\x03\xb5\x01\x00\x00\x00\x40\x88\x04\x01'),
        (caffe_pb2.SolverParameter(base_lr=1.0, net='n', type='SGD',
                                   layer_wise_reduce=False, weights=['w']),
         b'\x2d\x00\x00\x80\x3f\xc2\x01\x01n\xc2\x02\x03SGD'
         b'\xc8\x02\x00\xd2\x02\x01w'),
        (caffe_pb2.SolverState(iter=1, learned_net='m', current_step=2),
         b'\x08\x01\x12\x01m\x20\x02'),
        (caffe_pb2.Datum(channels=3, data=b'x', label=1, float_data=[1.0],
                         encoded=True),
         b'\x08\x03\x22\x01x\x28\x01\x35\x00\x00\x80\x3f\x38\x01'),
    ]
    for message, expected in cases:
        got = message.SerializeToString()
        assert got == expected, (type(message).__name__, got, expected)


# ---------------------------------------------------------------------------
# (d) defaults: BVLC's [default = ...]
# ---------------------------------------------------------------------------

DEFAULTS = [
    ('LRNParameter', 'local_size', 5),
    ('LRNParameter', 'alpha', 1.0),
    ('LRNParameter', 'beta', f32(0.75)),
    ('LRNParameter', 'k', 1.0),
    ('LRNParameter', 'norm_region', 0),  # ACROSS_CHANNELS
    ('LRNParameter', 'engine', 0),
    ('BatchNormParameter', 'use_global_stats', False),
    ('BatchNormParameter', 'moving_average_fraction', f32(0.999)),
    ('BatchNormParameter', 'eps', f32(1e-5)),
    ('PoolingParameter', 'pool', 0),  # MAX
    ('PoolingParameter', 'stride', 1),
    ('PoolingParameter', 'pad', 0),
    ('PoolingParameter', 'kernel_size', 0),
    ('PoolingParameter', 'global_pooling', False),
    ('PoolingParameter', 'round_mode', 0),  # CEIL
    ('DropoutParameter', 'dropout_ratio', 0.5),
    ('ConvolutionParameter', 'bias_term', True),
    ('ConvolutionParameter', 'group', 1),
    ('ConvolutionParameter', 'axis', 1),
    ('ConvolutionParameter', 'pad_h', 0),
    ('ConvolutionParameter', 'kernel_h', 0),
    ('ConvolutionParameter', 'stride_h', 0),
    ('ConvolutionParameter', 'force_nd_im2col', False),
    ('ConvolutionParameter', 'engine', 0),
    ('InnerProductParameter', 'bias_term', True),
    ('InnerProductParameter', 'axis', 1),
    ('InnerProductParameter', 'transpose', False),
    ('SoftmaxParameter', 'axis', 1),
    ('SoftmaxParameter', 'engine', 0),
    ('ConcatParameter', 'axis', 1),
    ('ConcatParameter', 'concat_dim', 1),
    ('EltwiseParameter', 'operation', 1),  # SUM
    ('EltwiseParameter', 'stable_prod_grad', True),
    ('SliceParameter', 'axis', 1),
    ('SliceParameter', 'slice_dim', 1),
    ('ReshapeParameter', 'axis', 0),
    ('ReshapeParameter', 'num_axes', -1),
    ('FlattenParameter', 'axis', 1),
    ('FlattenParameter', 'end_axis', -1),
    ('PReLUParameter', 'channel_shared', False),
    ('ELUParameter', 'alpha', 1.0),
    ('ReLUParameter', 'negative_slope', 0.0),
    ('PowerParameter', 'power', 1.0),
    ('PowerParameter', 'scale', 1.0),
    ('PowerParameter', 'shift', 0.0),
    ('ExpParameter', 'base', -1.0),
    ('ExpParameter', 'scale', 1.0),
    ('LogParameter', 'base', -1.0),
    ('ScaleParameter', 'axis', 1),
    ('ScaleParameter', 'num_axes', 1),
    ('ScaleParameter', 'bias_term', False),
    ('BiasParameter', 'axis', 1),
    ('BiasParameter', 'num_axes', 1),
    ('ThresholdParameter', 'threshold', 0.0),
    ('ArgMaxParameter', 'top_k', 1),
    ('ArgMaxParameter', 'out_max_val', False),
    ('AccuracyParameter', 'top_k', 1),
    ('AccuracyParameter', 'axis', 1),
    ('CropParameter', 'axis', 2),
    ('EmbedParameter', 'bias_term', True),
    ('SwishParameter', 'beta', 1.0),
    ('MVNParameter', 'eps', f32(1e-9)),
    ('MVNParameter', 'normalize_variance', True),
    ('ReductionParameter', 'operation', 1),  # SUM
    ('ReductionParameter', 'coeff', 1.0),
    ('HingeLossParameter', 'norm', 1),  # L1
    ('InfogainLossParameter', 'axis', 1),
    ('RecurrentParameter', 'num_output', 0),
    ('DataParameter', 'backend', 0),  # LEVELDB
    ('DataParameter', 'prefetch', 4),
    ('DataParameter', 'scale', 1.0),
    ('ImageDataParameter', 'batch_size', 1),
    ('ImageDataParameter', 'is_color', True),
    ('ImageDataParameter', 'root_folder', ''),
    ('WindowDataParameter', 'fg_threshold', 0.5),
    ('WindowDataParameter', 'fg_fraction', 0.25),
    ('WindowDataParameter', 'crop_mode', 'warp'),
    ('PythonParameter', 'param_str', ''),
    ('TransformationParameter', 'scale', 1.0),
    ('TransformationParameter', 'mirror', False),
    ('TransformationParameter', 'crop_size', 0),
    ('LossParameter', 'normalization', 1),  # VALID
    ('FillerParameter', 'type', 'constant'),
    ('FillerParameter', 'value', 0.0),
    ('FillerParameter', 'max', 1.0),
    ('FillerParameter', 'std', 1.0),
    ('FillerParameter', 'sparse', -1),
    ('FillerParameter', 'variance_norm', 0),  # FAN_IN
    ('ParamSpec', 'lr_mult', 1.0),
    ('ParamSpec', 'decay_mult', 1.0),
    ('NetState', 'phase', 1),  # TEST
    ('NetParameter', 'force_backward', False),
    ('BlobProto', 'num', 0),
    ('BlobProto', 'width', 0),
    ('V0LayerParameter', 'biasterm', True),
    ('V0LayerParameter', 'stride', 1),
    ('V0LayerParameter', 'local_size', 5),
    ('V0LayerParameter', 'beta', f32(0.75)),
    ('V0LayerParameter', 'det_crop_mode', 'warp'),
    ('SolverParameter', 'type', 'SGD'),
    ('SolverParameter', 'regularization_type', 'L2'),
    ('SolverParameter', 'solver_mode', 1),  # GPU
    ('SolverParameter', 'snapshot_format', 1),  # BINARYPROTO
    ('SolverParameter', 'random_seed', -1),
    ('SolverParameter', 'delta', f32(1e-8)),
    ('SolverParameter', 'momentum2', f32(0.999)),
    ('SolverParameter', 'rms_decay', f32(0.99)),
    ('SolverParameter', 'clip_gradients', -1.0),
    ('SolverParameter', 'test_initialization', True),
    ('SolverParameter', 'layer_wise_reduce', True),
]


@pytest.mark.parametrize('message,field,value', DEFAULTS)
def test_defaults_match_bvlc(message, field, value):
    msg = getattr(caffe_pb2, message)()
    assert getattr(msg, field) == value
    assert type(getattr(msg, field)) is type(value)
    assert not msg.HasField(field)
    assert msg.SerializeToString() == b''   # defaults are never written


# The SSD fork's defaults (weiliu89/caffe, branch ssd, caffe.proto).
SSD_DEFAULTS = [
    ('NormalizeParameter', 'across_spatial', True),
    ('NormalizeParameter', 'channel_shared', True),
    ('NormalizeParameter', 'eps', f32(1e-10)),
    ('PriorBoxParameter', 'flip', True),
    ('PriorBoxParameter', 'clip', False),
    ('PriorBoxParameter', 'offset', 0.5),
    ('DetectionOutputParameter', 'share_location', True),
    ('DetectionOutputParameter', 'background_label_id', 0),
    ('DetectionOutputParameter', 'code_type', 1),     # CORNER
    ('DetectionOutputParameter', 'variance_encoded_in_target', False),
    ('DetectionOutputParameter', 'keep_top_k', -1),
    ('NonMaximumSuppressionParameter', 'nms_threshold', f32(0.3)),
    ('NonMaximumSuppressionParameter', 'eta', 1.0),
    ('MultiBoxLossParameter', 'loc_loss_type', 1),    # SMOOTH_L1
    ('MultiBoxLossParameter', 'match_type', 1),       # PER_PREDICTION
    ('MultiBoxLossParameter', 'neg_pos_ratio', 3.0),
    ('MultiBoxLossParameter', 'mining_type', 1),      # MAX_NEGATIVE
    ('MultiBoxLossParameter', 'sample_size', 64),
    ('BatchSampler', 'max_trials', 100),
    ('ResizeParameter', 'resize_mode', 1),            # WARP
    ('NoiseParameter', 'jpeg', -1.0),
    ('ExpansionParameter', 'max_expand_ratio', 1.0),
    ('DetectionEvaluateParameter', 'overlap_threshold', 0.5),
    ('DetectionEvaluateParameter', 'evaluate_difficult_gt', True),
]


@pytest.mark.parametrize('message,field,value', SSD_DEFAULTS)
def test_ssd_defaults(message, field, value):
    test_defaults_match_bvlc(message, field, value)


def test_ssd_messages_wire_format():
    layer = caffe_pb2.LayerParameter()
    prior = layer.prior_box_param
    prior.min_size.append(30.0)
    prior.aspect_ratio.extend([2.0, 3.0])
    prior.variance.append(0.1)
    prior.step = 8.0
    layer.norm_param.across_spatial = False
    layer.permute_param.order.extend([0, 2, 3, 1])
    out = layer.detection_output_param
    out.num_classes = 21
    out.nms_param.nms_threshold = 0.45
    out.nms_param.top_k = 100
    out.code_type = caffe_pb2.PriorBoxParameter.CENTER_SIZE
    out.confidence_threshold = 0.01
    expected = (
        # permute_param = 202 {order = 1, unpacked}
        key(202, LEN) + b'\x08' + b'\x08\x00\x08\x02\x08\x03\x08\x01'
        # prior_box_param = 203 {min_size = 1, aspect_ratio = 3 x2,
        # variance = 6, step = 10}
        + key(203, LEN) + b'\x19'
        + b'\x0d' + struct.pack('<f', 30.0)
        + b'\x1d' + struct.pack('<f', 2.0) + b'\x1d' + struct.pack('<f', 3.0)
        + b'\x35' + struct.pack('<f', 0.1)
        + b'\x55' + struct.pack('<f', 8.0)
        # detection_output_param = 204 {num_classes = 1, nms_param = 4
        # {nms_threshold = 1, top_k = 2}, code_type = 6,
        # confidence_threshold = 9}
        + key(204, LEN) + b'\x12'
        + b'\x08\x15' + b'\x22\x07\x0d' + struct.pack('<f', 0.45)
        + b'\x10\x64' + b'\x30\x02' + b'\x4d' + struct.pack('<f', 0.01)
        # norm_param = 206 {across_spatial = 1}
        + key(206, LEN) + b'\x02\x08\x00'
    )
    assert layer.SerializeToString() == expected
    assert caffe_pb2.LayerParameter.FromString(expected) == layer


def test_ssd_transformation_parameter_fields():
    numbers = {f.name: f.number for f in
               caffe_pb2.TransformationParameter.DESCRIPTOR.fields}
    assert {k: numbers[k] for k in (
        'resize_param', 'noise_param', 'emit_constraint', 'crop_h',
        'crop_w', 'distort_param', 'expand_param')} == {
        'resize_param': 8, 'noise_param': 9, 'emit_constraint': 10,
        'crop_h': 11, 'crop_w': 12, 'distort_param': 13, 'expand_param': 14}


def test_blobproto_raw_data_wire_format():
    # NVIDIA's Caffe / OpenCV: raw_data_type = 10 (enum Type), raw_data = 12.
    assert dict(caffe_pb2.Type.items()) == {
        'DOUBLE': 0, 'FLOAT': 1, 'FLOAT16': 2, 'INT': 3, 'UINT': 4}
    blob = caffe_pb2.BlobProto(raw_data_type=caffe_pb2.FLOAT16,
                               raw_data=b'\x00\x3c')
    assert blob.SerializeToString() == b'\x50\x02\x62\x02\x00\x3c'


def test_repeated_convolution_geometry_has_no_default():
    # pad / kernel_size / stride / dilation are repeated: empty by default,
    # and Chainer's CaffeFunction relies on len() == 0 meaning "unset".
    p = caffe_pb2.ConvolutionParameter()
    assert len(p.pad) == len(p.kernel_size) == len(p.stride) == 0
    assert len(p.dilation) == 0


def test_clip_parameter_fields_are_required():
    assert not caffe_pb2.ClipParameter().IsInitialized()
    assert caffe_pb2.ClipParameter(min=0.0, max=6.0).IsInitialized()


# ---------------------------------------------------------------------------
# (e) enums
# ---------------------------------------------------------------------------

V1_LAYER_TYPES = {
    'NONE': 0, 'ABSVAL': 35, 'ACCURACY': 1, 'ARGMAX': 30, 'BNLL': 2,
    'CONCAT': 3, 'CONTRASTIVE_LOSS': 37, 'CONVOLUTION': 4, 'DATA': 5,
    'DECONVOLUTION': 39, 'DROPOUT': 6, 'DUMMY_DATA': 32,
    'EUCLIDEAN_LOSS': 7, 'ELTWISE': 25, 'EXP': 38, 'FLATTEN': 8,
    'HDF5_DATA': 9, 'HDF5_OUTPUT': 10, 'HINGE_LOSS': 28, 'IM2COL': 11,
    'IMAGE_DATA': 12, 'INFOGAIN_LOSS': 13, 'INNER_PRODUCT': 14, 'LRN': 15,
    'MEMORY_DATA': 29, 'MULTINOMIAL_LOGISTIC_LOSS': 16, 'MVN': 34,
    'POOLING': 17, 'POWER': 26, 'RELU': 18, 'SIGMOID': 19,
    'SIGMOID_CROSS_ENTROPY_LOSS': 27, 'SILENCE': 36, 'SOFTMAX': 20,
    'SOFTMAX_LOSS': 21, 'SPLIT': 22, 'SLICE': 33, 'TANH': 23,
    'WINDOW_DATA': 24, 'THRESHOLD': 31,
}


def test_v1_layer_type_enum_is_bvlcs():
    enum = caffe_pb2.V1LayerParameter.LayerType
    assert dict(enum.items()) == V1_LAYER_TYPES
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert caffe_pb2.V1LayerParameter.INNER_PRODUCT == 14
    assert caffe_pb2.V1LayerParameter.SOFTMAX_LOSS == 21
    assert caffe_pb2.V1LayerParameter.DECONVOLUTION == 39


@pytest.mark.parametrize('name,value', sorted(V1_LAYER_TYPES.items()))
def test_v1_layer_type_round_trip(name, value):
    enum = caffe_pb2.V1LayerParameter.LayerType
    layer = caffe_pb2.V1LayerParameter(type=enum.Value(name))
    raw = layer.SerializeToString()
    assert raw == b'\x28' + varint(value)
    back = caffe_pb2.V1LayerParameter.FromString(raw)
    assert back.type == value
    assert enum.Name(back.type) == name
    text = text_format.MessageToString(back)
    assert text == 'type: %s\n' % name
    assert text_format.Parse(text, caffe_pb2.V1LayerParameter()) == back


def test_other_enums_are_bvlcs():
    pb = caffe_pb2
    engines = {'DEFAULT': 0, 'CAFFE': 1, 'CUDNN': 2}
    expected = {
        pb.Phase: {'TRAIN': 0, 'TEST': 1},
        pb.PoolingParameter.PoolMethod: {'MAX': 0, 'AVE': 1, 'STOCHASTIC': 2},
        pb.PoolingParameter.RoundMode: {'CEIL': 0, 'FLOOR': 1},
        pb.PoolingParameter.Engine: engines,
        pb.ConvolutionParameter.Engine: engines,
        pb.LRNParameter.Engine: engines,
        pb.ReLUParameter.Engine: engines,
        pb.SigmoidParameter.Engine: engines,
        pb.SoftmaxParameter.Engine: engines,
        pb.TanHParameter.Engine: engines,
        pb.SPPParameter.Engine: engines,
        pb.SPPParameter.PoolMethod: {'MAX': 0, 'AVE': 1, 'STOCHASTIC': 2},
        pb.V0LayerParameter.PoolMethod: {'MAX': 0, 'AVE': 1, 'STOCHASTIC': 2},
        pb.LRNParameter.NormRegion: {'ACROSS_CHANNELS': 0,
                                     'WITHIN_CHANNEL': 1},
        pb.EltwiseParameter.EltwiseOp: {'PROD': 0, 'SUM': 1, 'MAX': 2},
        pb.ParamSpec.DimCheckMode: {'STRICT': 0, 'PERMISSIVE': 1},
        pb.V1LayerParameter.DimCheckMode: {'STRICT': 0, 'PERMISSIVE': 1},
        pb.FillerParameter.VarianceNorm: {'FAN_IN': 0, 'FAN_OUT': 1,
                                          'AVERAGE': 2},
        pb.LossParameter.NormalizationMode: {'FULL': 0, 'VALID': 1,
                                             'BATCH_SIZE': 2, 'NONE': 3},
        pb.HingeLossParameter.Norm: {'L1': 1, 'L2': 2},
        pb.ReductionParameter.ReductionOp: {'SUM': 1, 'ASUM': 2, 'SUMSQ': 3,
                                            'MEAN': 4},
        pb.DataParameter.DB: {'LEVELDB': 0, 'LMDB': 1},
        pb.SolverParameter.SnapshotFormat: {'HDF5': 0, 'BINARYPROTO': 1},
        pb.SolverParameter.SolverMode: {'CPU': 0, 'GPU': 1},
        pb.PriorBoxParameter.CodeType: {'CORNER': 1, 'CENTER_SIZE': 2,
                                        'CORNER_SIZE': 3},
        pb.MultiBoxLossParameter.LocLossType: {'L2': 0, 'SMOOTH_L1': 1},
        pb.MultiBoxLossParameter.ConfLossType: {'SOFTMAX': 0, 'LOGISTIC': 1},
        pb.MultiBoxLossParameter.MatchType: {'BIPARTITE': 0,
                                             'PER_PREDICTION': 1},
        pb.MultiBoxLossParameter.MiningType: {'NONE': 0, 'MAX_NEGATIVE': 1,
                                              'HARD_EXAMPLE': 2},
        pb.EmitConstraint.EmitType: {'CENTER': 0, 'MIN_OVERLAP': 1},
        pb.AnnotatedDatum.AnnotationType: {'BBOX': 0},
        pb.ResizeParameter.Resize_mode: {'WARP': 1, 'FIT_SMALL_SIZE': 2,
                                         'FIT_LARGE_SIZE_AND_PAD': 3},
        pb.ResizeParameter.Pad_mode: {'CONSTANT': 1, 'MIRRORED': 2,
                                      'REPEAT_NEAREST': 3},
        pb.ResizeParameter.Interp_mode: {'LINEAR': 1, 'AREA': 2,
                                         'NEAREST': 3, 'CUBIC': 4,
                                         'LANCZOS4': 5},
        pb.SolverParameter.SolverType: {'SGD': 0, 'NESTEROV': 1, 'ADAGRAD': 2,
                                        'RMSPROP': 3, 'ADADELTA': 4,
                                        'ADAM': 5},
    }
    for enum, values in expected.items():
        assert dict(enum.items()) == values, enum.DESCRIPTOR.full_name


# Every caffe_pb2 name Chainer 7.8.1's chainer/links/caffe/caffe_function.py
# touches (our module is served to it in place of its bundled caffe_pb2).
CHAINER_V2_LAYER_ATTRS = [
    'name', 'type', 'bottom', 'top', 'blobs', 'concat_param',
    'convolution_param', 'dropout_param', 'inner_product_param', 'lrn_param',
    'pooling_param', 'relu_param', 'reshape_param', 'batch_norm_param',
    'eltwise_param', 'scale_param', 'slice_param', 'softmax_param',
    'sigmoid_param',
]
CHAINER_V1_TYPES = [
    'CONCAT', 'CONVOLUTION', 'DECONVOLUTION', 'DATA', 'DROPOUT',
    'INNER_PRODUCT', 'LRN', 'POOLING', 'RELU', 'ELTWISE', 'SLICE', 'SOFTMAX',
    'SIGMOID', 'SOFTMAX_LOSS', 'SPLIT',
]
CHAINER_PARAM_ATTRS = {
    'ConcatParameter': ['axis', 'concat_dim'],
    'ConvolutionParameter': ['kernel_h', 'kernel_w', 'kernel_size',
                             'stride_h', 'stride_w', 'stride', 'pad_h',
                             'pad_w', 'pad', 'bias_term', 'group'],
    'PoolingParameter': ['kernel_h', 'kernel_w', 'kernel_size', 'stride_h',
                         'stride_w', 'stride', 'pad_h', 'pad_w', 'pad',
                         'pool', 'MAX', 'AVE', 'global_pooling'],
    'DropoutParameter': ['dropout_ratio'],
    'InnerProductParameter': ['bias_term', 'axis'],
    'LRNParameter': ['norm_region', 'ACROSS_CHANNELS', 'local_size', 'k',
                     'alpha', 'beta'],
    'ReLUParameter': ['negative_slope'],
    'ReshapeParameter': ['shape'],
    'BatchNormParameter': ['use_global_stats', 'moving_average_fraction',
                           'eps'],
    'EltwiseParameter': ['operation', 'coeff'],
    'ScaleParameter': ['axis', 'bias_term'],
    'SliceParameter': ['axis', 'slice_dim', 'slice_point'],
    'SoftmaxParameter': ['axis', 'engine'],
    'SigmoidParameter': ['engine'],
    'BlobProto': ['num', 'channels', 'height', 'width', 'shape', 'data'],
    'BlobShape': ['dim'],
    'NetParameter': ['layer', 'layers'],
}


def test_everything_chainer_caffe_function_uses_exists():
    layer = caffe_pb2.LayerParameter()
    v1 = caffe_pb2.V1LayerParameter()
    for attr in CHAINER_V2_LAYER_ATTRS:
        getattr(layer, attr)
    for attr in ['name', 'type', 'bottom', 'top', 'blobs', 'concat_param',
                 'convolution_param', 'dropout_param', 'inner_product_param',
                 'lrn_param', 'pooling_param', 'relu_param', 'eltwise_param',
                 'slice_param', 'softmax_param', 'sigmoid_param']:
        getattr(v1, attr)
    for name in CHAINER_V1_TYPES:
        assert isinstance(getattr(caffe_pb2.V1LayerParameter, name), int)
    for message, attrs in CHAINER_PARAM_ATTRS.items():
        msg = getattr(caffe_pb2, message)()
        for attr in attrs:
            getattr(msg, attr)
    # _setup_slice uses HasField on these two.
    assert not caffe_pb2.SliceParameter().HasField('axis')
    assert not caffe_pb2.SliceParameter().HasField('slice_dim')


# ---------------------------------------------------------------------------
# (f) text format
# ---------------------------------------------------------------------------

V2_DEPLOY = '''
name: "TinyNet"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 8
input_dim: 8
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 4
    kernel_size: 3
    pad: 1
    weight_filler { type: "gaussian" std: 0.01 }
    bias_filler { type: "constant" value: 0.2 }
  }
}
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { use_global_stats: true } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR }
}
layer {
  name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }
}
layer {
  name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
  inner_product_param { num_output: 10 }
  include { phase: TEST }
}
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


def test_parse_v2_deploy_prototxt():
    net = text_format.Parse(V2_DEPLOY, caffe_pb2.NetParameter())
    assert net.name == 'TinyNet'
    assert list(net.input) == ['data']
    assert list(net.input_dim) == [1, 3, 8, 8]
    assert not net.layers
    assert [layer.type for layer in net.layer] == [
        'Convolution', 'BatchNorm', 'Scale', 'ReLU', 'Pooling', 'LRN',
        'InnerProduct', 'Softmax']

    conv = net.layer[0]
    assert (conv.name, list(conv.bottom), list(conv.top)) == (
        'conv1', ['data'], ['conv1'])
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    cp = conv.convolution_param
    assert cp.num_output == 4
    assert list(cp.kernel_size) == [3]
    assert list(cp.pad) == [1]
    assert list(cp.stride) == []
    assert cp.bias_term and cp.group == 1
    assert cp.weight_filler.type == 'gaussian'
    assert cp.weight_filler.std == f32(0.01)
    assert cp.bias_filler.value == f32(0.2)

    assert net.layer[1].batch_norm_param.use_global_stats is True
    assert net.layer[2].scale_param.bias_term is True
    assert not net.layer[3].HasField('relu_param')
    assert net.layer[3].relu_param.negative_slope == 0

    pp = net.layer[4].pooling_param
    assert (pp.pool, pp.kernel_size, pp.stride, pp.pad) == (
        caffe_pb2.PoolingParameter.MAX, 2, 2, 0)
    assert pp.round_mode == caffe_pb2.PoolingParameter.FLOOR

    lp = net.layer[5].lrn_param
    assert (lp.local_size, lp.alpha, lp.beta, lp.k) == (
        5, f32(0.0001), 0.75, 1.0)

    fc = net.layer[6]
    assert fc.inner_product_param.num_output == 10
    assert [r.phase for r in fc.include] == [caffe_pb2.TEST]

    # Text -> binary -> text is lossless.
    again = caffe_pb2.NetParameter.FromString(net.SerializeToString())
    assert again == net
    assert text_format.Parse(text_format.MessageToString(net),
                             caffe_pb2.NetParameter()) == net


def test_parse_input_layer_form():
    net = text_format.Parse('''
        layer { name: "data" type: "Input" top: "data"
                input_param { shape { dim: 10 dim: 3 dim: 227 dim: 227 } } }
        input_shape { dim: 1 dim: 3 }
    ''', caffe_pb2.NetParameter())
    assert list(net.layer[0].input_param.shape[0].dim) == [10, 3, 227, 227]
    assert list(net.input_shape[0].dim) == [1, 3]


V1_PROTOTXT = '''
name: "CaffeNet"
input: "data"
input_dim: 10
input_dim: 3
input_dim: 227
input_dim: 227
layers {
  name: "conv1"
  type: CONVOLUTION
  bottom: "data"
  top: "conv1"
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers {
  name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layers {
  name: "norm1" type: LRN bottom: "pool1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }
}
layers {
  name: "fc8" type: INNER_PRODUCT bottom: "norm1" top: "fc8"
  inner_product_param { num_output: 1000 }
}
layers { name: "prob" type: SOFTMAX bottom: "fc8" top: "prob" }
'''


def test_parse_v1_prototxt():
    net = text_format.Parse(V1_PROTOTXT, caffe_pb2.NetParameter())
    V1 = caffe_pb2.V1LayerParameter
    assert not net.layer
    assert [layer.type for layer in net.layers] == [
        V1.CONVOLUTION, V1.RELU, V1.POOLING, V1.LRN, V1.INNER_PRODUCT,
        V1.SOFTMAX]
    conv = net.layers[0]
    assert list(conv.blobs_lr) == [1, 2]
    assert list(conv.weight_decay) == [1, 0]
    assert conv.convolution_param.num_output == 96
    assert list(conv.convolution_param.kernel_size) == [11]
    assert list(conv.convolution_param.stride) == [4]
    assert net.layers[2].pooling_param.kernel_size == 3
    assert net.layers[4].inner_product_param.num_output == 1000

    raw = net.SerializeToString()
    # layers = 2, first layer's type = 5: CONVOLUTION.
    assert raw.startswith(b'\x0a\x08CaffeNet\x12')
    assert b'\x28\x04' in raw
    assert caffe_pb2.NetParameter.FromString(raw) == net


def test_text_format_rejects_non_bvlc_names():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('layers { type: CONVOLUTIONAL }',
                          caffe_pb2.NetParameter())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('layer { convolution_param { kernel: 3 } }',
                          caffe_pb2.NetParameter())


# ---------------------------------------------------------------------------
# (g) fields from newer / forked schemas survive a round trip
# ---------------------------------------------------------------------------

def test_unknown_fields_survive_round_trip():
    # A layer as a newer or forked schema may write it: known fields first
    # (ascending), then fields our schema does not know: 149 (a future
    # LayerParameter field), 300 (a made-up fork's message) and a varint.
    unknown_layer = (
        key(149, LEN) + b'\x02\x08\x01'
        + key(300, LEN) + b'\x00'
        + key(999, VARINT) + varint(12345)
    )
    layer_bytes = b'\x0a\x02l1\x12\x04Data' + unknown_layer
    net_bytes = (
        b'\x0a\x01n'
        + key(100, LEN) + varint(len(layer_bytes)) + layer_bytes
        + key(50, I32) + b'\x01\x02\x03\x04'      # unknown NetParameter field
    )
    net = caffe_pb2.NetParameter.FromString(net_bytes)
    assert net.name == 'n'
    assert net.layer[0].name == 'l1'
    assert net.layer[0].type == 'Data'
    assert net.SerializeToString() == net_bytes
    assert net.layer[0].SerializeToString() == layer_bytes

    # They really were kept as unknown fields.
    net.DiscardUnknownFields()
    assert net.SerializeToString() == (
        b'\x0a\x01n' + key(100, LEN) + b'\x0a\x0a\x02l1\x12\x04Data')


def test_unknown_enum_value_is_preserved():
    # A V1 type number BVLC never assigned (proto2 enums are closed: the value
    # goes to the unknown fields, the field reads as unset).
    raw = b'\x28\x63'  # type = 99
    layer = caffe_pb2.V1LayerParameter.FromString(raw)
    assert not layer.HasField('type')
    assert layer.SerializeToString() == raw


# ---------------------------------------------------------------------------
# (h) the committed module is what the generator produces
# ---------------------------------------------------------------------------

def _load_generator():
    spec = importlib.util.spec_from_file_location('gen_caffe_pb2', GEN_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_module_is_up_to_date():
    try:
        import grpc_tools.protoc  # noqa: F401
    except ImportError:
        pytest.skip('grpc_tools is not importable (pip install grpcio-tools) '
                    'so caffe_pb2.py cannot be regenerated to compare')
    proc = subprocess.run([sys.executable, GEN_TOOL, '--check'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


GUARD = (
    "from google.protobuf import runtime_version as _runtime_version\n"
    "X = 1\n"
    "_runtime_version.ValidateProtobufRuntimeVersion(\n"
    "    _runtime_version.Domain.PUBLIC,\n"
    "    7,\n"
    "    35,\n"
    "    1,\n"
    "    '',\n"
    "    'caffe.proto'\n"
    ")\n"
    "Y = 2\n"
)


def test_generator_removes_exactly_the_guard():
    gen = _load_generator()
    assert gen.strip_runtime_guard(GUARD) == 'X = 1\nY = 2\n'


@pytest.mark.parametrize('text', [
    'X = 1\n',                                       # no guard at all
    GUARD + GUARD,                                   # guard twice
    GUARD.replace("'caffe.proto'", "'other.proto'"),  # guard for another file
    GUARD.replace('Domain.PUBLIC', 'Domain.GOOGLE_INTERNAL'),
    GUARD + '_runtime_version.Other()\n',            # a leftover reference
])
def test_generator_fails_loudly_on_unexpected_protoc_output(text):
    gen = _load_generator()
    with pytest.raises(gen.GenerationError):
        gen.strip_runtime_guard(text)
