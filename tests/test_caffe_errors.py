"""Bad input must end in CaffeModelError (or UnsupportedLayerError).

Every case here feeds the loader something broken (missing, empty,
truncated, random, mislabelled, hostile or inconsistent files and layer
descriptions) and checks that the error is one of the library's, and that
its message names the file, the layer where one is involved, and what was
expected. No protobuf, NumPy, KeyError, IndexError, ZeroDivisionError... may
escape, and hostile length fields must not make the reader allocate more
than the file holds.
"""

import chainer_finetune  # noqa: F401  (before chainer)

import os
import struct
import subprocess
import sys
import textwrap

import numpy
import pytest
from google.protobuf import text_format

from chainer_finetune import CaffeModelError
from chainer_finetune import UnsupportedLayerError
from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe import reader
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.caffe.loader import load_mean
from chainer_finetune.caffe.wire import encode_varint as varint
from chainer_finetune.caffe.wire import field_key as tag
from chainer_finetune.caffe.wire import len_field


# --------------------------------------------------------------------------
# Building test files
# --------------------------------------------------------------------------

def small_net(seed=0):
    """Input -> Convolution -> ReLU -> Pooling -> LRN -> InnerProduct ->
    Softmax, V2, with random weights (about 1.5 KB serialized)."""
    rng = numpy.random.RandomState(seed)
    net = caffe_pb2.NetParameter(name='small')
    net.input.append('data')
    net.input_dim.extend([2, 3, 9, 9])

    def add(name, type_, bottom, top):
        layer = net.layer.add(name=name, type=type_)
        layer.bottom.append(bottom)
        layer.top.append(top)
        return layer

    def blob(layer, shape):
        b = layer.blobs.add()
        b.shape.dim.extend(shape)
        b.data.extend(rng.randn(*shape).astype(numpy.float32).ravel())

    conv = add('conv1', 'Convolution', 'data', 'conv1')
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    blob(conv, [4, 3, 3, 3])
    blob(conv, [4])
    add('relu1', 'ReLU', 'conv1', 'conv1')
    pool = add('pool1', 'Pooling', 'conv1', 'pool1')
    pool.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
    pool.pooling_param.kernel_size = 3
    pool.pooling_param.stride = 2
    lrn = add('norm1', 'LRN', 'pool1', 'norm1')
    lrn.lrn_param.local_size = 3
    fc = add('fc', 'InnerProduct', 'norm1', 'fc')
    fc.inner_product_param.num_output = 5
    blob(fc, [5, 4 * 3 * 3])
    blob(fc, [5])
    add('prob', 'Softmax', 'fc', 'prob')
    return net


def layer(net, name):
    for entry in net.layer:
        if entry.name == name:
            return entry
    raise LookupError(name)


def deploy_text(net):
    """The net as a prototxt: structure without blobs."""
    text = caffe_pb2.NetParameter()
    text.CopyFrom(net)
    for entry in text.layer:
        del entry.blobs[:]
    return text_format.MessageToString(text)


def layout(net):
    """The serialized net (header, then one field per layer) and each
    layer's byte span ``(name, tag offset, start, end)``."""
    header = caffe_pb2.NetParameter()
    header.CopyFrom(net)
    del header.layer[:]
    data = bytearray(header.SerializeToString())
    spans = []
    for entry in net.layer:
        body = entry.SerializeToString()
        start = len(data)
        data += tag(100, 2) + varint(len(body))
        spans.append((entry.name, start, len(data), len(data) + len(body)))
        data += body
    return bytes(data), spans


@pytest.fixture
def write(tmp_path):
    def write(name, content):
        path = tmp_path / name
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        return str(path)
    return write


def expect(call, *fragments, error=CaffeModelError):
    """Runs ``call``; checks the error type and that the message holds
    every fragment. Returns the message."""
    with pytest.raises(CaffeModelError) as info:
        call()
    assert isinstance(info.value, error), repr(info.value)
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)
    return message


def load_net(write, net, name='m.caffemodel', prototxt=None):
    model = write(name, net.SerializeToString())
    text = None if prototxt is None else write('deploy.prototxt', prototxt)
    return lambda: load_caffe(model, text)


def test_small_net_loads(write):
    # The base of every case below is a valid model.
    net = load_caffe(write('ok.caffemodel', small_net().SerializeToString()))
    assert net.layers[-1][0] == 'prob'
    data, spans = layout(small_net())
    assert caffe_pb2.NetParameter.FromString(data) == small_net()
    assert [s[0] for s in spans] == [e.name for e in small_net().layer]


def test_errors_are_value_errors():
    assert issubclass(CaffeModelError, ValueError)
    assert issubclass(UnsupportedLayerError, CaffeModelError)


# --------------------------------------------------------------------------
# Missing, empty, unreadable files
# --------------------------------------------------------------------------

def test_missing_files(tmp_path, write):
    missing = str(tmp_path / 'nope.caffemodel')
    expect(lambda: load_caffe(missing), missing, 'not found', 'caffemodel')
    model = write('ok.caffemodel', small_net().SerializeToString())
    missing_text = str(tmp_path / 'nope.prototxt')
    expect(lambda: load_caffe(model, missing_text), missing_text,
           'not found', 'prototxt')
    missing_mean = str(tmp_path / 'mean.binaryproto')
    expect(lambda: load_mean(missing_mean), missing_mean, 'not found',
           'BlobProto')


def test_no_model_given():
    expect(lambda: load_caffe(None), 'caffemodel')


def test_empty_files(write):
    empty = write('empty.caffemodel', b'')
    expect(lambda: load_caffe(empty), empty, 'empty', 'caffemodel')
    model = write('ok.caffemodel', small_net().SerializeToString())
    empty_text = write('empty.prototxt', b'')
    expect(lambda: load_caffe(model, empty_text), empty_text, 'empty',
           'prototxt')
    expect(lambda: load_mean(empty), empty, 'empty', 'BlobProto')


def test_directory(tmp_path):
    expect(lambda: load_caffe(str(tmp_path)), str(tmp_path), 'cannot open')


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0,
                    reason='root reads unreadable files')
def test_unreadable_file(write):
    path = write('secret.caffemodel', small_net().SerializeToString())
    os.chmod(path, 0)
    expect(lambda: load_caffe(path), path, 'cannot open')


def test_prototxt_without_layers(write):
    model = write('ok.caffemodel', small_net().SerializeToString())
    for text in ('name: "x"\n', '# only a comment\n'):
        path = write('nolayers.prototxt', text)
        expect(lambda: load_caffe(model, path), path, 'no layers')


def test_model_without_layers(write):
    path = write('header.caffemodel',
                 caffe_pb2.NetParameter(name='x').SerializeToString() +
                 b'\x18\x01')
    expect(lambda: load_caffe(path), path, 'no layers')


# --------------------------------------------------------------------------
# Truncated files
# --------------------------------------------------------------------------

def test_truncated_everywhere(write):
    """Cut at every offset: an error naming the file, and the layer when
    the cut falls inside one. (A cut exactly between two layers leaves a
    valid, shorter net, as it would for Caffe.)"""
    data, spans = layout(small_net())
    header_end = spans[0][1]
    boundaries = {s[1] for s in spans[1:]} | {len(data)}
    path = write('cut.caffemodel', b'')
    n_errors = 0
    for cut in range(1, len(data)):
        with open(path, 'wb') as f:
            f.write(data[:cut])
        if cut in boundaries:
            net = load_caffe(path)
            assert len(net.layers) == 1 + sum(s[1] < cut for s in spans)
            continue
        message = expect(lambda: load_caffe(path), path)
        n_errors += 1
        inside = [(i, s) for i, s in enumerate(spans) if s[1] < cut < s[3]]
        if cut > header_end + 2:
            (index, (name, tag_start, start, _)), = inside
            if cut == tag_start + 1:
                continue   # half a tag: any field could start there
            assert 'layer {}'.format(index) in message, (cut, message)
            name_end = start + 2 + len(name)   # tag, length, name
            if cut >= name_end:
                assert repr(name) in message, (cut, message)
    assert n_errors > len(data) - 10


def test_truncated_in_blob_data(write):
    data, spans = layout(small_net())
    name, _, start, end = spans[[s[0] for s in spans].index('fc')]
    for cut in (start + 40, (start + end) // 2, end - 1):
        path = write('cut.caffemodel', data[:cut])
        expect(lambda: load_caffe(path), path, 'truncated file',
               "layer 4 ('fc')")


def test_truncated_in_layer_header(write):
    data, spans = layout(small_net())
    _, tag_start, start, _ = spans[1]
    # In the layer's tag (all that is known then is that a field is cut).
    path = write('cut.caffemodel', data[:tag_start + 1])
    expect(lambda: load_caffe(path), path, 'truncated')
    # In its length, in its name, after its name.
    for cut in (tag_start + 2, start + 3, start + 9):
        path = write('cut.caffemodel', data[:cut])
        expect(lambda: load_caffe(path), path, 'layer 1')


def test_truncated_in_net_header(write):
    data, spans = layout(small_net())
    for cut in range(1, spans[0][1]):
        path = write('cut.caffemodel', data[:cut])
        expect(lambda: load_caffe(path), path)


# --------------------------------------------------------------------------
# Random bytes, wrong kinds of file
# --------------------------------------------------------------------------

@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('size', [1, 2, 7, 100, 4096, 200000])
def test_random_bytes(write, seed, size):
    data = numpy.random.RandomState(seed * 1000 + size).bytes(size)
    path = write('random.bin', data)
    model = write('ok.caffemodel', small_net().SerializeToString())
    expect(lambda: load_caffe(path), path)
    expect(lambda: load_caffe(model, path), path)
    try:
        load_mean(path)
    except CaffeModelError as e:
        assert path in str(e)


def test_prototxt_as_caffemodel(write):
    text = write('deploy.prototxt', deploy_text(small_net()))
    expect(lambda: load_caffe(text), text, 'text file', 'expected a binary '
           'caffemodel', 'prototxt=')


def test_caffemodel_as_prototxt(write):
    model = write('ok.caffemodel', small_net().SerializeToString())
    expect(lambda: load_caffe(model, model), model, 'binary file',
           'expected a text prototxt')


def test_prototxt_syntax_error_has_line_and_column(write):
    model = write('ok.caffemodel', small_net().SerializeToString())
    text = deploy_text(small_net()).splitlines()
    first = text.index('layer {') + 1     # name: "conv1"; line first + 1
    assert text[first] == '  name: "conv1"', text
    cases = [
        # (line index to break, replacement, expected "line:col")
        (first, '  name: "conv1', '{}:'.format(first + 1)),  # open string
        (first + 1, '  type "Convolution"', '{}:8'.format(first + 2)),
    ]
    for index, replacement, position in cases:
        broken = list(text)
        broken[index] = replacement
        path = write('broken.prototxt', '\n'.join(broken) + '\n')
        expect(lambda: load_caffe(model, path), path, 'not a valid Caffe '
               'prototxt', position)
    path = write('unclosed.prototxt', '\n'.join(text[:-1]) + '\n')
    expect(lambda: load_caffe(model, path), path, 'Expected "}"')


def test_prototxt_unknown_field_is_a_warning_with_line_and_column(
        write, caplog):
    # A field the schema lacks (a fork's, or a typo) is skipped with one
    # warning naming it, its layer and its position (issue 10); the load
    # then fails only for what the skipped field leaves missing.
    model = write('ok.caffemodel', small_net().SerializeToString())
    text = deploy_text(small_net()).splitlines()
    first = text.index('layer {') + 1     # name: "conv1"; line first + 1
    text[first] = '  nmae: "conv1"'
    path = write('typo.prototxt', '\n'.join(text) + '\n')
    expect(lambda: load_caffe(model, path), path, "layer ''",
           'expects 2 blob(s)')
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == 'WARNING']
    assert warnings == ["{}: layer '' (Convolution): unknown field 'nmae' "
                        "skipped (line {}:3)".format(path, first + 1)]


def test_prototxt_errors(write):
    model = write('ok.caffemodel', small_net().SerializeToString())
    relu = 'layer { name: "a" type: "ReLU" bottom: "data" top: "a" }\n'
    cases = [
        ('input: "data" input_dim: 1 input_dim: 3\n' + relu,
         ['4 input_dim values', 'found 2']),
        ('input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9\n' + relu,
         ['input_dim/input_shape given without input names']),
        ('layer { name: "a" type: "Convolution" bottom: "data" top: "a" '
         'convolution_param { num_output: 99999999999 } }\n',
         ['Value out of range']),
        ('layers { name: "b" type: NO_SUCH_TYPE bottom: "a" top: "b" }\n',
         ['NO_SUCH_TYPE']),
        ('layer { name: "\\377" type: "ReLU" bottom: "data" top: "a" }\n',
         ['1:']),    # an escape that is not UTF-8
    ]
    for text, fragments in cases:
        path = write('p.prototxt', text)
        expect(lambda: load_caffe(model, path), path, *fragments)


def test_non_utf8_prototxt(write):
    model = write('ok.caffemodel', small_net().SerializeToString())
    path = write('latin1.prototxt',
                 'layer { name: "caf\xe9" type: "ReLU" }\n'.encode('latin-1'))
    expect(lambda: load_caffe(model, path), path)


# --------------------------------------------------------------------------
# Blobs whose values do not match their shape
# --------------------------------------------------------------------------

def test_blob_count_mismatch_shape_form(write):
    net = small_net()
    layer(net, 'fc').blobs[1].shape.dim[:] = [6]
    expect(load_net(write, net), 'm.caffemodel', "layer 4 ('fc'), blob 1",
           'shape (6,) holds 6 values but the file stores 5')
    net = small_net()
    del layer(net, 'conv1').blobs[0].data[:]
    expect(load_net(write, net), "layer 0 ('conv1'), blob 0",
           'shape (4, 3, 3, 3) holds 108 values but the file stores 0')


def test_blob_count_mismatch_legacy_form(write):
    net = small_net()
    bias = layer(net, 'fc').blobs[1]
    bias.ClearField('shape')
    bias.num, bias.channels, bias.height, bias.width = 1, 1, 2, 5
    expect(load_net(write, net), "layer 4 ('fc'), blob 1",
           'shape (1, 1, 2, 5) holds 10 values but the file stores 5')
    bias.height = 1   # (1, 1, 1, 5) is a valid legacy bias
    assert load_net(write, net)()['fc'].b.shape == (5,)


def test_blob_negative_dimensions(write):
    net = small_net()
    layer(net, 'fc').blobs[1].shape.dim[:] = [-5]
    expect(load_net(write, net), "layer 4 ('fc'), blob 1", '(-5,)',
           'negative')
    net = small_net()
    bias = layer(net, 'fc').blobs[1]
    bias.ClearField('shape')
    bias.num, bias.channels, bias.height, bias.width = -1, 1, 1, -5
    expect(load_net(write, net), "blob 1", '(-1, 1, 1, -5)', 'negative')


def test_blob_double_data_count_mismatch(write):
    net = small_net()
    bias = layer(net, 'fc').blobs[1]
    del bias.data[:]
    bias.double_data.extend([1.0, 2.0, 3.0])
    expect(load_net(write, net), "layer 4 ('fc'), blob 1",
           'holds 5 values but the file stores 3')


def test_blob_of_wrong_shape_for_layer(write):
    net = small_net()
    fc = layer(net, 'fc')
    fc.blobs[0].shape.dim[:] = [36, 5]
    expect(load_net(write, net), "layer 'fc' (InnerProduct)", '(36, 5)',
           '(5, *)')
    net = small_net()
    del layer(net, 'conv1').blobs[1:]
    expect(load_net(write, net), "layer 'conv1' (Convolution)",
           'expects 2 blob(s) (weights, bias)', 'hold 1')


# --------------------------------------------------------------------------
# Hostile length fields
# --------------------------------------------------------------------------

LAYER_HEAD = len_field(1, b'L') + len_field(2, b'InnerProduct')


def hostile_files():
    """name -> (bytes, fragments the message must hold)."""
    packed10 = len_field(7, len_field(1, varint(3))) + \
        len_field(5, b'\0' * 10)
    double12 = len_field(7, len_field(1, varint(1))) + \
        len_field(8, b'\0' * 12)
    huge_shape = len_field(7, len_field(1, varint(2 ** 40))) + \
        len_field(5, b'\0' * 8)
    many_dims = len_field(7, b''.join(tag(1, 0) + varint(2 ** 62)
                                      for _ in range(8))) + \
        len_field(5, b'\0' * 8)
    blob_past_layer = tag(7, 2) + varint(2 ** 31) + b'\0' * 16
    return {
        'layer_2_60': (len_field(1, b'n') + tag(100, 2) + varint(2 ** 60) +
                       b'abc', ['declares 1152921504606846976 bytes',
                                'layer 0']),
        'varint_11_bytes_tag': (b'\xff' * 10 + b'\x01' + b'abcdef',
                                ['malformed varint']),
        'varint_11_bytes_length': (tag(100, 2) + b'\xff' * 10 + b'\x01' +
                                   b'abc', ['malformed varint',
                                            'layer 0']),
        'varint_unterminated': (tag(100, 2) + b'\xff' * 5,
                                ['truncated']),
        'packed_not_multiple_of_4': (
            len_field(100, LAYER_HEAD + len_field(7, packed10)),
            ["layer 0 ('L'), blob 0", '10 bytes', 'whole number of 4-byte']),
        'double_not_multiple_of_8': (
            len_field(100, LAYER_HEAD + len_field(7, double12)),
            ['12 bytes', '8-byte']),
        'shape_2_40_elements': (
            len_field(100, LAYER_HEAD + len_field(7, huge_shape)),
            ['1099511627776 values but the file stores 2']),
        'shape_2_496_elements': (
            len_field(100, LAYER_HEAD + len_field(7, many_dims)),
            ['values but the file stores 2']),
        'blob_longer_than_layer': (
            len_field(100, LAYER_HEAD + blob_past_layer),
            ["layer 0 ('L')", 'declares 2147483648 bytes']),
        'wire_type_6': (tag(100, 6) + b'abc', ['wire type 6']),
        'field_number_0': (b'\x00\x01' + len_field(100, LAYER_HEAD),
                           ['field number 0']),
        'group_in_layer': (len_field(100, LAYER_HEAD + tag(9, 3) +
                                     tag(9, 4)), ['wire type 3']),
    }


@pytest.mark.parametrize('name', sorted(hostile_files()))
def test_hostile_lengths(write, name):
    data, fragments = hostile_files()[name]
    path = write(name + '.caffemodel', data)
    expect(lambda: load_caffe(path), path, *fragments)


def test_hostile_blob_shape_in_nested_message(write):
    # A BlobShape that protobuf itself rejects.
    bad_shape = len_field(7, b'\x0a\x05\x01') + len_field(5, b'\0' * 4)
    path = write('shape.caffemodel',
                 len_field(100, LAYER_HEAD + len_field(7, bad_shape)))
    expect(lambda: load_caffe(path), path, "layer 0 ('L'), blob 0 shape")


_MEMORY_PROBE = textwrap.dedent('''
    import resource, sys, tracemalloc
    import chainer_finetune
    from chainer_finetune import CaffeModelError
    from chainer_finetune.caffe.loader import load_caffe

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    load_caffe(sys.argv[1])        # warm up: lazy imports, caches
    tracemalloc.start()            # NumPy reports its buffers to it
    for path in sys.argv[2:]:
        before = peak()
        tracemalloc.reset_peak()
        traced = tracemalloc.get_traced_memory()[0]
        try:
            load_caffe(path)
            outcome = 'loaded'
        except CaffeModelError as e:
            outcome = 'CaffeModelError'
        print(path, outcome, peak() - before,
              tracemalloc.get_traced_memory()[1] - traced, flush=True)
''')


@pytest.mark.skipif(sys.platform != 'linux', reason='ru_maxrss units')
def test_hostile_files_use_bounded_memory(tmp_path, write):
    """Peak RSS grows by at most a small multiple of the file's size.

    Each hostile file is tiny, so the reader must not allocate what a
    length field claims. The large cases hold 24 MB of real weights and
    break only after them (the last layer's blob count is wrong, or the
    file is cut in its last byte).
    """
    ok = write('ok.caffemodel', small_net().SerializeToString())
    paths = []
    for name, (data, _) in sorted(hostile_files().items()):
        paths.append(write(name + '.caffemodel', data))
    rng = numpy.random.RandomState(0)
    big = caffe_pb2.NetParameter(name='big')
    big.input.append('data')
    big.input_dim.extend([1, 1000, 1, 1])
    for i in range(3):
        fc = big.layer.add(name='fc{}'.format(i), type='InnerProduct')
        fc.bottom.append('data' if i == 0 else 'fc{}'.format(i - 1))
        fc.top.append('fc{}'.format(i))
        fc.inner_product_param.num_output = 1000
        fc.inner_product_param.bias_term = False
        w = fc.blobs.add()
        w.shape.dim.extend([1000, 1000] if i < 2 else [1000, 999])
        w.data.extend(rng.rand(1000 * 1000).astype(numpy.float32))
    big_data = big.SerializeToString()
    paths.append(write('big_bad_count.caffemodel', big_data))
    paths.append(write('big_cut.caffemodel', big_data[:-1]))
    out = subprocess.run([sys.executable, '-c', _MEMORY_PROBE, ok] + paths,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split('\n')[:-1]
    assert len(lines) == len(paths), out.stdout + out.stderr
    for line in lines:
        path, outcome, rss_growth, traced_peak = line.rsplit(' ', 3)
        size = os.path.getsize(path)
        assert outcome == 'CaffeModelError', line
        assert int(rss_growth) <= 2 * size + (8 << 20), (line, size)
        assert int(traced_peak) <= 2 * size + (1 << 20), (line, size)


# --------------------------------------------------------------------------
# Format versions
# --------------------------------------------------------------------------

def test_v0_caffemodel(write):
    net = caffe_pb2.NetParameter(name='old')
    v1 = net.layers.add()
    v1.layer.name = 'conv1'
    v1.layer.type = 'conv'
    v1.bottom.append('data')
    v1.top.append('conv1')
    path = write('v0.caffemodel', net.SerializeToString())
    expect(lambda: load_caffe(path), path, 'V0 format', 'layer 0',
           'upgrade_net_proto_binary')


def test_v0_prototxt(write):
    model = write('ok.caffemodel', small_net().SerializeToString())
    path = write('v0.prototxt', textwrap.dedent('''
        name: "old"
        input: "data"
        layers {
          layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 }
          bottom: "data"
          top: "conv1"
        }
    '''))
    expect(lambda: load_caffe(model, path), path, "layer 'conv1'",
           'V0 format', 'upgrade_net_proto_text')


def test_mixed_v1_v2_caffemodel(write):
    net = small_net()
    v1 = net.layers.add(name='v1relu', type=caffe_pb2.V1LayerParameter.RELU)
    v1.bottom.append('fc')
    v1.top.append('fc')
    expect(load_net(write, net), 'm.caffemodel', 'mixes V1', 'V2')


def test_mixed_v1_v2_prototxt(write):
    model = write('ok.caffemodel', small_net().SerializeToString())
    text = deploy_text(small_net()) + \
        'layers { name: "v1relu" type: RELU bottom: "fc" top: "fc" }\n'
    path = write('mixed.prototxt', text)
    expect(lambda: load_caffe(model, path), path, 'mixes V1', 'V2')


def test_v1_unknown_type_code(write):
    net = caffe_pb2.NetParameter()
    v1 = net.layers.add(name='mystery', type=caffe_pb2.V1LayerParameter.NONE)
    v1.bottom.append('data')
    expect(load_net(write, net), 'm.caffemodel', "'mystery'",
           'unknown type code 0')


def test_v1_unpacked_blob_values_load(write):
    # Very old writers stored one field per value; read with protobuf.
    values = numpy.arange(6, dtype='<f4')
    blob = len_field(7, b'\x08\x02\x08\x03') + b''.join(
        tag(5, 5) + struct.pack('<f', v) for v in values)
    path = write('unpacked.caffemodel', len_field(
        100, len_field(1, b'L') + len_field(2, b'X') + len_field(7, blob)))
    got = reader.read_caffemodel(path).layers[0].blobs[0].array
    numpy.testing.assert_array_equal(got, values.reshape(2, 3))


# --------------------------------------------------------------------------
# Prototxt + caffemodel that do not fit together
# --------------------------------------------------------------------------

def test_prototxt_layer_without_weights(write):
    deploy = deploy_text(small_net())
    net = small_net()
    net.layer.remove(layer(net, 'fc'))
    expect(load_net(write, net, prototxt=deploy), 'deploy.prototxt',
           'm.caffemodel', "layer 'fc' (InnerProduct)",
           'expects 2 blob(s) (weights, bias)', 'none')


def test_prototxt_layer_renamed(write):
    net = small_net()
    text = small_net()
    layer(text, 'conv1').name = 'conv1_renamed'
    expect(load_net(write, net, prototxt=deploy_text(text)),
           "layer 'conv1_renamed' (Convolution)", 'expects 2 blob(s)')


def test_prototxt_weights_of_wrong_shape(write):
    text = small_net()
    layer(text, 'fc').inner_product_param.num_output = 7
    message = expect(load_net(write, small_net(),
                              prototxt=deploy_text(text)),
                     "layer 'fc' (InnerProduct)", 'blob 0 (weights)')
    # Both shapes: the stored one and the one the prototxt implies.
    assert '(5, 36)' in message and '(7, *)' in message, message
    text = small_net()
    layer(text, 'conv1').convolution_param.kernel_size[0] = 5
    expect(load_net(write, small_net(), prototxt=deploy_text(text)),
           "layer 'conv1' (Convolution)", '(4, 3, 3, 3)', '(4, *, 5, 5)')


# --------------------------------------------------------------------------
# Layer types and parameters
# --------------------------------------------------------------------------

def test_unknown_layer_type(write):
    net = small_net()
    layer(net, 'prob').type = 'FancySoftmax'
    message = expect(load_net(write, net), "layer 'prob'", "'FancySoftmax'",
                     'not supported', 'supported types',
                     error=UnsupportedLayerError)
    for supported in ('Convolution', 'InnerProduct', 'Pooling', 'Softmax'):
        assert supported in message
    # Loading the layers before it works.
    assert load_caffe(write('m.caffemodel', net.SerializeToString()),
                      stop_at='fc').layers[-1][0] == 'fc'


def _set(path, value):
    def change(net):
        obj = layer(net, path[0])
        for attribute in path[1:-1]:
            obj = getattr(obj, attribute)
        field = getattr(obj, path[-1])
        if hasattr(field, 'append'):
            if len(field):
                field[0] = value
            else:
                field.append(value)
        else:
            setattr(obj, path[-1], value)
    return change


INVALID_PARAMETERS = {
    'conv_stride_0': (_set(['conv1', 'convolution_param', 'stride'], 0),
                      "layer 'conv1' (Convolution)", 'stride (0, 0)'),
    'conv_kernel_0': (_set(['conv1', 'convolution_param', 'kernel_size'], 0),
                      "layer 'conv1'", 'kernel (0, 0)'),
    'conv_dilation_0': (_set(['conv1', 'convolution_param', 'dilation'], 0),
                        "layer 'conv1'", 'dilation (0, 0)'),
    'conv_group_not_divisor': (
        _set(['conv1', 'convolution_param', 'group'], 3), "layer 'conv1'",
        'num_output 4', 'group 3'),
    'conv_group_0': (_set(['conv1', 'convolution_param', 'group'], 0),
                     "layer 'conv1'", 'group 0'),
    'conv_kernel_h_only': (_set(['conv1', 'convolution_param', 'kernel_h'],
                                3), "layer 'conv1'", 'kernel_size'),
    'pool_stride_0': (_set(['pool1', 'pooling_param', 'stride'], 0),
                      "layer 'pool1' (Pooling)", 'stride (0, 0)'),
    'pool_kernel_0': (_set(['pool1', 'pooling_param', 'kernel_size'], 0),
                      "layer 'pool1'", 'kernel (0, 0)'),
    'pool_pad_eq_kernel': (_set(['pool1', 'pooling_param', 'pad'], 3),
                           "layer 'pool1'", 'pad (3, 3)', 'kernel (3, 3)'),
    'pool_pad_gt_kernel': (_set(['pool1', 'pooling_param', 'pad'], 7),
                           "layer 'pool1'", 'pad (7, 7)'),
    'lrn_local_size_even': (_set(['norm1', 'lrn_param', 'local_size'], 4),
                            "layer 'norm1' (LRN)", 'local_size 4', 'odd'),
    'lrn_local_size_0': (_set(['norm1', 'lrn_param', 'local_size'], 0),
                         "layer 'norm1'", 'local_size 0'),
    'fc_num_output_0': (
        _set(['fc', 'inner_product_param', 'num_output'], 0),
        "layer 'fc' (InnerProduct)", 'num_output'),
}


@pytest.mark.parametrize('case', sorted(INVALID_PARAMETERS))
def test_invalid_parameter(write, case):
    change, *fragments = INVALID_PARAMETERS[case]
    net = small_net()
    change(net)
    expect(load_net(write, net), 'm.caffemodel', *fragments)
    # The same through a prototxt.
    expect(load_net(write, small_net(), prototxt=deploy_text(net)),
           'deploy.prototxt', *fragments)


def test_pool_without_kernel(write):
    net = small_net()
    layer(net, 'pool1').pooling_param.ClearField('kernel_size')
    expect(load_net(write, net), "layer 'pool1'", 'kernel_size is not set')


def test_dropout_ratio_out_of_range(write):
    net = small_net()
    drop = net.layer.add(name='drop', type='Dropout')
    drop.bottom.append('fc')
    drop.top.append('fc')
    drop.dropout_param.dropout_ratio = 1.0
    expect(load_net(write, net), "layer 'drop' (Dropout)", 'dropout_ratio')


def test_wrong_bottom_count(write):
    net = small_net()
    layer(net, 'relu1').bottom.append('data')
    expect(load_net(write, net), "layer 'relu1' (ReLU)",
           'expects 1 bottom(s), has 2')


def test_duplicate_layer_names(write):
    net = small_net()
    layer(net, 'fc').name = 'conv1'          # both hold weights
    expect(load_net(write, net), 'm.caffemodel', "'conv1'", 'two layers')
    net = small_net()
    layer(net, 'prob').name = 'relu1'        # neither holds weights
    expect(load_net(write, net), 'm.caffemodel', "'relu1'", 'two layers')
    text = small_net()
    layer(text, 'prob').name = 'relu1'
    expect(load_net(write, small_net(), prototxt=deploy_text(text)),
           'deploy.prototxt', "'relu1'", 'two layers')


def test_stop_at_unknown(write):
    model = write('ok.caffemodel', small_net().SerializeToString())
    expect(lambda: load_caffe(model, stop_at='nope'), "'nope'",
           'neither a layer nor a blob')
    expect(lambda: load_caffe(model, stop_at=['fc', 'nope']), "'nope'")


# --------------------------------------------------------------------------
# Strings that are not UTF-8 (upb hands them back as bytes)
# --------------------------------------------------------------------------

def _replace_once(data, old, new):
    assert data.count(old) == 1, old
    return data.replace(old, new)


@pytest.mark.parametrize('old,new,fragments', [
    (b'conv1\x12\x0bConvolution', b'co\xffv1\x12\x0bConvolution',
     ["'name'", 'not UTF-8', "layer 0"]),
    (b'\x12\x0bConvolution', b'\x12\x0bConvolutio\xfe', ["'type'"]),
    (b'pool1\x12\x07Pooling\x1a\x05conv1', b'pool1\x12\x07Pooling\x1a\x05c'
     b'\xf6nv1', ["layer 2 ('pool1')", "'bottom'"]),
    (b'\x1a\x04data \x02', b'\x1a\x04d\xe1ta \x02',
     ['net header', "'input'"]),
    (b'\n\x05small', b'\n\x05sm\xc3ll', ['net header', "'name'"]),
])
def test_invalid_utf8_strings(write, old, new, fragments):
    data = _replace_once(small_net().SerializeToString(), old, new)
    path = write('utf8.caffemodel', data)
    expect(lambda: load_caffe(path), path, *fragments)


# --------------------------------------------------------------------------
# Mean files
# --------------------------------------------------------------------------

def test_load_mean_on_other_files(write):
    model = write('ok.caffemodel', small_net().SerializeToString())
    expect(lambda: load_mean(model), model, 'BlobProto')
    text = write('deploy.prototxt', deploy_text(small_net()))
    expect(lambda: load_mean(text), text, 'text file', 'BlobProto')
    corrupt = write('corrupt.binaryproto', b'\x0a\xff\xff\xff\x0f\x01')
    expect(lambda: load_mean(corrupt), corrupt, 'not a valid BlobProto')


def test_load_mean_bad_blobs(write):
    blob = caffe_pb2.BlobProto(num=2, channels=3, height=2, width=2)
    blob.data.extend(numpy.zeros(24, numpy.float32))
    path = write('two.binaryproto', blob.SerializeToString())
    expect(lambda: load_mean(path), path, '2 mean images, expected 1')
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2)
    blob.data.extend(numpy.zeros(5, numpy.float32))
    path = write('count.binaryproto', blob.SerializeToString())
    expect(lambda: load_mean(path), path, 'holds 12 values but the file '
           'stores 5')
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2)
    path = write('novalues.binaryproto', blob.SerializeToString())
    expect(lambda: load_mean(path), path, 'no BlobProto values')
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2)
    blob.data.extend(numpy.arange(12, dtype=numpy.float32))
    path = write('ok.binaryproto', blob.SerializeToString())
    assert load_mean(path).shape == (3, 2, 2)
