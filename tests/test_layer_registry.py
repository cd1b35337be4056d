"""The layer-type registry: every entry complete, its declarations right,
and every inverse the exact way back from a built link to Caffe's blobs."""

import os
import re

import chainer_finetune  # noqa: F401  (before chainer)

import numpy
import pytest

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe import layers
from chainer_finetune.caffe import reader
from chainer_finetune.caffe.reader import Blob
from chainer_finetune.errors import UnsupportedLayerError

import caffe_nets

ENTRIES = list(layers.registered_types())


def entry_id(entry):
    return '/'.join(entry.names)


def layer(type_name, bottoms=('data',), **params):
    """A V2 layer description with the given ``*_param`` messages."""
    message = caffe_pb2.LayerParameter(name='x', type=type_name,
                                       bottom=list(bottoms), top=['x'])
    for field, values in params.items():
        for key, value in values.items():
            setattr(getattr(message, field), key, value)
    return message


# --------------------------------------------------------------------------
# Every entry is complete
# --------------------------------------------------------------------------

def test_supported_types_are_the_registered_names():
    names = [name for entry in ENTRIES for name in entry.names]
    assert len(names) == len(set(names))
    assert layers.supported_types() == sorted(names)
    assert 'Convolution' in names and 'Input' in names


@pytest.mark.parametrize('entry', ENTRIES, ids=entry_id)
def test_every_type_has_a_builder(entry):
    assert entry.names
    assert callable(entry.build)
    for name in entry.names:
        assert layers.layer_type(name) is entry
        assert layers.find_layer_type(name) is entry


@pytest.mark.parametrize('entry', ENTRIES, ids=entry_id)
def test_types_with_blobs_have_an_inverse(entry):
    if entry.holds_blobs:
        assert entry.invert is not None, (
            '{} declares learnable or stateful blobs but no inverse: '
            'save_weights could not store it'.format(entry_id(entry)))
    else:
        assert entry.invert is None, (
            '{} has an inverse but declares no blobs'.format(entry_id(entry)))


@pytest.mark.parametrize('entry', ENTRIES, ids=entry_id)
def test_output_fields_hold_num_output_and_bias_term(entry):
    if entry.output_field is None:
        return
    # A type with an output count has weights whose rows it counts.
    assert entry.param_names is not None
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert entry.output_field in fields
    sub = fields[entry.output_field].message_type.fields_by_name
    assert 'num_output' in sub and 'bias_term' in sub


def test_a_type_cannot_be_registered_twice():
    before = layers.supported_types()
    with pytest.raises(ValueError, match='Pooling'):
        layers.register('Pooling', 'NotAType')(lambda ctx: None)
    assert layers.supported_types() == before
    assert layers.find_layer_type('NotAType') is None


def test_unsupported_type():
    assert layers.find_layer_type('Python') is None
    with pytest.raises(UnsupportedLayerError,
                       match="conv9: layer type 'Python' is not supported; "
                             "supported types: AbsVal, "):
        layers.layer_type('Python', 'conv9')
    python = layer('Python')
    assert layers.learnable_blob_names(python) is None
    assert layers.output_param(python) is None


# --------------------------------------------------------------------------
# What the entries declare for concrete layers
# --------------------------------------------------------------------------

@pytest.mark.parametrize('type_name', ['Convolution', 'Deconvolution'])
@pytest.mark.parametrize('bias_term,names', [(True, ['W', 'b']),
                                             (False, ['W'])])
def test_convolution_declarations(type_name, bias_term, names):
    conv = layer(type_name, convolution_param={'num_output': 8,
                                               'bias_term': bias_term})
    assert layers.learnable_blob_names(conv) == names
    param = layers.output_param(conv)
    assert param.num_output == 8 and param.bias_term == bias_term
    param.num_output = 3   # the message itself, not a copy
    assert conv.convolution_param.num_output == 3
    assert not layers.layer_type(type_name).stateful


@pytest.mark.parametrize('bias_term,names', [(True, ['W', 'b']),
                                             (False, ['W'])])
def test_inner_product_declarations(bias_term, names):
    fc = layer('InnerProduct', inner_product_param={'num_output': 10,
                                                    'bias_term': bias_term})
    assert layers.learnable_blob_names(fc) == names
    param = layers.output_param(fc)
    param.num_output = 4
    assert fc.inner_product_param.num_output == 4
    assert layers.layer_type('InnerProduct').output_field == \
        'inner_product_param'


@pytest.mark.parametrize('bottoms,bias_term,names', [
    (('data',), True, ['W', 'b']),
    (('data',), False, ['W']),
    (('data', 'factor'), True, ['b']),    # the scale is the 2nd bottom
    (('data', 'factor'), False, []),
])
def test_scale_declarations(bottoms, bias_term, names):
    scale = layer('Scale', bottoms, scale_param={'bias_term': bias_term})
    assert layers.learnable_blob_names(scale) == names
    assert layers.output_param(scale) is None


@pytest.mark.parametrize('bottoms,names', [(('data',), ['b']),
                                           (('data', 'offset'), [])])
def test_bias_declarations(bottoms, names):
    assert layers.learnable_blob_names(layer('Bias', bottoms)) == names


def test_stateful_and_blobless_declarations():
    batch_norm = layers.layer_type('BatchNorm')
    assert batch_norm.stateful and batch_norm.holds_blobs
    assert layers.learnable_blob_names(layer('BatchNorm')) is None
    assert layers.learnable_blob_names(layer('PReLU')) == ['W']
    for type_name in ('ReLU', 'Pooling', 'Input', 'Softmax', 'Eltwise'):
        entry = layers.layer_type(type_name)
        assert not entry.holds_blobs and not entry.stateful
        assert layers.learnable_blob_names(layer(type_name)) is None
        assert layers.output_param(layer(type_name)) is None


def test_scale_with_a_second_bottom_round_trips():
    scale = layer('Scale', ('data', 'factor'),
                  scale_param={'bias_term': True})
    bias = numpy.arange(3, dtype=numpy.float32)
    built = layers.build(layers.BuildContext(scale, [Blob(bias, False)],
                                             'test'))
    blobs = layers.layer_type('Scale').invert(scale, built.link)
    assert [b.attr for b in blobs] == ['b']
    numpy.testing.assert_array_equal(blobs[0].array, bias)


# --------------------------------------------------------------------------
# Round trip: blobs -> build -> invert -> the same blobs, for every type
# with blobs (the fixture net uses every supported type)
# --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def stored_layers(tmp_path_factory):
    path = os.path.join(str(tmp_path_factory.mktemp('registry')),
                        'all.caffemodel')
    caffe_nets.make_all_layers_net(path)
    model = reader.read_caffemodel(path)
    assert model.version == 2
    return [(record.param, record.blobs) for record in model.layers]


def _build_and_invert(description, blobs):
    built = layers.build(layers.BuildContext(description, blobs, 'test'))
    inverted = layers.layer_type(description.type).invert(description,
                                                          built.link)
    for blob in inverted:
        assert blob.array.dtype == numpy.float32
        assert blob.array.flags['C_CONTIGUOUS']
    return inverted


def test_the_fixture_covers_every_type_with_blobs(stored_layers):
    with_blobs = {description.type for description, blobs in stored_layers
                  if blobs}
    declared = {name for entry in ENTRIES if entry.holds_blobs
                for name in entry.names}
    assert with_blobs == declared


def test_every_inverse_gives_back_the_stored_blobs(stored_layers):
    checked = 0
    for description, blobs in stored_layers:
        if not blobs:
            continue
        entry = layers.layer_type(description.type)
        inverted = _build_and_invert(description, blobs)
        arrays = [b.array for b in inverted]
        expected = [b.array for b in blobs]
        if entry.stateful:
            # BatchNorm: running sums with a factor come back as averages
            # with factor 1, the same statistics.
            factor = expected[2][0]
            expected = [expected[0] / factor, expected[1] / factor,
                        numpy.ones(1, numpy.float32)]
        else:
            assert [b.attr for b in inverted] == \
                layers.learnable_blob_names(description)
        assert len(arrays) == len(expected), description.name
        for got, want in zip(arrays, expected):
            assert got.shape == want.shape, description.name
            numpy.testing.assert_allclose(got, want, rtol=1e-6, atol=0,
                                          err_msg=description.name)
        # Blobs from an inverse are a fixed point: building from them and
        # inverting again gives exactly them.
        again = _build_and_invert(
            description, [Blob(a, False) for a in arrays])
        for first, second in zip(arrays, again):
            numpy.testing.assert_array_equal(first, second.array)
        checked += 1
    assert checked >= 9


# --------------------------------------------------------------------------
# The consumers keep no per-type tables of their own
# --------------------------------------------------------------------------

@pytest.mark.parametrize('module', ['caffe/weight_files.py', 'lr_mult.py',
                                    'head.py'])
def test_consumers_name_no_layer_type(module):
    path = os.path.join(os.path.dirname(chainer_finetune.__file__), module)
    with open(path, encoding='utf-8') as f:
        source = f.read()
    quoted = {m.group(1) for m in re.finditer(r"""['"](\w+)['"]""", source)}
    assert not quoted & set(layers.supported_types())
