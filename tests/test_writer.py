"""The Caffe writer (chainer_finetune.caffe.writer) and the wire module.

What the writer writes must be what protobuf's own parser and the library's
reader read back, field for field, in both formats (V2 ``layer`` and V1
``layers``), with legacy 4-D blob dims where asked, for blobs streamed in
several chunks too; a net that cannot be written raises the library's error
naming the layer, and leaves no file.
"""

import os

import numpy as np
import pytest

import chainer_finetune  # noqa: F401  (before chainer)

from chainer_finetune.caffe import caffe_pb2  # noqa: E402
from chainer_finetune.caffe import reader  # noqa: E402
from chainer_finetune.caffe import wire  # noqa: E402
from chainer_finetune.caffe import zoo_shapes  # noqa: E402
from chainer_finetune.caffe.upgrade import V1_TYPE_NAMES  # noqa: E402
from chainer_finetune.caffe.writer import CHUNK_VALUES  # noqa: E402
from chainer_finetune.caffe.writer import NetWriter  # noqa: E402
from chainer_finetune.caffe.writer import RandomBlob  # noqa: E402
from chainer_finetune.caffe.writer import V1_TYPE_CODES  # noqa: E402
from chainer_finetune.caffe.writer import legacy_dims  # noqa: E402
from chainer_finetune.caffe.writer import write_binaryproto  # noqa: E402
from chainer_finetune.errors import CaffeModelError  # noqa: E402

# (version, legacy): V2 with shapes, V2 with legacy dims (Caffe 2014-2015),
# V1 (always legacy dims).
FORMATS = [(2, False), (2, True), (1, True)]


def small_net(input_form='input_dim'):
    """Conv (with lr/decay multipliers), ReLU, InnerProduct, a TRAIN-only
    loss with a loss weight: fields of every kind, V1-compatible."""
    rng = np.random.RandomState(0)
    w = NetWriter('small')
    w.input('data', (2, 3, 5, 5), form=input_form)
    if input_form != 'layer':
        w.input('label', (2, 1, 1, 1), form=input_form)
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            {'convolution_param': {'num_output': 4, 'kernel_size': 3,
                                   'pad': 1}},
            [rng.randn(4, 3, 3, 3), rng.randn(4)],
            param_specs=[{'lr_mult': 1, 'decay_mult': 1},
                         {'lr_mult': 2, 'decay_mult': 0}])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    w.layer('fc', 'InnerProduct', 'conv1', 'fc',
            {'inner_product_param': {'num_output': 3}},
            [rng.randn(3, 100), rng.randn(3)])
    w.layer('loss', 'SoftmaxWithLoss', ['fc', 'label'], 'loss',
            include={'phase': 'TRAIN'}, loss_weight=0.5)
    return w


def without_blobs(layer):
    copy = type(layer)()
    copy.CopyFrom(layer)
    del copy.blobs[:]
    return copy


# --------------------------------------------------------------------------
# The wire module
# --------------------------------------------------------------------------

@pytest.mark.parametrize('value', [0, 1, 127, 128, 300, 2 ** 31 - 1,
                                   2 ** 32, 2 ** 63 - 1, 2 ** 64 - 1])
def test_varint_round_trip(value):
    encoded = wire.encode_varint(value)
    assert len(encoded) == max(1, -(-value.bit_length() // 7))
    padded = b'\xff' + encoded + b'\x01'
    assert wire.decode_varint(padded, 1, len(padded)) == \
        (value, 1 + len(encoded))


def test_negative_varint_is_ten_bytes_of_twos_complement():
    encoded = wire.encode_varint(-2)
    assert len(encoded) == 10
    assert wire.decode_varint(encoded, 0, 10) == (2 ** 64 - 2, 10)


def test_decode_varint_errors():
    with pytest.raises(wire.WireFormatError) as info:
        wire.decode_varint(b'\x80\x80', 0, 2)
    assert info.value.truncated and info.value.offset == 2
    # Stopped by `end`, not by the buffer's length.
    with pytest.raises(wire.WireFormatError):
        wire.decode_varint(b'\x96\x01', 0, 1)
    with pytest.raises(wire.WireFormatError) as info:
        wire.decode_varint(b'\x80' * 11, 0, 11)
    assert not info.value.truncated and info.value.offset == 10
    assert isinstance(info.value, ValueError)


def test_field_numbers_are_the_schemas():
    def number(message, field):
        return message.DESCRIPTOR.fields_by_name[field].number

    assert (wire.NET_LAYER, wire.NET_LAYERS) == (100, 2)
    assert wire.NET_LAYER == number(caffe_pb2.NetParameter, 'layer')
    assert wire.LAYER_NAME == number(caffe_pb2.LayerParameter, 'name')
    assert wire.LAYER_BLOBS == number(caffe_pb2.LayerParameter, 'blobs')
    assert wire.V1_LAYER_NAME == number(caffe_pb2.V1LayerParameter, 'name')
    assert wire.V1_LAYER_BLOBS == number(caffe_pb2.V1LayerParameter,
                                         'blobs')
    assert wire.BLOB_LEGACY_DIMS == (1, 2, 3, 4)
    assert (wire.BLOB_DATA, wire.BLOB_SHAPE, wire.BLOB_DOUBLE_DATA) == \
        (5, 7, 8)


def test_len_field_is_what_protobuf_writes():
    shape = caffe_pb2.BlobShape(dim=[3, 300])
    blob = caffe_pb2.BlobProto()
    blob.shape.CopyFrom(shape)
    assert wire.len_field(wire.BLOB_SHAPE, shape.SerializeToString()) == \
        blob.SerializeToString()
    assert wire.field_key(wire.NET_LAYER, wire.LEN) == b'\xa2\x06'


# --------------------------------------------------------------------------
# V1 type codes
# --------------------------------------------------------------------------

# Caffe's UpgradeV1LayerType (src/caffe/util/upgrade_proto.cpp), transcribed
# on its own: the library keeps one table (upgrade.V1_TYPE_NAMES, which the
# writer inverts), and V1 files the writer makes test the upgrade, so the
# table is checked against this copy rather than against itself.
CAFFE_V1_TYPES = [
    ('ABSVAL', 'AbsVal'), ('ACCURACY', 'Accuracy'), ('ARGMAX', 'ArgMax'),
    ('BNLL', 'BNLL'), ('CONCAT', 'Concat'),
    ('CONTRASTIVE_LOSS', 'ContrastiveLoss'), ('CONVOLUTION', 'Convolution'),
    ('DECONVOLUTION', 'Deconvolution'), ('DATA', 'Data'),
    ('DROPOUT', 'Dropout'), ('DUMMY_DATA', 'DummyData'),
    ('EUCLIDEAN_LOSS', 'EuclideanLoss'), ('ELTWISE', 'Eltwise'),
    ('EXP', 'Exp'), ('FLATTEN', 'Flatten'), ('HDF5_DATA', 'HDF5Data'),
    ('HDF5_OUTPUT', 'HDF5Output'), ('HINGE_LOSS', 'HingeLoss'),
    ('IM2COL', 'Im2col'), ('IMAGE_DATA', 'ImageData'),
    ('INFOGAIN_LOSS', 'InfogainLoss'), ('INNER_PRODUCT', 'InnerProduct'),
    ('LRN', 'LRN'), ('MEMORY_DATA', 'MemoryData'),
    ('MULTINOMIAL_LOGISTIC_LOSS', 'MultinomialLogisticLoss'),
    ('MVN', 'MVN'), ('POOLING', 'Pooling'), ('POWER', 'Power'),
    ('RELU', 'ReLU'), ('SIGMOID', 'Sigmoid'),
    ('SIGMOID_CROSS_ENTROPY_LOSS', 'SigmoidCrossEntropyLoss'),
    ('SILENCE', 'Silence'), ('SOFTMAX', 'Softmax'),
    ('SOFTMAX_LOSS', 'SoftmaxWithLoss'), ('SPLIT', 'Split'),
    ('SLICE', 'Slice'), ('TANH', 'TanH'), ('WINDOW_DATA', 'WindowData'),
    ('THRESHOLD', 'Threshold'),
]


def test_v1_type_tables_are_caffes():
    assert V1_TYPE_NAMES == dict(CAFFE_V1_TYPES)
    assert V1_TYPE_CODES == {v2: v1 for v1, v2 in CAFFE_V1_TYPES}
    enum = caffe_pb2.V1LayerParameter.LayerType
    for v1, _ in CAFFE_V1_TYPES:
        enum.Value(v1)   # a name of the schema's enum


# --------------------------------------------------------------------------
# Read back field for field
# --------------------------------------------------------------------------

@pytest.mark.parametrize('version,legacy', FORMATS)
def test_protobuf_parses_what_was_written(tmp_path, version, legacy):
    w = small_net()
    path = str(tmp_path / 'net.caffemodel')
    size = w.write_caffemodel(path, version, legacy=legacy)
    data = open(path, 'rb').read()
    assert size == len(data)
    parsed = caffe_pb2.NetParameter()
    parsed.ParseFromString(data)
    assert parsed == w.net_parameter(version, legacy=legacy)
    layers = parsed.layer if version == 2 else parsed.layers
    assert not (parsed.layers if version == 2 else parsed.layer)
    assert [layer.name for layer in layers] == \
        ['conv1', 'relu1', 'fc', 'loss']
    conv = layers[0]
    for blob, expected in zip(conv.blobs, w.blob_arrays('conv1')):
        assert blob.HasField('num') == legacy
        assert blob.HasField('shape') != legacy
        dims = [blob.num, blob.channels, blob.height, blob.width] \
            if legacy else list(blob.shape.dim)
        assert dims == (list(legacy_dims(expected.shape)) if legacy
                        else list(expected.shape))
        np.testing.assert_array_equal(np.asarray(blob.data, np.float32),
                                      expected.ravel())
    if version == 1:
        assert conv.type == caffe_pb2.V1LayerParameter.CONVOLUTION
        assert (list(conv.blobs_lr), list(conv.weight_decay)) == \
            ([1, 2], [1, 0])
        assert list(parsed.input_dim) == [2, 3, 5, 5, 2, 1, 1, 1]
    else:
        assert conv.type == 'Convolution'
        assert [(p.lr_mult, p.decay_mult) for p in conv.param] == \
            [(1, 1), (2, 0)]
    assert layers[3].include[0].phase == caffe_pb2.TRAIN
    assert list(layers[3].loss_weight) == [0.5]


@pytest.mark.parametrize('version,legacy', FORMATS)
def test_reader_reads_what_was_written(tmp_path, version, legacy):
    w = small_net()
    path = str(tmp_path / 'net.caffemodel')
    w.write_caffemodel(path, version, legacy=legacy)
    model = reader.read_caffemodel(path)
    expected = w.net_parameter(version, legacy=legacy)
    assert model.version == version
    assert model.net.name == 'small'
    assert list(model.net.input) == ['data', 'label']
    expected_layers = expected.layer if version == 2 else expected.layers
    assert [r.param for r in model.layers] == \
        [without_blobs(layer) for layer in expected_layers]
    for record in model.layers:
        arrays = w.blob_arrays(record.param.name)
        assert len(record.blobs) == len(arrays)
        for blob, array in zip(record.blobs, arrays):
            assert blob.legacy == legacy
            assert blob.array.dtype == np.float32
            want = array.reshape(legacy_dims(array.shape)) if legacy \
                else array
            np.testing.assert_array_equal(blob.array, want)


@pytest.mark.parametrize('version', [2, 1])
def test_prototxt_read_back(tmp_path, version):
    w = small_net()
    path = str(tmp_path / 'net.prototxt')
    w.write_prototxt(path, version)
    parsed = reader.read_prototxt(path)
    assert parsed == w.net_parameter(version, with_blobs=False)
    assert ('layers {' in open(path).read()) == (version == 1)


def test_v2_input_layer_and_input_shape_forms(tmp_path):
    for form in ('layer', 'input_shape'):
        w = small_net(form)
        path = str(tmp_path / '{}.caffemodel'.format(form))
        w.write_caffemodel(path)
        model = reader.read_caffemodel(path)
        if form == 'layer':
            first = model.layers[0].param
            assert first.type == 'Input'
            assert list(first.input_param.shape[0].dim) == [2, 3, 5, 5]
        else:
            assert [list(s.dim) for s in model.net.input_shape] == \
                [[2, 3, 5, 5], [2, 1, 1, 1]]


# --------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------

@pytest.mark.parametrize('version,legacy', FORMATS)
def test_blobs_bigger_than_a_chunk(tmp_path, version, legacy):
    """A RandomBlob of three chunks and an array of more than one: the
    streamed bytes are protobuf's, and read back value for value."""
    n_in = CHUNK_VALUES // 4 + 3
    random_weight = RandomBlob((8, n_in), std=0.1, seed=(5, 1))
    array_weight = np.random.RandomState(2).standard_normal(
        (CHUNK_VALUES + 7,)).astype(np.float32)
    w = NetWriter('big')
    w.input('data', (1, n_in), form='input_shape')
    w.layer('fc', 'InnerProduct', 'data', 'fc',
            {'inner_product_param': {'num_output': 8}},
            [random_weight, np.zeros(8, np.float32)])
    w.layer('scale', 'Power', 'fc', 'fc')
    w.set_blobs('scale', [array_weight])
    assert len(list(random_weight.chunks())) == 3
    path = str(tmp_path / 'big.caffemodel')
    size = w.write_caffemodel(path, version, legacy=legacy)
    assert size == os.path.getsize(path)
    assert size > 4 * (random_weight.size + array_weight.size)
    data = open(path, 'rb').read()
    assert data == w.net_parameter(version, legacy=legacy) \
        .SerializeToString()
    model = reader.read_caffemodel(path)
    fc_weight, fc_bias = model.layers[0].blobs
    np.testing.assert_array_equal(fc_weight.array.reshape(8, n_in),
                                  random_weight.array())
    assert not fc_bias.array.any()
    np.testing.assert_array_equal(
        model.layers[1].blobs[0].array.reshape(-1), array_weight)


def test_array_blobs_are_copied_as_float32():
    values = np.arange(6, dtype=np.float64).reshape(2, 3)
    w = NetWriter()
    w.layer('fc', 'InnerProduct', 'data', 'fc', blobs=[values])
    values[0, 0] = 99
    stored, = w.blob_arrays('fc')
    assert stored.dtype == np.float32 and stored[0, 0] == 0


# --------------------------------------------------------------------------
# Errors name the layer and leave no file
# --------------------------------------------------------------------------

def test_v1_without_a_v1_code_names_the_layer(tmp_path):
    w = small_net()
    w.layer('bn', 'BatchNorm', 'conv1', 'conv1')
    path = str(tmp_path / 'v1.caffemodel')
    with pytest.raises(CaffeModelError, match="layer 'bn'.*BatchNorm"):
        w.write_caffemodel(path, 1)
    assert not os.path.exists(path)
    with pytest.raises(CaffeModelError, match="'bn'"):
        w.write_prototxt(str(tmp_path / 'v1.prototxt'), 1)


def test_legacy_dims_of_a_5d_blob_name_the_layer(tmp_path):
    w = NetWriter()
    w.input('data', (1, 2, 3, 4, 5), form='input_shape')
    w.layer('conv3d', 'Convolution', 'data', 'out',
            blobs=[np.zeros((1, 2, 1, 1, 1), np.float32)])
    path = str(tmp_path / 'legacy.caffemodel')
    with pytest.raises(CaffeModelError,
                       match="layer 'conv3d' blob 0: a 5-D blob"):
        w.write_caffemodel(path, 2, legacy=True)
    assert not os.path.exists(path)
    w.write_caffemodel(path, 2)          # a V2 shape has no such limit
    assert reader.read_caffemodel(path).layers[0].blobs[0].array.shape == \
        (1, 2, 1, 1, 1)


class _FailingBlob(RandomBlob):
    """Fails after its first chunk, as a write on a full disk would."""

    def chunks(self):
        yield next(super().chunks())
        raise OSError(28, 'No space left on device')


def test_a_failing_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    w = small_net()
    w.layer('big', 'InnerProduct', 'fc', 'big',
            blobs=[_FailingBlob((3, CHUNK_VALUES + 1))])
    path = tmp_path / 'net.caffemodel'
    with pytest.raises(OSError, match='No space left'):
        w.write_caffemodel(str(path))
    assert os.listdir(str(tmp_path)) == []      # no partial, no temporary
    small_net().write_caffemodel(str(path))
    old = path.read_bytes()
    with pytest.raises(OSError, match='No space left'):
        w.write_caffemodel(str(path))
    assert os.listdir(str(tmp_path)) == ['net.caffemodel']
    assert path.read_bytes() == old
    w.remove_layer('big')                       # the API overwrites
    w.write_caffemodel(str(path), 1)
    assert reader.read_caffemodel(str(path)).version == 1


def test_unknown_parameter_field_names_the_layer():
    w = NetWriter()
    with pytest.raises(CaffeModelError,
                       match="layer 'c'.*ConvolutionParameter has no field "
                             "'kernel'"):
        w.layer('c', 'Convolution', 'x', 'y',
                {'convolution_param': {'kernel': 3}})
    assert not w.layers


def test_duplicate_layer_name():
    w = small_net()
    with pytest.raises(CaffeModelError, match="two layers named 'fc'"):
        w.layer('fc', 'ReLU', 'fc', 'fc')


def test_bad_version_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match='version must be 1 or 2'):
        small_net().write_caffemodel(str(tmp_path / 'x.caffemodel'), 3)


# --------------------------------------------------------------------------
# binaryproto and the reference architectures
# --------------------------------------------------------------------------

@pytest.mark.parametrize('legacy', [True, False])
def test_binaryproto_read_back(tmp_path, legacy):
    mean = np.random.RandomState(0).uniform(0, 255, (3, 4, 5))
    path = str(tmp_path / 'mean.binaryproto')
    write_binaryproto(path, mean, legacy=legacy)
    blob = reader.read_binaryproto(path)
    assert blob.legacy == legacy
    expected = mean.astype(np.float32)
    np.testing.assert_array_equal(
        blob.array, expected[None] if legacy else expected)


def test_narrow_vgg16_keeps_depth_and_names():
    full = zoo_shapes.vgg16_writer()
    narrow = zoo_shapes.vgg16_writer(width=0.5, fc_size=512)
    assert [layer.name for layer in narrow.layers] == \
        [layer.name for layer in full.layers]
    assert [tuple(b.shape) for b in narrow.blobs('conv1_1')] == \
        [(32, 3, 3, 3), (32,)]
    assert [tuple(b.shape) for b in narrow.blobs('fc6')] == \
        [(512, 256 * 7 * 7), (512,)]
    assert [tuple(b.shape) for b in narrow.blobs('fc8')] == \
        [(1000, 512), (1000,)]
    # As many weights as the --quick model of benchmarks/load.py had when
    # it wrote its own file.
    assert narrow.n_params() == 10878856
