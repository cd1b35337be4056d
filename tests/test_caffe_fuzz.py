"""Fuzzing the loader: mutated caffemodels, prototxts and mean files.

Every outcome of ``load_caffe`` (and ``load_mean``) on a mutated file must
be a loaded net or a :class:`CaffeModelError` naming the file: no other
exception, no hang (each load runs under a 10 s alarm) and no unbounded
allocation (each load runs under an address-space limit of the process's
current size plus 256 MiB, against inputs of a few KB; an allocation a
length field asked for would fail with MemoryError).

The whole module runs in well under 30 s (``max_examples`` below).
"""

import chainer_finetune  # noqa: F401  (before chainer)

import contextlib
import os
import resource
import signal
import struct
import sys
import tempfile
import time

import numpy
import pytest
from google.protobuf import text_format

hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from chainer_finetune import CaffeModelError  # noqa: E402
from chainer_finetune.caffe import caffe_pb2  # noqa: E402
from chainer_finetune.caffe.net import CaffeNet  # noqa: E402
from chainer_finetune.caffe.loader import load_caffe  # noqa: E402
from chainer_finetune.caffe.loader import load_mean  # noqa: E402
from chainer_finetune.caffe.wire import encode_varint as varint  # noqa: E402
from caffe_nets import all_layers_writer  # noqa: E402
from model_fuzz import set_random_field as _set_field  # noqa: E402

# Mutated weights may hold inf/NaN: NumPy's casts and BatchNorm's scaling
# then warn, which is not what these tests look at.
pytestmark = pytest.mark.filterwarnings(
    'ignore:.*encountered in:RuntimeWarning')

FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow,
                                   HealthCheck.data_too_large])


# --------------------------------------------------------------------------
# Seed files
# --------------------------------------------------------------------------

def _rand(rng, shape):
    return rng.randn(*shape).astype(numpy.float32).ravel()


def v2_net(rng):
    """Conv (shape dims) -> BN -> Scale -> ReLU -> Pool -> LRN -> FC
    (legacy dims, double_data bias) -> Softmax, plus a loss head."""
    net = caffe_pb2.NetParameter(name='fuzz')
    net.input.append('data')
    net.input_dim.extend([1, 3, 9, 9])

    def add(name, type_, bottoms, tops):
        layer = net.layer.add(name=name, type=type_)
        layer.bottom.extend(bottoms)
        layer.top.extend(tops)
        return layer

    def blob(layer, shape, legacy=False, double=False):
        b = layer.blobs.add()
        if legacy:
            b.num, b.channels, b.height, b.width = \
                [1] * (4 - len(shape)) + list(shape)
        else:
            b.shape.dim.extend(shape)
        if double:
            b.double_data.extend(_rand(rng, shape).astype(numpy.float64))
        else:
            b.data.extend(_rand(rng, shape))

    conv = add('conv1/3x3', 'Convolution', ['data'], ['conv1'])
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    conv.convolution_param.pad.append(1)
    blob(conv, [4, 3, 3, 3])
    blob(conv, [4])
    bn = add('bn1', 'BatchNorm', ['conv1'], ['conv1'])
    blob(bn, [4])
    bn.blobs.add().CopyFrom(bn.blobs[0])
    blob(bn, [1])
    scale = add('scale1', 'Scale', ['conv1'], ['conv1'])
    scale.scale_param.bias_term = True
    blob(scale, [4])
    blob(scale, [4])
    add('relu1', 'ReLU', ['conv1'], ['conv1'])
    pool = add('pool1', 'Pooling', ['conv1'], ['pool1'])
    pool.pooling_param.kernel_size = 3
    pool.pooling_param.stride = 2
    lrn = add('norm1', 'LRN', ['pool1'], ['norm1'])
    lrn.lrn_param.local_size = 3
    fc = add('fc', 'InnerProduct', ['norm1'], ['fc'])
    fc.inner_product_param.num_output = 5
    blob(fc, [5, 4 * 4 * 4], legacy=True)
    blob(fc, [5], legacy=True, double=True)
    add('prob', 'Softmax', ['fc'], ['prob'])
    loss = add('loss', 'SoftmaxWithLoss', ['fc', 'label'], ['loss'])
    loss.include.add(phase=caffe_pb2.TRAIN)
    return net


def v1_net(rng):
    """The same kind of net in the V1 (``layers``) format."""
    net = caffe_pb2.NetParameter(name='fuzz_v1')
    net.input.append('data')
    net.input_dim.extend([1, 3, 8, 8])
    V1 = caffe_pb2.V1LayerParameter

    def add(name, type_, bottom, top):
        layer = net.layers.add(name=name, type=type_)
        layer.bottom.append(bottom)
        layer.top.append(top)
        return layer

    def blob(layer, shape):
        b = layer.blobs.add()
        b.num, b.channels, b.height, b.width = \
            [1] * (4 - len(shape)) + list(shape)
        b.data.extend(_rand(rng, shape))

    conv = add('conv1', V1.CONVOLUTION, 'data', 'conv1')
    conv.convolution_param.num_output = 2
    conv.convolution_param.kernel_size.append(3)
    conv.blobs_lr.extend([1, 2])
    blob(conv, [2, 3, 3, 3])
    blob(conv, [2])
    add('relu1', V1.RELU, 'conv1', 'conv1')
    pool = add('pool1', V1.POOLING, 'conv1', 'pool1')
    pool.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    pool.pooling_param.kernel_size = 2
    pool.pooling_param.stride = 2
    fc = add('fc', V1.INNER_PRODUCT, 'pool1', 'fc')
    fc.inner_product_param.num_output = 3
    blob(fc, [3, 2 * 3 * 3])
    blob(fc, [3])
    add('drop', V1.DROPOUT, 'fc', 'fc')
    add('prob', V1.SOFTMAX, 'fc', 'prob')
    return net


def deploy_text(net):
    text = caffe_pb2.NetParameter()
    text.CopyFrom(net)
    for layer in list(text.layer) + list(text.layers):
        del layer.blobs[:]
    return text_format.MessageToString(text)


def mean_blob(rng):
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=4)
    blob.data.extend(_rand(rng, [48]) + 100)
    return blob.SerializeToString()


_rng = numpy.random.RandomState(0)
V2_NET = v2_net(_rng)
V1_NET = v1_net(_rng)
SEEDS = [V2_NET.SerializeToString(), V1_NET.SerializeToString()]
PROTOTXTS = [deploy_text(V2_NET), deploy_text(V1_NET)]
MEAN = mean_blob(_rng)

_workdir = tempfile.TemporaryDirectory(prefix='caffe_fuzz_')
WORKDIR = _workdir.name


def _write(name, data):
    path = os.path.join(WORKDIR, name)
    with open(path, 'wb') as f:
        f.write(data)
    return path


SEED_PATHS = [_write('seed{}.caffemodel'.format(i), data)
              for i, data in enumerate(SEEDS)]


# --------------------------------------------------------------------------
# Limits: time and address space
# --------------------------------------------------------------------------

class Hang(Exception):
    pass


def _address_space():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[0]) * resource.getpagesize()


_CAN_LIMIT = sys.platform == 'linux' and os.path.exists('/proc/self/statm')


@contextlib.contextmanager
def bounded(seconds=10, extra_bytes=256 << 20):
    """Fails a call that takes over ``seconds`` or maps more than
    ``extra_bytes`` beyond what the process has now."""
    limited = False
    if _CAN_LIMIT:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _address_space() + extra_bytes
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
            limited = True

    def alarm(signum, frame):
        raise Hang('no result after {} s'.format(seconds))

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if limited:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def check_load(model, prototxt=None):
    """Loads; returns 'loaded' or 'error'. Anything else fails the test."""
    with bounded():
        try:
            net = load_caffe(model, prototxt)
        except CaffeModelError as e:
            named = [p for p in (model, prototxt) if p is not None]
            assert any(p in str(e) for p in named), str(e)
            return 'error'
    assert isinstance(net, CaffeNet)
    return 'loaded'


def test_seeds_load():
    for path in SEED_PATHS:
        assert check_load(path) == 'loaded'
    for i, text in enumerate(PROTOTXTS):
        prototxt = _write('seed{}.prototxt'.format(i), text.encode())
        assert check_load(SEED_PATHS[i], prototxt) == 'loaded'
    assert load_mean(_write('seed.binaryproto', MEAN)).shape == (3, 4, 4)


@pytest.mark.skipif(not _CAN_LIMIT, reason='needs /proc and RLIMIT_AS')
def test_limits_work():
    # The guard itself: a big allocation inside `bounded` fails, a small
    # one does not, and the limit is lifted afterwards.
    with pytest.raises(MemoryError):
        with bounded(extra_bytes=64 << 20):
            numpy.ones(512 << 20, dtype=numpy.uint8)
    with bounded(extra_bytes=64 << 20):
        numpy.ones(1 << 20, dtype=numpy.uint8)
    numpy.ones(512 << 20, dtype=numpy.uint8)
    with pytest.raises(Hang):
        with bounded(seconds=0.05):
            time.sleep(1)


# --------------------------------------------------------------------------
# Binary mutations
# --------------------------------------------------------------------------

_HOSTILE_VARINTS = [varint(v) for v in (0, 1, 127, 128, 2 ** 31 - 1,
                                        2 ** 31, 2 ** 32, 2 ** 60,
                                        2 ** 64 - 1)] + [b'\xff' * 11]


@st.composite
def mutation(draw, n):
    """One edit of a buffer of length ``n`` as a plain tuple (shrinks
    well and prints readably)."""
    kind = draw(st.sampled_from(['flip', 'set', 'insert', 'delete',
                                 'truncate', 'splice', 'varint']))
    at = draw(st.integers(0, max(n - 1, 0)))
    if kind == 'flip':
        return (kind, at, draw(st.integers(0, 7)))
    if kind == 'set':
        return (kind, at, draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) |
                               st.integers(0, 255)))
    if kind == 'insert':
        return (kind, at, draw(st.binary(min_size=1, max_size=8)))
    if kind == 'delete':
        return (kind, at, draw(st.integers(1, 16)))
    if kind == 'truncate':
        return (kind, at, 0)
    if kind == 'splice':
        # Copy a chunk of one of the seeds over (or into) this position.
        seed = draw(st.integers(0, len(SEEDS) - 1))
        start = draw(st.integers(0, len(SEEDS[seed]) - 1))
        length = draw(st.integers(1, 64))
        return (kind, at, (seed, start, length, draw(st.booleans())))
    return (kind, at, draw(st.sampled_from(_HOSTILE_VARINTS)))


def apply_mutation(data, edit):
    kind, at, arg = edit
    data = bytearray(data)
    at = min(at, max(len(data) - 1, 0))
    if not data:
        return bytes(data)
    if kind == 'flip':
        data[at] ^= 1 << arg
    elif kind == 'set':
        data[at] = arg
    elif kind == 'insert':
        data[at:at] = arg
    elif kind == 'delete':
        del data[at:at + arg]
    elif kind == 'truncate':
        del data[at:]
    elif kind == 'splice':
        seed, start, length, overwrite = arg
        chunk = SEEDS[seed][start:start + length]
        data[at:at + (len(chunk) if overwrite else 0)] = chunk
    else:   # overwrite with a varint: lengths, tags, dims
        data[at:at + len(arg)] = arg
    return bytes(data)


@st.composite
def mutated_model(draw):
    seed = draw(st.integers(0, len(SEEDS) - 1))
    data = SEEDS[seed]
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(mutation(len(data)))
        edits.append(edit)
        data = apply_mutation(data, edit)
    return seed, edits, data


@settings(max_examples=800, **FUZZ)
@given(mutated_model())
def test_mutated_caffemodel(case):
    _, _, data = case
    if not data:
        return
    check_load(_write('mutated.caffemodel', data))


@settings(max_examples=150, **FUZZ)
@given(mutated_model(), st.integers(0, len(PROTOTXTS) - 1))
def test_mutated_caffemodel_with_prototxt(case, text_index):
    _, _, data = case
    if not data:
        return
    prototxt = _write('seed{}.prototxt'.format(text_index),
                      PROTOTXTS[text_index].encode())
    check_load(_write('mutated.caffemodel', data), prototxt)


def test_every_offset_single_edits():
    """Deterministic sweep over every offset of the V2 seed: delete the
    byte (even offsets) or set it to 0xFF (odd ones). Mostly errors, some
    loads."""
    seed = SEEDS[0]
    outcomes = {'loaded': 0, 'error': 0}
    path = os.path.join(WORKDIR, 'sweep.caffemodel')
    for at in range(len(seed)):
        for edit in [('set', at, 0xFF) if at % 2 else ('delete', at, 1)]:
            data = apply_mutation(seed, edit)
            with open(path, 'wb') as f:
                f.write(data)
            outcomes[check_load(path)] += 1
    assert outcomes['error'] > len(seed) // 2
    assert outcomes['loaded'] > 0


@settings(max_examples=60, **FUZZ)
@given(st.binary(min_size=1, max_size=4096))
def test_random_bytes(data):
    check_load(_write('random.caffemodel', data))


# --------------------------------------------------------------------------
# Layer parameters: every builder, with values at and past their limits
# --------------------------------------------------------------------------

ALL_LAYERS = all_layers_writer().net_parameter(2)


@settings(max_examples=300, **FUZZ)
@given(st.randoms(use_true_random=False), st.integers(1, 3))
def test_mutated_layer_parameters(rnd, n_edits):
    """Each of the supported layer types, with its ``*_param`` fields (or
    bottoms, tops, names) set to zero, negative, huge or non-finite
    values: the builders' checks must catch what does not fit."""
    net = caffe_pb2.NetParameter()
    net.CopyFrom(ALL_LAYERS)
    for _ in range(n_edits):
        layer = rnd.choice(list(net.layer))
        params = [f.name for f, _ in layer.ListFields()
                  if f.name.endswith('_param')]
        if params and rnd.random() < 0.8:
            _set_field(getattr(layer, rnd.choice(params)), rnd)
        else:
            name = rnd.choice(['bottom', 'top', 'name', 'type'])
            if name in ('name', 'type'):
                setattr(layer, name, rnd.choice(['', 'x', 'fc', 'ReLU',
                                                 'Convolution']))
            elif len(getattr(layer, name)) and rnd.random() < 0.5:
                del getattr(layer, name)[-1]
            else:
                getattr(layer, name).append(rnd.choice(['data', 'x']))
    check_load(_write('params.caffemodel', net.SerializeToString()))


# --------------------------------------------------------------------------
# Text mutations of the prototxt
# --------------------------------------------------------------------------

_TOKENS = ['{', '}', ':', '"', '\\', ' ', '\n', '#', '-', '0', '1', '3',
           '-1', '4294967296', '99999999999999999999', '1e40', 'nan', 'inf',
           'layer', 'layers', 'name', 'type', 'bottom', 'top', '"data"',
           '"conv1"', '"fc"', '"Pooling"', '"Convolution"', '"NoSuchType"',
           'convolution_param', 'pooling_param', 'lrn_param', 'kernel_size',
           'stride', 'pad', 'group', 'num_output', 'local_size', 'pool: AVE',
           'input_dim: 1', 'include { phase: TRAIN }', 'type: RELU',
           '"\\377"', '"\\xff\\xfe"', 'é', '\x00']


@st.composite
def mutated_text(draw):
    index = draw(st.integers(0, len(PROTOTXTS) - 1))
    text = PROTOTXTS[index]
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(['insert', 'delete', 'copy', 'bytes']))
        at = draw(st.integers(0, len(text)))
        if kind == 'insert':
            text = text[:at] + draw(st.sampled_from(_TOKENS)) + text[at:]
        elif kind == 'delete':
            text = text[:at] + text[at + draw(st.integers(1, 30)):]
        elif kind == 'copy':
            start = draw(st.integers(0, len(text)))
            chunk = text[start:start + draw(st.integers(1, 80))]
            text = text[:at] + chunk + text[at:]
        else:
            text = text[:at] + draw(st.binary(min_size=1, max_size=4)) \
                .decode('latin-1') + text[at:]
        edits.append(kind)
    return index, text


@settings(max_examples=400, **FUZZ)
@given(mutated_text(), st.sampled_from(['utf-8', 'latin-1']))
def test_mutated_prototxt(case, encoding):
    index, text = case
    data = text.encode(encoding, 'replace')
    if not data:
        return
    prototxt = _write('mutated.prototxt', data)
    check_load(SEED_PATHS[index], prototxt)


# --------------------------------------------------------------------------
# Mean files
# --------------------------------------------------------------------------

@settings(max_examples=150, **FUZZ)
@given(st.lists(mutation(len(MEAN)), min_size=1, max_size=4))
def test_mutated_mean(edits):
    data = MEAN
    for edit in edits:
        kind = edit[0]
        if kind == 'splice':
            continue
        data = apply_mutation(data, edit)
    if not data:
        return
    path = _write('mutated.binaryproto', data)
    with bounded():
        try:
            mean = load_mean(path)
        except CaffeModelError as e:
            assert path in str(e), str(e)
        else:
            assert mean.dtype == numpy.float32


def test_struct_roundtrip_helper():
    # apply_mutation is deterministic and bounded by its input.
    data = SEEDS[0]
    assert apply_mutation(data, ('truncate', 10, 0)) == data[:10]
    assert apply_mutation(data, ('varint', 0, b'\x01')) == b'\x01' + data[1:]
    assert struct.calcsize('<f') == 4
