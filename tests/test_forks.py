"""Model files written by Caffe's forks: their extra fields and blob forms.

* FP16 weights: NVIDIA Caffe's ``BlobProto.raw_data`` with
  ``raw_data_type`` (FLOAT16, FLOAT, DOUBLE), read as OpenCV reads them.
"""

import numpy
import pytest

import chainer_finetune
from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe import reader
from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.errors import CaffeModelError

_rs = numpy.random.RandomState(10)


def _w(*shape, scale=0.5):
    return (_rs.standard_normal(shape) * scale).astype(numpy.float32)


# Weights with values float16 cannot hold exactly (and one past its range
# of normal numbers), so rounding shows.
CONV_W = _w(6, 3, 3, 3)
CONV_B = numpy.array([0.1, -0.2, 1e-6, 3.14159, -2.5, 100.3], numpy.float32)
FC_W = _w(5, 6 * 4 * 4, scale=0.1)
FC_B = _w(5)


def small_writer(version=2):
    """Convolution -> ReLU -> Pooling -> InnerProduct on (2, 3, 8, 8)."""
    w = NetWriter('fp16')
    w.input('data', (2, 3, 8, 8), form='layer' if version == 2 else
            'input_dim')
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 6, 'kernel_size': 3,
                                          'pad': 1}},
            blobs=[CONV_W, CONV_B])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1')
    w.layer('pool1', 'Pooling', 'conv1', 'pool1',
            params={'pooling_param': {'pool': 'MAX', 'kernel_size': 2,
                                      'stride': 2}})
    w.layer('fc', 'InnerProduct', 'pool1', 'fc',
            params={'inner_product_param': {'num_output': 5}},
            blobs=[FC_W, FC_B])
    return w


def write_small(tmp_path, raw_data_type, version=2):
    w = small_writer(version)
    model = tmp_path / 'net.caffemodel'
    prototxt = tmp_path / 'net.prototxt'
    w.write_caffemodel(model, version, raw_data_type=raw_data_type)
    w.write_prototxt(prototxt, version)
    return w, str(model), str(prototxt)


def rounded(array, raw_data_type):
    """The float32 values a blob of ``raw_data_type`` holds."""
    if raw_data_type == 'FLOAT16':
        return array.astype(numpy.float16).astype(numpy.float32)
    return array


# --------------------------------------------------------------------------
# FP16 / raw float weights
# --------------------------------------------------------------------------

@pytest.mark.parametrize('raw_data_type', ['FLOAT16', 'FLOAT', 'DOUBLE'])
@pytest.mark.parametrize('version', [2, 1])
def test_raw_data_blobs_load(tmp_path, raw_data_type, version):
    _, model, prototxt = write_small(tmp_path, raw_data_type, version)
    net = chainer_finetune.load_caffe(model, prototxt)
    for link, (w, b) in (('conv1', (CONV_W, CONV_B)), ('fc', (FC_W, FC_B))):
        numpy.testing.assert_array_equal(
            net[link].W.array, rounded(w, raw_data_type))
        numpy.testing.assert_array_equal(
            net[link].b.array, rounded(b, raw_data_type))
    if raw_data_type == 'FLOAT16':
        assert not numpy.array_equal(net['conv1'].b.array, CONV_B)


@pytest.mark.parametrize('raw_data_type', ['FLOAT16', 'FLOAT', 'DOUBLE'])
def test_writer_raw_data_is_protobufs_serialization(tmp_path,
                                                    raw_data_type):
    w, model, _ = write_small(tmp_path, raw_data_type)
    with open(model, 'rb') as f:
        raw = f.read()
    net = w.net_parameter(raw_data_type=raw_data_type)
    assert raw == net.SerializeToString()
    blob = caffe_pb2.NetParameter.FromString(raw).layer[1].blobs[0]
    assert not len(blob.data) and not len(blob.double_data)
    assert blob.raw_data_type == caffe_pb2.Type.Value(raw_data_type)
    itemsize = {'FLOAT16': 2, 'FLOAT': 4, 'DOUBLE': 8}[raw_data_type]
    assert len(blob.raw_data) == CONV_W.size * itemsize
    assert list(blob.shape.dim) == list(CONV_W.shape)
    # The message path (protobuf-parsed blobs) reads the same values.
    numpy.testing.assert_array_equal(
        reader.blob_from_proto(blob, 'x').array,
        rounded(CONV_W, raw_data_type))


def test_fp16_halves_are_little_endian(tmp_path):
    w = NetWriter('one')
    w.input('data', (1, 1))
    w.layer('s', 'Scale', 'data', 's',
            blobs=[numpy.array([1.0, -2.0, 65504.0], numpy.float32)])
    blob = w.net_parameter(raw_data_type='FLOAT16').layer[1].blobs[0]
    assert blob.raw_data == b'\x00\x3c\x00\xc0\xff\x7b'


def test_writer_rejects_unknown_raw_data_type(tmp_path):
    with pytest.raises(ValueError, match='FLOAT16'):
        small_writer().write_caffemodel(tmp_path / 'x.caffemodel',
                                        raw_data_type='INT')
    with pytest.raises(ValueError, match='HALF'):
        small_writer().net_parameter(raw_data_type='HALF')


def test_fp16_net_matches_opencv(tmp_path):
    cv2 = pytest.importorskip('cv2')  # noqa: F841
    from chainer_finetune.caffe import verify
    _, model, prototxt = write_small(tmp_path, 'FLOAT16')
    rows = verify.compare_with_opencv(model, prototxt, seed=4)
    assert [(r.layer, r.blob) for r in rows] == [
        ('conv1', 'conv1'), ('relu1', 'conv1'), ('pool1', 'pool1'),
        ('fc', 'fc')]
    assert all(r.compared for r in rows)
    bad = [r for r in rows if not r.rel_l2 < 1e-5]
    assert not bad, verify.format_comparison(rows, 1e-5)


def _write_net(tmp_path, net):
    path = tmp_path / 'bad.caffemodel'
    path.write_bytes(net.SerializeToString())
    return str(path)


def _fp16_net():
    return small_writer().net_parameter(raw_data_type='FLOAT16')


@pytest.mark.parametrize('cut, fragments', [
    (2, ['holds 162 values but the file stores 161']),
    (1, ['raw_data of 323 bytes', 'whole number of 2-byte values']),
])
def test_raw_data_length_mismatch(tmp_path, cut, fragments):
    net = _fp16_net()
    blob = net.layer[1].blobs[0]
    blob.raw_data = blob.raw_data[:-cut]
    path = _write_net(tmp_path, net)
    for read in (reader.read_caffemodel,
                 lambda p: chainer_finetune.load_caffe(p)):
        with pytest.raises(CaffeModelError) as e:
            read(path)
        for fragment in [path, "layer 1 ('conv1'), blob 0"] + fragments:
            assert fragment in str(e.value)


def test_raw_data_of_integer_type_is_an_error(tmp_path):
    net = _fp16_net()
    net.layer[4].blobs[1].raw_data_type = caffe_pb2.INT
    path = _write_net(tmp_path, net)
    with pytest.raises(CaffeModelError) as e:
        reader.read_caffemodel(path)
    for fragment in (path, "layer 4 ('fc'), blob 1", 'type INT'):
        assert fragment in str(e.value)


def test_data_wins_over_raw_data(tmp_path):
    # OpenCV reads `data` when it holds values, raw_data only otherwise.
    net = _fp16_net()
    blob = net.layer[4].blobs[1]
    blob.data.extend([7.0] * 5)
    path = _write_net(tmp_path, net)
    numpy.testing.assert_array_equal(
        reader.read_caffemodel(path).layers[4].blobs[1].array, [7.0] * 5)


def test_binaryproto_with_raw_data(tmp_path):
    blob = caffe_pb2.BlobProto(raw_data_type=caffe_pb2.FLOAT16,
                               raw_data=numpy.array([0.5, 3], '<f2').tobytes())
    blob.shape.dim.extend([2])
    path = tmp_path / 'mean.binaryproto'
    path.write_bytes(blob.SerializeToString())
    numpy.testing.assert_array_equal(reader.read_binaryproto(path).array,
                                     [0.5, 3.0])


# --------------------------------------------------------------------------
# Fields the schema lacks: skipped, one warning per field and layer
# --------------------------------------------------------------------------

def _warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelname == 'WARNING' and r.name.startswith(
                'chainer_finetune')]


FORKED_PROTOTXT = '''name: "forked"
made_up_net_option: true
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1
                      future_option: 7 }
  made_up_param { level: 2 nested { name: "x" 'y' values: [1, -2.5] }
                  mode: FAST }
  made_up_param { level: 3 }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1"
  made_up_param { level: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 5 } }
'''


def test_prototxt_unknown_fields_are_skipped_with_one_warning_each(
        tmp_path, caplog):
    _, model, _ = write_small(tmp_path, None)
    prototxt = tmp_path / 'forked.prototxt'
    prototxt.write_text(FORKED_PROTOTXT)
    net = chainer_finetune.load_caffe(model, str(prototxt))
    p = str(prototxt)
    assert _warnings(caplog) == [
        "{}: net: unknown field 'made_up_net_option' skipped "
        "(line 2:1)".format(p),
        "{}: layer 'conv1' (Convolution): unknown field "
        "'convolution_param.future_option' skipped (line 7:23)".format(p),
        "{}: layer 'conv1' (Convolution): unknown field 'made_up_param' "
        "skipped (line 8:3)".format(p),
        "{}: layer 'relu1' (ReLU): unknown field 'made_up_param' skipped "
        "(line 13:3)".format(p),
    ]
    # The known fields around them were read.
    conv = net.caffe_layers[1]
    assert conv.convolution_param.num_output == 6
    assert list(conv.convolution_param.pad) == [1]
    x = numpy.ones((2, 3, 8, 8), numpy.float32)
    y, = net(inputs={'data': x}, outputs=['fc'])
    assert y.shape == (2, 5)


def test_prototxt_real_syntax_errors_still_fail(tmp_path):
    prototxt = tmp_path / 'broken.prototxt'
    prototxt.write_text(FORKED_PROTOTXT.replace('level: 3 }', 'level: 3 '))
    with pytest.raises(CaffeModelError, match='not a valid Caffe prototxt'):
        reader.read_prototxt(prototxt)


def _key(number, wire_type):
    from chainer_finetune.caffe.wire import field_key
    return field_key(number, wire_type)


def _with_unknown(msg, extra):
    """``msg`` parsed back with the bytes of unknown fields appended."""
    return type(msg).FromString(msg.SerializeToString() + extra)


def test_caffemodel_unknown_fields_are_kept_and_warned_once(tmp_path,
                                                            caplog):
    from chainer_finetune.caffe.wire import (FIXED32, LEN, VARINT,
                                             encode_varint)
    net = small_writer().net_parameter()
    made_up_message = _key(1, VARINT) + b'\x02' + _key(2, LEN) + b'\x01z'
    layer_extra = (_key(300, LEN) + encode_varint(len(made_up_message)) +
                   made_up_message + _key(301, VARINT) + encode_varint(7) +
                   _key(300, LEN) + b'\x00')   # field 300 twice: one warning
    conv = net.layer[1]
    conv.convolution_param.CopyFrom(_with_unknown(
        conv.convolution_param, _key(99, FIXED32) + b'\x00\x00\x80\x3f'))
    conv.CopyFrom(_with_unknown(conv, layer_extra))
    relu = net.layer[2]
    relu.CopyFrom(_with_unknown(relu, _key(300, LEN) + b'\x00'))
    path = tmp_path / 'forked.caffemodel'
    path.write_bytes(_with_unknown(net, _key(77, VARINT) + b'\x01')
                     .SerializeToString())
    loaded = chainer_finetune.load_caffe(str(path))
    p = str(path)
    assert _warnings(caplog) == [
        "{}: net: unknown field '77' skipped".format(p),
        "{}: layer 'conv1' (Convolution): unknown field '300' "
        "skipped".format(p),
        "{}: layer 'conv1' (Convolution): unknown field '301' "
        "skipped".format(p),
        "{}: layer 'conv1' (Convolution): unknown field "
        "'convolution_param.99' skipped".format(p),
        "{}: layer 'relu1' (ReLU): unknown field '300' skipped".format(p),
    ]
    numpy.testing.assert_array_equal(loaded['conv1'].W.array, CONV_W)
    x = numpy.ones((2, 3, 8, 8), numpy.float32)
    y, = loaded(inputs={'data': x}, outputs=['fc'])
    assert y.shape == (2, 5)


# --------------------------------------------------------------------------
# Layer types the library cannot build: an error only when needed
# --------------------------------------------------------------------------

MADE_UP_TYPES_PROTOTXT = FORKED_PROTOTXT + '''
layer { name: "boxes" type: "FancyBoxes" bottom: "fc" bottom: "data"
  top: "boxes"
  fancy_boxes_param { anchors: [1, 2, 3] clip { low: 0 high: 1 } } }
layer { name: "relu_boxes" type: "ReLU" bottom: "boxes" top: "boxes" }
layer { name: "nms" type: "MadeUpNMS" bottom: "boxes" top: "detections"
  nms_thing_param { threshold: 0.45 } }
'''


def test_unsupported_types_are_listed_at_once_and_stop_at_avoids_them(
        tmp_path):
    _, model, _ = write_small(tmp_path, None)
    prototxt = tmp_path / 'made_up.prototxt'
    prototxt.write_text(MADE_UP_TYPES_PROTOTXT)
    parsed = reader.read_prototxt(prototxt)
    assert [layer.type for layer in parsed.layer][-3:] == [
        'FancyBoxes', 'ReLU', 'MadeUpNMS']
    with pytest.raises(chainer_finetune.UnsupportedLayerError) as e:
        chainer_finetune.load_caffe(model, str(prototxt))
    message = str(e.value)
    for fragment in (str(prototxt), '2 layers are of a type that is not '
                     'supported', "layer 'boxes' (type 'FancyBoxes')",
                     "layer 'nms' (type 'MadeUpNMS')", 'supported types: ',
                     'Convolution', 'stop_at='):
        assert fragment in message, (fragment, message)
    for stop_at in ('fc', ['fc'], 'pool1'):
        net = chainer_finetune.load_caffe(model, str(prototxt),
                                          stop_at=stop_at)
        assert 'FancyBoxes' not in [layer.type for layer in net.caffe_layers]
    net = chainer_finetune.load_caffe(model, str(prototxt), stop_at='fc')
    x = numpy.ones((2, 3, 8, 8), numpy.float32)
    y, = net(inputs={'data': x}, outputs=['fc'])
    assert y.shape == (2, 5)
    # Needing the layer after the first unsupported one names that one.
    with pytest.raises(chainer_finetune.UnsupportedLayerError) as e:
        chainer_finetune.load_caffe(model, str(prototxt),
                                    stop_at='relu_boxes')
    assert "1 layer is of a type that is not supported: layer 'boxes' " \
           "(type 'FancyBoxes')" in str(e.value)
    assert 'MadeUpNMS' not in str(e.value)
