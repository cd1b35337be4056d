"""Issue 11, the reader's part: hostile files fail fast with one clear
CaffeModelError, and the reader follows Caffe where the suite let bugs
through (double_data, blobs with both data and double_data, legacy dims).
"""

import chainer_finetune  # noqa: F401  (before chainer)

import os
import threading

import numpy
import pytest

from chainer_finetune import CaffeModelError
from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe import reader
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.caffe.loader import load_mean
from chainer_finetune.caffe.wire import encode_varint as varint
from chainer_finetune.caffe.wire import field_key

needs_fifo = pytest.mark.skipif(not hasattr(os, 'mkfifo'),
                                reason='no named pipes here')


def error_of(call, timeout=10.0):
    """The CaffeModelError ``call()`` raises, failing if it blocks.

    A call blocked in opening a FIFO is released by opening the FIFO's
    other end, so a regression fails the test instead of hanging it.
    """
    outcome = {}

    def run():
        try:
            call()
        except BaseException as e:   # reported by the main thread
            outcome['error'] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    blocked = thread.is_alive()
    if blocked:
        for fifo in error_of.fifos:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        thread.join(timeout)
    assert not blocked, 'blocked for over {} s'.format(timeout)
    error = outcome.get('error')
    assert isinstance(error, CaffeModelError), repr(error)
    return str(error)


error_of.fifos = []


@pytest.fixture
def fifo(tmp_path):
    path = str(tmp_path / 'pipe')
    os.mkfifo(path)
    error_of.fifos.append(path)
    yield path
    error_of.fifos.remove(path)


# --------------------------------------------------------------------------
# (5) Only regular files are opened
# --------------------------------------------------------------------------

@needs_fifo
@pytest.mark.parametrize('call', [
    lambda p: load_caffe(p),
    lambda p: reader.read_caffemodel(p),
    lambda p: reader.read_prototxt(p),
    lambda p: load_mean(p),
    lambda p: reader.read_binaryproto(p),
], ids=['load_caffe', 'caffemodel', 'prototxt', 'load_mean', 'binaryproto'])
def test_fifo_is_refused_at_once(fifo, call):
    message = error_of(lambda: call(fifo))
    assert fifo in message and 'named pipe (FIFO)' in message
    assert 'not a regular file' in message


@needs_fifo
def test_fifo_as_prototxt_of_a_load(fifo, tmp_path):
    model = tmp_path / 'm.caffemodel'
    model.write_bytes(b'\x08\x01')
    message = error_of(lambda: load_caffe(str(model), prototxt=fifo))
    assert fifo in message and 'text prototxt' in message


def test_directory_says_what_it_is(tmp_path):
    message = error_of(lambda: reader.read_caffemodel(str(tmp_path)))
    assert str(tmp_path) in message
    assert 'cannot open' in message
    if os.name == 'posix':
        assert 'it is a directory' in message


@pytest.mark.skipif(not os.path.exists('/dev/zero'), reason='no /dev/zero')
def test_character_device_is_refused():
    # /dev/zero would otherwise be read without end.
    message = error_of(lambda: reader.read_prototxt('/dev/zero'))
    assert '/dev/zero' in message and 'a character device' in message


@pytest.mark.skipif(not os.path.exists('/proc/self/status'),
                    reason='no /proc')
@pytest.mark.parametrize('read', [reader.read_caffemodel,
                                  reader.read_prototxt,
                                  reader.read_binaryproto])
def test_proc_file_is_not_called_empty(read):
    message = error_of(lambda: read('/proc/self/status'))
    assert '/proc/self/status' in message
    assert 'virtual file' in message and 'empty file' not in message


def test_empty_file_is_still_called_empty(tmp_path):
    path = tmp_path / 'empty.caffemodel'
    path.write_bytes(b'')
    message = error_of(lambda: reader.read_caffemodel(str(path)))
    assert 'empty file' in message


# --------------------------------------------------------------------------
# (10) A bottom blob that no layer produces is refused, as Caffe does
# --------------------------------------------------------------------------

def write_prototxt(tmp_path, text, name='net.prototxt'):
    path = tmp_path / name
    path.write_text('input: "data"\ninput_dim: 1 input_dim: 3 '
                    'input_dim: 4 input_dim: 4\n' + text)
    return str(path)


def no_weights_model(tmp_path):
    """A caffemodel with one weightless layer (the prototxt gives the
    structure; these nets need no weights)."""
    net = caffe_pb2.NetParameter(name='w')
    net.layer.add(name='unused', type='ReLU')
    path = tmp_path / 'w.caffemodel'
    path.write_bytes(net.SerializeToString())
    return str(path)


@pytest.mark.parametrize('layers, layer, blob', [
    # a typo
    ('layer { name: "r" type: "ReLU" bottom: "dta" top: "r" }',
     "'r' (ReLU)", "'dta'"),
    # a cycle: a uses b's top before b runs
    ('layer { name: "a" type: "ReLU" bottom: "y" top: "x" }\n'
     'layer { name: "b" type: "ReLU" bottom: "x" top: "y" }',
     "'a' (ReLU)", "'y'"),
    # a self-loop on a blob nothing produced
    ('layer { name: "s" type: "ReLU" bottom: "loop" top: "loop" }',
     "'s' (ReLU)", "'loop'"),
    # the second bottom of a two-input layer
    ('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "dat" '
     'top: "e" }', "'e' (Eltwise)", "'dat'"),
], ids=['typo', 'cycle', 'self-loop', 'second-bottom'])
def test_unknown_bottom_blob_is_refused(tmp_path, layers, layer, blob):
    prototxt = write_prototxt(tmp_path, layers)
    with pytest.raises(CaffeModelError) as info:
        load_caffe(no_weights_model(tmp_path), prototxt)
    message = str(info.value)
    assert prototxt in message and layer in message and blob in message
    assert 'unknown bottom blob' in message


def test_produced_bottoms_still_load(tmp_path):
    # In-place layers, inputs, and a data layer's top are produced blobs.
    prototxt = write_prototxt(tmp_path, (
        'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n'
        'layer { name: "d" type: "DummyData" top: "extra" }\n'
        'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "extra" '
        'top: "e" }'))
    net = load_caffe(no_weights_model(tmp_path), prototxt)
    assert list(net.inputs) == ['data', 'extra']


def test_top_of_a_phase_filtered_layer_becomes_an_input(tmp_path):
    # A training net's TRAIN-only data layer: documented in loading.rst.
    path = tmp_path / 'net.prototxt'
    path.write_text(
        'layer { name: "d" type: "Data" top: "data" '
        'include { phase: TRAIN } }\n'
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    net = load_caffe(no_weights_model(tmp_path), str(path))
    assert net.inputs == {'data': None}


# --------------------------------------------------------------------------
# Lesser: the stored V1 type code is reported
# --------------------------------------------------------------------------

def test_v1_unknown_type_code_is_the_stored_one(tmp_path):
    # Protobuf keeps an enum value the schema lacks as an unknown field
    # and reads the field as NONE (0); the message must say 99.
    net = caffe_pb2.NetParameter()
    net.input.append('data')
    net.input_dim.extend([1, 1, 2, 2])
    layer = caffe_pb2.V1LayerParameter(name='mystery')
    layer.bottom.append('data')
    layer.top.append('out')
    # `type: 99` (field 5, varint), which the schema cannot hold.
    layer_bytes = layer.SerializeToString() + field_key(5, 0) + varint(99)
    path = tmp_path / 'v1.caffemodel'
    path.write_bytes(net.SerializeToString() + field_key(2, 2) +
                     varint(len(layer_bytes)) + layer_bytes)
    with pytest.raises(CaffeModelError) as info:
        load_caffe(str(path))
    message = str(info.value)
    assert str(path) in message and "'mystery'" in message
    assert 'unknown type code 99' in message


def test_phase_filtered_input_survives_save_weights(tmp_path):
    # save_weights keeps the structure; reading it back must declare the
    # input that the dropped data layer produced.
    from chainer_finetune import save_weights
    path = tmp_path / 'net.prototxt'
    path.write_text(
        'layer { name: "d" type: "Data" top: "data" top: "label" '
        'include { phase: TRAIN } }\n'
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
        'layer { name: "l" type: "SoftmaxWithLoss" bottom: "r" '
        'bottom: "label" top: "loss" }\n')
    net = load_caffe(no_weights_model(tmp_path), str(path))
    saved = str(tmp_path / 'w.npz')
    save_weights(net, saved)
    again = load_caffe(weights=saved)
    assert again.inputs == net.inputs == {'data': None, 'label': None}
    assert again.layers == net.layers


# --------------------------------------------------------------------------
# Lesser: a prototxt in another text encoding is called what it is
# --------------------------------------------------------------------------

PROTOTXT = ('name: "caf\u00e9"\ninput: "data"\n'
            'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')


@pytest.mark.parametrize('encoding, expected', [
    ('latin-1', ['8-bit encoding such as Latin-1', 'byte 0xe9 at offset 10']),
    ('utf-16', ['UTF-16 text', 'byte order mark']),
    ('utf-16-le', ['UTF-16 text (LE without a byte order mark)']),
    ('utf-16-be', ['UTF-16 text (BE without a byte order mark)']),
    ('utf-32', ['UTF-32 text']),
])
def test_prototxt_in_another_encoding(tmp_path, encoding, expected):
    path = tmp_path / 'deploy.prototxt'
    path.write_bytes(PROTOTXT.encode(encoding))
    with pytest.raises(CaffeModelError) as info:
        reader.read_prototxt(str(path))
    message = str(info.value)
    assert str(path) in message and 'not UTF-8 text' in message
    assert 'binary' not in message and 'caffemodel' not in message
    for part in expected:
        assert part in message


def test_caffemodel_as_prototxt_is_still_called_binary(tmp_path):
    net = caffe_pb2.NetParameter(name='n')
    layer = net.layer.add(name='ip', type='InnerProduct')
    layer.blobs.add().data.extend(
        numpy.random.RandomState(0).randn(300).astype(numpy.float32))
    path = tmp_path / 'model.caffemodel'
    path.write_bytes(net.SerializeToString())
    with pytest.raises(CaffeModelError, match='binary file'):
        reader.read_prototxt(str(path))


# --------------------------------------------------------------------------
# Blob values as Caffe reads them (tests that let bugs through)
# --------------------------------------------------------------------------

def model_with_blob(tmp_path, blob, name='b.caffemodel'):
    net = caffe_pb2.NetParameter(name='n')
    layer = net.layer.add(name='ip', type='InnerProduct')
    layer.blobs.add().CopyFrom(blob)
    path = tmp_path / name
    path.write_bytes(net.SerializeToString())
    return str(path)


def mean_with_blob(tmp_path, blob):
    path = tmp_path / 'mean.binaryproto'
    path.write_bytes(blob.SerializeToString())
    return str(path)


def read_both_ways(tmp_path, blob):
    """The blob as the caffemodel scanner and as the binaryproto (protobuf)
    path read it."""
    scanned = reader.read_caffemodel(model_with_blob(tmp_path, blob))
    parsed = reader.read_binaryproto(mean_with_blob(tmp_path, blob))
    return scanned.layers[0].blobs[0], parsed


# Values whose float32 rounding and byte order are both visible.
VALUES = numpy.array([1.5, -2.25, 1e-3, 3.0e7, 0.1, -7.0])


def test_double_data_values_are_read(tmp_path):
    # Exact float32 values: a wrong byte order or width fails here.
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.double_data.extend(VALUES)
    for got in read_both_ways(tmp_path, blob):
        assert got.array.dtype == numpy.float32
        numpy.testing.assert_array_equal(
            got.array, VALUES.astype(numpy.float32).reshape(2, 3))


def test_double_data_wins_over_data(tmp_path):
    # Caffe's Blob::FromProto: `if (proto.double_data_size() > 0)` takes
    # double_data, else data.
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([9.0] * 6)
    blob.double_data.extend(VALUES)
    for got in read_both_ways(tmp_path, blob):
        numpy.testing.assert_array_equal(
            got.array, VALUES.astype(numpy.float32).reshape(2, 3))


def test_data_is_read_when_double_data_is_empty(tmp_path):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([6])
    blob.data.extend(VALUES)
    for got in read_both_ways(tmp_path, blob):
        numpy.testing.assert_array_equal(got.array,
                                         VALUES.astype(numpy.float32))


def test_legacy_blob_missing_dims_are_zero(tmp_path):
    # Caffe: num/channels/height/width default to 0, so a legacy blob that
    # sets only some of them holds no values; 6 stored values mismatch.
    blob = caffe_pb2.BlobProto(num=2, channels=3)
    blob.data.extend(VALUES)
    with pytest.raises(CaffeModelError, match=r'\(2, 3, 0, 0\)'):
        reader.read_caffemodel(model_with_blob(tmp_path, blob))
    with pytest.raises(CaffeModelError, match=r'\(2, 3, 0, 0\)'):
        reader.read_binaryproto(mean_with_blob(tmp_path, blob))


def test_legacy_blob_with_all_dims(tmp_path):
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=1)
    blob.data.extend(VALUES)
    for got in read_both_ways(tmp_path, blob):
        assert got.legacy and got.array.shape == (1, 2, 3, 1)


# --------------------------------------------------------------------------
# Lesser: NaN and infinite weights load, with a warning naming the blob
# --------------------------------------------------------------------------

def test_not_finite_weights_warn(tmp_path, caplog):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([4])
    blob.data.extend([1.0, float('nan'), float('inf'), float('-inf')])
    path = model_with_blob(tmp_path, blob, 'nan.caffemodel')
    with caplog.at_level('WARNING', logger='chainer_finetune'):
        read = reader.read_caffemodel(path)
    assert numpy.isnan(read.layers[0].blobs[0].array[1])
    [record] = [r for r in caplog.records if 'NaN' in r.getMessage()]
    message = record.getMessage()
    assert path in message and "'ip'" in message and 'blob 0' in message
    assert '1 NaN and 2 infinite values of 4' in message


def test_finite_weights_do_not_warn(tmp_path, caplog):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([6])
    blob.data.extend(VALUES)
    with caplog.at_level('WARNING', logger='chainer_finetune'):
        reader.read_caffemodel(model_with_blob(tmp_path, blob))
    assert not caplog.records
