"""Issue 11: every reliability case, each asserting the documented behaviour.

One module, in bounded time and memory (each hanging call runs under a
timeout; allocations asked for by hostile input are measured or refused
before they happen). The cases of the issue, and where each is:

1. The cache serves a wrong net when the file is replaced during a load:
   ``test_file_swapped_between_hash_and_build``,
   ``test_swapping_file_race_never_caches_a_wrong_net`` (12 rounds).
2. ``finetune --out`` over an earlier run: ``test_finetune_api_refuses_*``,
   ``test_finetune_cli_refuses_then_overwrite_gets_past_the_check``.
3. One bad label allocates without bound:
   ``test_huge_list_label_is_refused_without_allocating``.
4. One undecodable image aborts late: ``test_bad_images_are_listed_together``,
   ``test_finetune_stops_before_training_on_bad_images``,
   ``test_worker_errors_come_back_as_the_same_error``.
5. FIFOs hang: ``test_fifo_is_refused_at_once``, ``test_fifo_as_*``,
   ``test_fifo_in_place_of_an_entry_does_not_hang``.
6. Tracebacks for impossible shapes: ``test_inspect_huge_input_*``,
   ``test_negative_declared_dimension_is_one_line``,
   ``test_verify_forward_failure_is_one_line``.
7. 16-bit images clipped: ``test_16bit_*``.
8. Temp files of killed cache writes:
   ``test_temp_files_of_killed_writes_are_shown_and_removed``.
9. A flipped byte in a cache entry served:
   ``test_flipped_weight_byte_is_not_served``.
10. A bottom no layer produces becomes an input:
    ``test_unknown_bottom_blob_is_refused``.

Then the tests that let bugs through (double_data, legacy dims, the cache
key, the lazy-destination rank check, NaN in compare_arrays), each naming
its mutation. The import hook has tests/test_reliability_hook.py (it builds
wheels), the GPU cases tests/test_reliability_gpu*.py, and the fuzzing of
real models tests/test_model_fuzz.py.
"""

import chainer_finetune  # noqa: F401  (before chainer)

import argparse
import errno
import functools
import logging
import math
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import chainer
import chainer.links as L
import numpy
import pytest
from PIL import Image

from chainer_finetune import cli
from chainer_finetune import files
from chainer_finetune import data
from chainer_finetune import finetune
from chainer_finetune.caffe import cache
from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe import reader
from chainer_finetune.caffe import verify
from chainer_finetune.caffe import weight_files
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.caffe.loader import load_mean
from chainer_finetune.caffe.verify import ComparisonRow
from chainer_finetune.caffe.verify import compare_arrays
from chainer_finetune.caffe.verify import format_comparison
from chainer_finetune.caffe.wire import encode_varint as varint
from chainer_finetune.caffe.wire import field_key
from chainer_finetune.copy import copy_model
from chainer_finetune.data import load_images
from chainer_finetune.data import read_image
from chainer_finetune.errors import CaffeModelError
from chainer_finetune.errors import DataError
from chainer_finetune.errors import FinetuneError, InputShapeError

from test_cache import delta, entries, output, write_net
from test_cache import cache_root, model  # noqa: F401
from test_cli_caffe import run_cli, write_net as write_cli_net


# ==========================================================================
# The reader: hostile files, unknown bottoms, Caffe's blob rules
# ==========================================================================

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


# ==========================================================================
# The cache: never a wrong net, killed writers, odd entries
# ==========================================================================

def _entry_path(model):
    """The path the entry of ``load_caffe(model, cache=True)`` has."""
    directory = cache.cache_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = cache.cache_key([('model', model), ('prototxt', None),
                           ('weights', None)], {'stop_at': None})
    return directory / (key + '.pkl')


# --------------------------------------------------------------------------
# Only regular files are opened as entries
# --------------------------------------------------------------------------

def test_directory_in_place_of_an_entry(cache_root, model, caplog):
    entry = _entry_path(model)
    entry.mkdir()
    with caplog.at_level(logging.WARNING, logger='chainer_finetune'):
        net = load_caffe(model, cache=True)
    numpy.testing.assert_array_equal(output(net), output(load_caffe(model)))
    text = caplog.text
    assert 'is a directory, not a regular file' in text
    assert 'Is a directory: 3' not in text
    [info] = cache.cache_info()
    assert 'is a directory' in info.problem


def _unblock_after(fifo, seconds):
    """Opens ``fifo`` for writing after ``seconds`` unless stopped.

    A reader blocked opening the FIFO is then released, so that a hang
    fails the test instead of blocking the run. Returns ``(stop, hung)``.
    """
    stop, hung = threading.Event(), threading.Event()

    def watchdog():
        if stop.wait(seconds):
            return
        hung.set()
        while not stop.wait(0.05):
            try:   # a writer releases a reader blocked in open()
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:   # no reader waiting (ENXIO), or gone
                pass

    threading.Thread(target=watchdog, daemon=True).start()
    return stop, hung


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='no FIFOs')
def test_fifo_in_place_of_an_entry_does_not_hang(cache_root, model, caplog):
    entry = _entry_path(model)
    os.mkfifo(entry, 0o600)
    stop, hung = _unblock_after(entry, 20)
    try:
        with caplog.at_level(logging.WARNING, logger='chainer_finetune'):
            [info] = cache.cache_info()
            net = load_caffe(model, cache=True)
    finally:
        stop.set()
    assert not hung.is_set(), 'opening the FIFO blocked'
    assert info.problem == ('{}: is a named pipe (FIFO), not a regular '
                            'file; not loading it'.format(entry))
    assert 'FIFO' in caplog.text
    numpy.testing.assert_array_equal(output(net), output(load_caffe(model)))
    assert entry.is_file()   # replaced by a real entry


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='no FIFOs')
def test_load_pickle_of_a_fifo_or_directory(tmp_path):
    fifo = tmp_path / 'net.pkl'
    os.mkfifo(fifo)
    stop, hung = _unblock_after(fifo, 20)
    try:
        with pytest.raises(CaffeModelError, match='net.pkl: is a named pipe'):
            cache.load_pickle(fifo)
        with pytest.raises(files.NotARegularFileError):
            files.sha256_of(fifo)
    finally:
        stop.set()
    assert not hung.is_set(), 'opening the FIFO blocked'
    with pytest.raises(CaffeModelError, match='is a directory'):
        cache.load_pickle(tmp_path)


# --------------------------------------------------------------------------
# A model file replaced during a cache=True load
# --------------------------------------------------------------------------

def _params(net):
    return {name: p.array.copy() for name, p in net.namedparams()}


def _same(a, b):
    return a.keys() == b.keys() and all(
        numpy.array_equal(a[k], b[k]) for k in a)


def test_file_swapped_between_hash_and_build(cache_root, tmp_path,
                                             monkeypatch):
    # The swap lands deterministically between hashing the file (the key)
    # and reading it to build the net, as an atomic `mv` of another version
    # can; 12 rounds, alternating which version is swapped in.
    path = str(tmp_path / 'net.caffemodel')
    versions = [write_net(tmp_path / 'v{}.caffemodel'.format(i), seed=i)
                for i in range(2)]
    expected = []
    for v in versions:
        with open(v, 'rb') as f:
            data = f.read()
        with open(path, 'wb') as f:
            f.write(data)
        expected.append(_params(load_caffe(path)))
    real_key = cache.cache_key
    swap_in = []

    def key_then_swap(*args, **kwargs):
        key = real_key(*args, **kwargs)
        if swap_in:
            tmp = path + '.new'
            with open(swap_in.pop(), 'rb') as src, open(tmp, 'wb') as dst:
                dst.write(src.read())
            os.replace(tmp, path)
        return key

    monkeypatch.setattr(cache, 'cache_key', key_then_swap)
    for round_ in range(12):
        pristine, other = round_ % 2, 1 - round_ % 2
        with open(versions[pristine], 'rb') as f:
            data = f.read()
        with open(path + '.new', 'wb') as f:
            f.write(data)
        os.replace(path + '.new', path)
        swap_in.append(versions[other])
        load_caffe(path, cache=True)   # the net of whichever file it read
        # The pristine file must never get the other version's weights.
        with open(path + '.new', 'wb') as f:
            f.write(data)
        os.replace(path + '.new', path)
        got = _params(load_caffe(path, cache=True))
        assert _same(got, expected[pristine]), 'round {}'.format(round_)


def test_swapping_file_race_never_caches_a_wrong_net(cache_root, tmp_path):
    # A background thread keeps replacing the file with `mv` while loads
    # run: whatever each load returns, every entry must match its key.
    path = str(tmp_path / 'net.caffemodel')
    versions = [write_net(tmp_path / 'v{}.caffemodel'.format(i), seed=i,
                          n_hidden=200) for i in range(2)]
    blobs = []
    for v in versions:
        with open(v, 'rb') as f:
            blobs.append(f.read())
    expected = [_params(load_caffe(v)) for v in versions]
    stop = threading.Event()

    def swapper():
        i = 0
        while not stop.is_set():
            tmp = path + '.swap'
            with open(tmp, 'wb') as f:
                f.write(blobs[i % 2])
            os.replace(tmp, path)
            i += 1
            time.sleep(0.001)

    with open(path, 'wb') as f:
        f.write(blobs[0])
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    try:
        for _ in range(12):
            got = _params(load_caffe(path, cache=True))
            assert _same(got, expected[0]) or _same(got, expected[1])
            if time.monotonic() > deadline:
                break
    finally:
        stop.set()
        thread.join()
    for i, data in enumerate(blobs):
        with open(path, 'wb') as f:
            f.write(data)
        assert _same(_params(load_caffe(path, cache=True)), expected[i])


# --------------------------------------------------------------------------
# A flipped byte in an entry's weights
# --------------------------------------------------------------------------

def test_flipped_weight_byte_is_not_served(cache_root, model, caplog):
    expected = output(load_caffe(model))
    load_caffe(model, cache=True)
    [name] = entries()
    entry = cache.cache_dir() / name
    data = bytearray(entry.read_bytes())
    data[-3] ^= 0x10   # in the last buffer: weights, not the pickle stream
    # Rewritten in place with its old times, as a bit flip on disk would be.
    st = entry.stat()
    with open(entry, 'r+b') as f:
        f.write(bytes(data))
    os.utime(entry, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.VERIFY_WEIGHTS is False   # the default
    before = cache.cache_stats()
    with caplog.at_level(logging.WARNING, logger='chainer_finetune'):
        net = load_caffe(model, cache=True)
    assert 'corrupt weights (checksum)' in caplog.text
    d = delta(before)
    assert (d['hits'], d['corrupt'], d['writes']) == (0, 1, 1)
    numpy.testing.assert_array_equal(output(net), expected)
    # The rebuilt entry is checked once, then served without the check.
    before = cache.cache_stats()
    for _ in range(2):
        numpy.testing.assert_array_equal(
            output(load_caffe(model, cache=True)), expected)
    assert delta(before)['hits'] == 2


# --------------------------------------------------------------------------
# Temporary files of killed writers
# --------------------------------------------------------------------------

_KILLED_WRITER = textwrap.dedent('''
    import sys, time
    import chainer_finetune
    from chainer_finetune.caffe import cache
    from chainer_finetune.caffe.loader import load_caffe
    model, ready = sys.argv[1:3]

    def write_then_hang(f, obj, meta):
        f.write(b'half an entry' * 1000)
        f.flush()
        open(ready, 'w').close()
        time.sleep(600)   # killed here, mid-write

    cache.write_entry = write_then_hang
    load_caffe(model, cache=True)
''')


def _kill_a_writer(tmp_path, model):
    """Runs a cache write and kills it (-9) in the middle."""
    script = tmp_path / 'writer.py'
    script.write_text(_KILLED_WRITER)
    ready = tmp_path / 'ready'
    proc = subprocess.Popen([sys.executable, str(script), model, str(ready)],
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, 'writer did not start'
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.communicate(timeout=60)


@pytest.mark.skipif(os.name != 'posix', reason='kill -9')
def test_temp_files_of_killed_writes_are_shown_and_removed(
        cache_root, tmp_path, capsys):
    first = write_net(tmp_path / 'a.caffemodel', seed=0)
    second = write_net(tmp_path / 'b.caffemodel', seed=1)
    _kill_a_writer(tmp_path, first)
    [(orphan, size)] = cache.orphaned_temp_files()
    assert orphan.name.endswith('.tmp') and size == 13000
    assert cli.main(['cache']) == 0
    out = capsys.readouterr().out
    assert '1 temporary files of killed writes, 0.0 MB' in out
    # A write in progress (its lock held) is not an orphan, nor removed.
    directory = cache.cache_dir()
    busy = directory / ('.{}.pkl.1.00000000.tmp'.format('0' * 64))
    busy.write_bytes(b'being written')
    with files.file_lock(directory / ('0' * 64 + '.lock')):
        assert cache.orphaned_temp_files() == [(orphan, size)]
        load_caffe(second, cache=True)   # the next write cleans up
        assert not orphan.exists() and busy.exists()
    assert cache.orphaned_temp_files() == [(busy, 13)]
    assert cli.main(['cache']) == 0
    assert 'killed writes' in capsys.readouterr().out
    # The killed write's own entry is written by the next load of it.
    before = cache.cache_stats()
    load_caffe(first, cache=True)
    assert delta(before)['writes'] == 1
    assert cache.orphaned_temp_files() == []
    assert len(entries()) == 2


# --------------------------------------------------------------------------
# What the key holds
# --------------------------------------------------------------------------

@pytest.mark.parametrize('stop_at', [None, 'conv1/3x3'])
def test_cached_equals_uncached_and_hits_the_second_time(cache_root, model,
                                                         stop_at):
    plain = _params(load_caffe(model, stop_at=stop_at))
    before = cache.cache_stats()
    first = load_caffe(model, stop_at=stop_at, cache=True)
    d = delta(before)
    assert (d['hits'], d['misses'], d['writes']) == (0, 1, 1)
    second = load_caffe(model, stop_at=stop_at, cache=True)
    d = delta(before)
    assert (d['hits'], d['misses'], d['writes']) == (1, 1, 1)
    assert _same(_params(first), plain) and _same(_params(second), plain)
    if stop_at is None:
        numpy.testing.assert_array_equal(output(second),
                                         output(load_caffe(model)))


def _misses_after(model, change, monkeypatch):
    load_caffe(model, cache=True)
    with monkeypatch.context() as m:
        change(m)
        before = cache.cache_stats()
        load_caffe(model, cache=True)
        return delta(before)


def test_entry_of_another_version_is_not_reused(cache_root, model,
                                                monkeypatch):
    from chainer_finetune.caffe.cache import keys
    import chainer
    for change in (lambda m: m.setattr(keys, '__version__', '0.0.0-other'),
                   lambda m: m.setattr(chainer, '__version__', '6.0.0')):
        d = _misses_after(model, change, monkeypatch)
        assert (d['hits'], d['misses']) == (0, 1)
    assert len(entries()) == 3
    assert {e.versions['chainer_finetune'] for e in cache.cache_info()} == {
        '0.0.0-other', chainer_finetune.__version__}


def test_entry_of_edited_code_is_not_reused(cache_root, model, tmp_path,
                                            monkeypatch):
    from chainer_finetune.caffe.cache import keys
    package = pathlib.Path(chainer_finetune.__file__).parent
    edited = tmp_path / 'edited_package'
    shutil.copytree(package, edited,
                    ignore=shutil.ignore_patterns('__pycache__'))
    with open(edited / 'caffe' / 'reader.py', 'a') as f:
        f.write('\n# an edit\n')

    def change(m):
        m.setattr(keys, '_PACKAGE', edited)
        keys._code_fingerprint.cache_clear()
        m.setattr(keys, '_code_fingerprint',
                  functools.lru_cache(maxsize=None)(
                      keys._code_fingerprint.__wrapped__))

    try:
        d = _misses_after(model, change, monkeypatch)
    finally:
        keys._code_fingerprint.cache_clear()
    assert (d['hits'], d['misses']) == (0, 1)
    fingerprints = {e.versions['code'] for e in cache.cache_info()}
    assert len(fingerprints) == 2
    # And back with the unedited code: the first entry is hit again.
    before = cache.cache_stats()
    load_caffe(model, cache=True)
    assert delta(before)['hits'] == 1


# ==========================================================================
# Data: hostile labels, undecodable and 16-bit images
# ==========================================================================

def _save(path, array, **kwargs):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _rgb(seed, size=4):
    return numpy.random.RandomState(seed).randint(
        0, 256, (size, size, 3)).astype(numpy.uint8)


# --------------------------------------------------------------------------
# (3) labels are bounded
# --------------------------------------------------------------------------

@pytest.mark.parametrize('label', ['99999999999', '100000', '0' * 3 + '1' +
                                   '0' * 5, '9' * 5000])
def test_huge_list_label_is_refused_without_allocating(tmp_path, label):
    _save(tmp_path / 'a' / '0.jpg', _rgb(0))
    listing = tmp_path / 'list.txt'
    listing.write_text('a/0.jpg 0\na/0.jpg {}\n'.format(label))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_images(str(listing))
    assert time.perf_counter() - start < 5
    # ru_maxrss is in KiB on Linux: less than 100 MB more at the peak.
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 100 * 1024
    message = str(info.value)
    assert '\n' not in message
    assert '{}:2: the label'.format(listing) in message
    assert 'below {}'.format(data.MAX_CLASSES) in message


def test_largest_allowed_label(tmp_path):
    _save(tmp_path / 'a' / '0.png', _rgb(0))
    listing = tmp_path / 'list.txt'
    listing.write_text('a/0.png 0\na/0.png {}\n'.format(data.MAX_CLASSES - 1))
    images = load_images(str(listing))
    assert len(images.class_names) == data.MAX_CLASSES
    assert images.labels.tolist() == [0, data.MAX_CLASSES - 1]


# --------------------------------------------------------------------------
# (7) 16-bit images are scaled, never clipped
# --------------------------------------------------------------------------

def _expected_8bit(values16):
    return numpy.rint(values16.astype(numpy.float64) * 255 / 65535
                      ).astype(numpy.uint8)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = numpy.array([[0, 25, 128, 129, 300], [32767, 32768, 40000,
                                                   65511, 65535]],
                         numpy.uint16)
    path = _save(tmp_path / 'g16.png', values)
    assert Image.open(path).mode.startswith('I')
    got = read_image(path)
    assert got.dtype == numpy.uint8 and got.shape == (2, 5, 3)
    want = _expected_8bit(values)
    for channel in range(3):
        numpy.testing.assert_array_equal(got[:, :, channel], want)
    # The case: 25..65511 used to become 25..255.
    assert got.max() == 255 and got[0, 1, 0] == 0


def test_16bit_pgm_is_scaled_not_clipped(tmp_path):
    values = numpy.array([[300, 65000], [0, 65535]], '>u2')
    path = tmp_path / 'p16.pgm'
    path.write_bytes(b'P5\n2 2\n65535\n' + values.tobytes())
    got = read_image(str(path))
    numpy.testing.assert_array_equal(got[:, :, 0],
                                     _expected_8bit(values.astype(int)))


def test_16bit_every_value_rounds_to_nearest():
    # The scaling itself on every 16-bit value, against float rounding.
    values = numpy.arange(65536, dtype=numpy.uint16).reshape(256, 256)
    img = Image.fromarray(values)
    got = data._to_uint8(img, 'all-values')[:, :, 0]
    numpy.testing.assert_array_equal(got, _expected_8bit(values))


@pytest.mark.parametrize('channels', [3, 4])
def test_16bit_colour_png_is_rounded_not_truncated(tmp_path, channels):
    # Pillow alone keeps the high byte (v >> 8): 257 -> 1 where the
    # rounding gives 1, but 32768 -> 128 (rounds to 128) and 65280 -> 255
    # (rounds to 254): compare every value with float rounding.
    cv2 = pytest.importorskip('cv2')
    rng = numpy.random.RandomState(channels)
    values = rng.randint(0, 65536, (23, 29, channels)).astype(numpy.uint16)
    values[0, 0, :3] = [65280, 32767, 127]
    path = str(tmp_path / 'c16.png')
    assert cv2.imwrite(path, values[:, :, [2, 1, 0, 3][:channels]])
    got = read_image(path)
    assert got.shape == (23, 29, 3)
    numpy.testing.assert_array_equal(got, _expected_8bit(values[:, :, :3]))
    # What Pillow alone would give differs: the test can tell them apart.
    assert (numpy.asarray(Image.open(path).convert('RGB')) != got).any()


def test_8bit_images_unchanged(tmp_path):
    rgb = _rgb(3, 5)
    gray = rgb[:, :, 1].copy()
    numpy.testing.assert_array_equal(read_image(_save(tmp_path / 'c.png',
                                                      rgb)), rgb)
    numpy.testing.assert_array_equal(
        read_image(_save(tmp_path / 'g.png', gray)),
        numpy.stack([gray] * 3, axis=2))


# --------------------------------------------------------------------------
# Only regular files are opened as images
# --------------------------------------------------------------------------

def _in_thread(function, timeout=10):
    """``function()``'s exception or result; fails if it hangs."""
    outcome = {}

    def target():
        try:
            outcome['value'] = function()
        except BaseException as e:   # noqa: B902  (carried to the test)
            outcome['error'] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), 'hung on a FIFO'
    return outcome


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='no FIFOs here')
def test_fifo_as_image_is_refused_without_hanging(tmp_path):
    fifo = str(tmp_path / 'pipe.png')
    os.mkfifo(fifo)
    outcome = _in_thread(lambda: read_image(fifo))
    error = outcome.get('error')
    assert isinstance(error, DataError), outcome
    assert fifo in str(error) and 'not a regular file' in str(error)


def test_directory_as_image_is_refused(tmp_path):
    with pytest.raises(DataError, match='not a regular file'):
        read_image(str(tmp_path))


# --------------------------------------------------------------------------
# (4) bad images are found before training, all together
# --------------------------------------------------------------------------

def _bad_folder(root, per_class=3):
    """root/<a|b>/*.png, and two files that cannot be decoded."""
    for c, name in enumerate('ab'):
        for i in range(per_class):
            _save(root / name / '{}.png'.format(i), _rgb(10 * c + i, 16))
    garbage = root / 'a' / 'garbage.png'
    garbage.write_bytes(b'\x89PNG\r\n\x1a\n but not really')
    truncated = root / 'b' / 'truncated.jpg'
    _save(truncated, _rgb(99, 64), quality=95)
    truncated.write_bytes(truncated.read_bytes()[:200])
    return str(garbage), str(truncated)


@pytest.mark.parametrize('processes', [0, 2])
def test_bad_images_are_listed_together(tmp_path, processes):
    bad = _bad_folder(tmp_path / 'imgs')
    images = load_images(str(tmp_path / 'imgs'))
    with pytest.raises(DataError) as info:
        data.check_images(images, processes=processes, progress=False)
    message = str(info.value)
    assert '\n' not in message
    assert '2 image files cannot be decoded' in message
    assert '--skip-bad-images' in message
    for path in bad:
        assert '{}: cannot decode the image'.format(path) in message
    assert 'not an image format Pillow reads' in message


@pytest.mark.parametrize('processes', [0, 2])
def test_skip_bad_images_warns_with_the_list(tmp_path, caplog, processes):
    bad = _bad_folder(tmp_path / 'imgs')
    images = load_images(str(tmp_path / 'imgs'))
    with caplog.at_level(logging.WARNING, logger='chainer_finetune.data'):
        good = data.check_images(images, processes=processes, skip_bad=True,
                                 progress=False)
    assert len(images) == 8 and len(good) == 6
    assert not set(bad) & {good.path(i) for i in range(len(good))}
    assert good.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert 'skipping 2 image files' in caplog.text
    for path in bad:
        assert path in caplog.text


def test_check_shows_progress_and_passes_good_sets(tmp_path, capsys):
    for i in range(3):
        _save(tmp_path / 'imgs' / 'k' / '{}.png'.format(i), _rgb(i))
    images = load_images(str(tmp_path / 'imgs'))
    assert data.check_images(images, progress=True) is images
    assert 'checking images: 3/3' in capsys.readouterr().err
    in_memory = data.ImageSet.from_array(
        numpy.zeros((2, 2, 2), numpy.uint8), [0, 1], ['x', 'y'])
    assert data.find_bad_images(in_memory, processes=2) == []


def test_worker_errors_come_back_as_the_same_error(tmp_path):
    from chainer_finetune.finetune.datasets import make_iterator
    garbage, _ = _bad_folder(tmp_path / 'imgs')
    images = load_images(str(tmp_path / 'imgs'))
    dataset = images.as_dataset()
    iterator = make_iterator(dataset, 8, False, 2, 0)
    try:
        with pytest.raises(DataError) as info:
            next(iterator)
    finally:
        iterator.finalize()
    assert str(info.value).startswith(garbage + ': cannot decode')
    # Good examples still pass through the workers unchanged.
    good = images.subset([0, 1])
    iterator = make_iterator(good.as_dataset(), 2, False, 2, 0)
    try:
        batch = next(iterator)
    finally:
        iterator.finalize()
    numpy.testing.assert_array_equal(batch[1][0], good.image(1))


# --------------------------------------------------------------------------
# The fine-tuning job: the check runs before training
# --------------------------------------------------------------------------

def _small_net(directory):
    from chainer_finetune.caffe.writer import NetWriter
    rng = numpy.random.RandomState(0)
    w = NetWriter('tiny')
    w.input('data', (1, 3, 16, 16))
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rng.randn(4, 3, 3, 3) * 0.2, rng.randn(4) * 0.1])
    w.layer('pool', 'Pooling', 'conv1', 'pool',
            params={'pooling_param': {'pool': 'AVE', 'global_pooling': True}})
    w.layer('fc', 'InnerProduct', 'pool', 'fc',
            params={'inner_product_param': {'num_output': 5}},
            blobs=[rng.randn(5, 4) * 0.3, rng.randn(5) * 0.1])
    model = os.path.join(directory, 'tiny.caffemodel')
    prototxt = os.path.join(directory, 'tiny.prototxt')
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    return model, prototxt


@pytest.fixture
def job(tmp_path, monkeypatch):
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'cache'))
    model, prototxt = _small_net(str(tmp_path))
    return ['finetune', '--caffemodel', model, '--prototxt', prototxt,
            '--input-size', '16', '--epochs', '1', '--batchsize', '2',
            '--train-per-class', '2', '--test-per-class', '1']


def test_finetune_stops_before_training_on_bad_images(tmp_path, job,
                                                      capsys):
    from chainer_finetune import cli
    bad = _bad_folder(tmp_path / 'imgs')
    out = tmp_path / 'out'
    rc = cli.main(job + ['--data', str(tmp_path / 'imgs'), '--out',
                         str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert all(path in lines[0] for path in bad)
    # Nothing was trained.
    assert not (out / 'pretrained').exists()


def test_finetune_skip_bad_images(tmp_path, job, capsys, caplog):
    from chainer_finetune import cli
    bad = _bad_folder(tmp_path / 'imgs')
    with caplog.at_level(logging.WARNING, logger='chainer_finetune.data'):
        rc = cli.main(job + ['--data', str(tmp_path / 'imgs'), '--out',
                             str(tmp_path / 'out'), '--skip-bad-images',
                             '--loaderjob', '2'])
    assert rc == 0, capsys.readouterr().err
    assert 'skipping 2 image files' in caplog.text
    assert all(path in caplog.text for path in bad)
    assert (tmp_path / 'out' / 'pretrained' / 'best_model.npz').is_file()


def test_one_class_data_set_is_an_error(tmp_path, job, capsys):
    from chainer_finetune import cli
    from chainer_finetune import finetune
    for i in range(4):
        _save(tmp_path / 'imgs' / 'only' / '{}.png'.format(i), _rgb(i, 16))
    config = finetune.FinetuneConfig(data=str(tmp_path / 'imgs'))
    with pytest.raises(DataError, match=r"only one class has images "
                                        r"\('only', 4 images\)"):
        finetune.datasets.load_split(config)
    listing = tmp_path / 'list.txt'
    listing.write_text('imgs/only/0.png 3\nimgs/only/1.png 3\n')
    rc = cli.main(job + ['--data', str(listing), '--out',
                         str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert rc == 2 and "only one class has images ('3', 2 images)" in err
    assert not (tmp_path / 'out' / 'pretrained').exists()


# ==========================================================================
# The command line: results never clobbered, one-line errors
# ==========================================================================

@pytest.fixture
def net_files(tmp_path):
    return write_cli_net(str(tmp_path))


def one_error_line(code, err):
    """The CLI's contract for an error: status 2, one line, no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert 'Traceback' not in err
    return lines[0]


# --------------------------------------------------------------------------
# finetune --out into an earlier run's directory
# --------------------------------------------------------------------------

@pytest.fixture
def earlier_run(tmp_path):
    out = tmp_path / 'result'
    (out / 'pretrained').mkdir(parents=True)
    (out / 'pretrained' / 'best_model.npz').write_bytes(b'trained model')
    (out / 'report.md').write_text('# the earlier report\n')
    return out


def test_finetune_api_refuses_an_earlier_runs_directory(earlier_run):
    config = finetune.FinetuneConfig(caffemodel='missing.caffemodel',
                                     data='missing', out=str(earlier_run))
    with pytest.raises(FinetuneError) as e:
        finetune.run_finetune(config)
    message = str(e.value)
    assert str(earlier_run) in message and 'overwrite' in message
    assert 'report.md' in message and 'pretrained' in message
    assert (earlier_run / 'pretrained' / 'best_model.npz').read_bytes() == \
        b'trained model'
    assert (earlier_run / 'report.md').read_text() == \
        '# the earlier report\n'


def test_finetune_cli_refuses_then_overwrite_gets_past_the_check(
        capsys, earlier_run):
    argv = ['finetune', '--caffemodel', 'missing.caffemodel', '--data',
            str(earlier_run / 'no-such-data'), '--out', str(earlier_run)]
    line = one_error_line(*run_cli(capsys, *argv)[::2])
    assert str(earlier_run) in line and '--overwrite' in line
    # With --overwrite the job goes on (and fails on the missing data).
    line = one_error_line(*run_cli(capsys, *argv, '--overwrite')[::2])
    assert 'no-such-data' in line and '--overwrite' not in line
    assert (earlier_run / 'pretrained' / 'best_model.npz').read_bytes() == \
        b'trained model'


def test_finetune_cli_overwrite_sets_the_config():
    args = cli.build_parser().parse_args(
        ['finetune', '--caffemodel', 'm', '--data', 'd', '--overwrite'])
    assert cli.finetune_config(args).overwrite is True
    args = cli.build_parser().parse_args(
        ['finetune', '--caffemodel', 'm', '--data', 'd'])
    assert cli.finetune_config(args).overwrite is False


def test_an_empty_or_unrelated_out_directory_is_accepted(tmp_path):
    (tmp_path / 'notes.txt').write_text('mine')
    finetune.config.check_output_dir(finetune.FinetuneConfig(
        out=str(tmp_path)))
    finetune.config.check_output_dir(finetune.FinetuneConfig(
        out=str(tmp_path / 'new')))


# --------------------------------------------------------------------------
# inspect / verify: impossible shapes, failing forwards
# --------------------------------------------------------------------------

def test_inspect_huge_input_is_refused_before_allocating(capsys,
                                                         net_files):
    start = time.perf_counter()
    line = one_error_line(*run_cli(
        capsys, 'inspect', net_files[0], '--input-shape',
        '1,3,100000,100000')[::2])
    assert time.perf_counter() - start < 30
    assert '1x3x100000x100000' in line and '30,000,000,000' in line
    assert '{:,}'.format(verify.MAX_INPUT_VALUES) in line


def test_negative_declared_dimension_is_one_line(capsys, net_files,
                                                 tmp_path):
    model, prototxt = net_files
    with open(prototxt) as f:
        text = f.read()
    assert 'dim: 2\n' in text
    bad = tmp_path / 'negative.prototxt'
    bad.write_text(text.replace('dim: 2\n', 'dim: -3\n', 1))
    line = one_error_line(*run_cli(capsys, 'inspect', model, '--prototxt',
                                   str(bad))[::2])
    assert "'data'" in line and '-3x3x9x9' in line
    assert '--input-shape' in line
    # Overriding the declared shape makes the net usable.
    code, out, err = run_cli(capsys, 'inspect', model, '--prototxt',
                             str(bad), '--input-shape', '1,3,9,9')
    assert code == 0, err


def test_inspect_forward_failure_names_the_layer(capsys, net_files):
    line = one_error_line(*run_cli(capsys, 'inspect', net_files[0],
                                   '--input-shape', '1,3,1,1')[::2])
    assert "layer 'conv1/7x7_s2' (Convolution)" in line
    assert '1x3x1x1' in line and '--input-shape' in line


def test_step_outputs_raises_input_shape_error_naming_the_layer(net_files):
    net = load_caffe(*net_files)
    with pytest.raises(InputShapeError, match="'pool1' .Pooling."), \
            chainer.using_config('train', False):
        verify.step_outputs(net, {'data': numpy.zeros((1, 3, 3, 3),
                                                      numpy.float32)})
    with pytest.raises(InputShapeError, match='dimensions cannot be'):
        verify.resolve_input_shapes(net, (1, -3, 9, 9))
    with pytest.raises(InputShapeError, match='fed to a net at most'):
        verify.resolve_input_shapes(net, (1, 3, 100000, 100000))


def test_verify_forward_failure_is_one_line(capsys, caplog, net_files):
    pytest.importorskip('cv2')
    code, out, err = run_cli(capsys, 'verify', net_files[0],
                             '--input-shape', '1,3,1,1')
    assert code == 2 and out == ''
    assert 'Traceback' not in err
    # run_verify logs its one line (on stderr outside pytest).
    [record] = [r for r in caplog.records if r.levelname == 'ERROR']
    assert record.exc_info is None
    message = record.getMessage()
    assert len(message.splitlines()) == 1
    assert "layer 'conv1/7x7_s2' (Convolution)" in message


@pytest.mark.parametrize('flag', ['--tolerance', '--detection-tolerance'])
@pytest.mark.parametrize('value', ['nan', '-1', 'much'])
def test_verify_rejects_bad_tolerances(capsys, net_files, flag, value):
    with pytest.raises(SystemExit) as e:
        cli.main(['verify', net_files[0], flag, value])
    assert e.value.code == 2
    assert 'tolerance >= 0' in capsys.readouterr().err


def test_tolerance_values_and_run_verify_checks():
    assert verify.parse_tolerance('0') == 0
    assert verify.parse_tolerance('inf') == float('inf')
    args = argparse.Namespace(model='unused', tolerance=float('nan'))
    assert verify.run_verify(args) == 2


# --------------------------------------------------------------------------
# every error one line; --debug
# --------------------------------------------------------------------------

def test_unexpected_errors_are_one_line_and_debug_shows_traceback(
        capsys, monkeypatch, net_files):
    def allocate(net, shapes):
        raise MemoryError('Unable to allocate 112. GiB')
    monkeypatch.setattr(cli, '_output_shapes', allocate)
    line = one_error_line(*run_cli(capsys, 'inspect', net_files[0])[::2])
    assert 'MemoryError: Unable to allocate 112. GiB' in line
    assert '--debug' in line
    for argv in (['--debug', 'inspect', net_files[0]],
                 ['inspect', net_files[0], '--debug']):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2
        assert 'Traceback' in err and 'in allocate' in err
        assert err.strip().splitlines()[-1] == \
            'chainer-finetune: error: MemoryError: Unable to allocate 112. GiB'


def test_python_m_prints_no_traceback_for_a_huge_shape(net_files):
    proc = subprocess.run(
        [sys.executable, '-m', 'chainer_finetune', 'inspect', net_files[0],
         '--input-shape', '1,3,100000,100000'],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --------------------------------------------------------------------------
# convert on a full disk
# --------------------------------------------------------------------------

@pytest.mark.parametrize('suffix', ['.npz', '.pkl'])
def test_convert_full_disk_names_the_file(capsys, monkeypatch, net_files,
                                          tmp_path, suffix):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if suffix == '.npz':
        monkeypatch.setattr(weight_files, 'save_weights', full)
    else:
        from chainer_finetune.caffe import cache
        monkeypatch.setattr(cache, 'save_pickle', full)
    output = str(tmp_path / ('out' + suffix))
    line = one_error_line(*run_cli(capsys, 'convert', net_files[0], '-o',
                                   output)[::2])
    assert line == 'chainer-finetune: error: {}: cannot write: {}'.format(
        output, os.strerror(errno.ENOSPC))


# ==========================================================================
# Tests that let bugs through (each names its mutation)
# ==========================================================================

def _filled(link, seed):
    rng = numpy.random.RandomState(seed)
    for _, param in sorted(link.namedparams()):
        if param.array is not None:
            param.array[...] = rng.standard_normal(param.shape)
    return link


def _w_entry(report):
    found = [e for e in report if e.name == 'W']
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------
# copy.py: the rank of a lazily initialised destination
# Mutation caught: copy._fits without ``len(shape) == len(declared)``.
# ---------------------------------------------------------------------------

def test_2d_kernel_is_not_copied_into_a_lazy_1d_convolution():
    src = _filled(L.ConvolutionND(2, 3, 6, 2), 0)     # W (6, 3, 2, 2)
    dst = L.ConvolutionND(1, None, 6, 2)              # W (6, *, 2) once built
    report = copy_model(src, dst)
    W = _w_entry(report)
    assert not W.copied
    assert W.code == 'shape_mismatch'
    assert W.reason == ('shape (6, 3, 2, 2) != (6, *, 2) (declared by '
                        'uninitialized dst)')
    assert W.dst_shape == (6, None, 2)
    assert dst.W.array is None          # still lazy: nothing guessed
    # The bias of the pair is held back with it, not copied on its own.
    assert not report.copied
    assert dst.b.array is not None and not dst.b.array.any()


def test_1d_kernel_is_not_copied_into_a_lazy_2d_convolution():
    src = _filled(L.ConvolutionND(1, 3, 6, 2), 1)     # W (6, 3, 2)
    dst = L.ConvolutionND(2, None, 6, 2)              # W (6, *, 2, 2)
    report = copy_model(src, dst)
    W = _w_entry(report)
    assert W.code == 'shape_mismatch'
    assert W.dst_shape == (6, None, 2, 2)
    assert dst.W.array is None
    assert not report.copied


def test_same_rank_lazy_convolution_still_takes_the_kernel():
    # The control: the refusal above is about rank, not about laziness.
    src = _filled(L.ConvolutionND(1, 3, 6, 2), 2)
    dst = L.ConvolutionND(1, None, 6, 2)
    report = copy_model(src, dst)
    assert not report.skipped, str(report)
    numpy.testing.assert_array_equal(dst.W.array, src.W.array)


# ---------------------------------------------------------------------------
# verify.compare_arrays: NaN is never "equal"
# Mutation caught: NaN against NaN counted as equal (the old behaviour).
# ---------------------------------------------------------------------------

def test_compare_arrays_fails_nan_against_nan():
    ours = numpy.array([1.0, numpy.nan, 3.0], numpy.float32)
    assert compare_arrays(ours, ours.copy()) == (math.inf, math.inf)
    all_nan = numpy.full((2, 3), numpy.nan)
    assert compare_arrays(all_nan, all_nan.copy()) == (math.inf, math.inf)


def test_compare_arrays_fails_nan_on_either_side():
    finite = numpy.array([1.0, 2.0, 3.0])
    with_nan = numpy.array([1.0, numpy.nan, 3.0])
    assert compare_arrays(with_nan, finite) == (math.inf, math.inf)
    assert compare_arrays(finite, with_nan) == (math.inf, math.inf)


def test_compare_arrays_keeps_equal_infinities_equal():
    a = numpy.array([1.0, numpy.inf, -numpy.inf, 4.0])
    assert compare_arrays(a, a.copy()) == (0.0, 0.0)
    b = a.copy()
    b[0] = 1.5
    max_abs, rel = compare_arrays(b, a)
    assert max_abs == 0.5
    assert rel == 0.5 / math.sqrt(1.0 + 16.0)   # infinities left out
    assert compare_arrays(a, -a) == (math.inf, math.inf)


def test_a_nan_blob_is_marked_fail_in_the_verify_table():
    nan_blob = numpy.array([[numpy.nan, 1.0]])
    row = ComparisonRow('conv1', 'conv1', (1, 2),
                        *compare_arrays(nan_blob, nan_blob.copy()))
    text = format_comparison([row], tolerance=1e-4)
    assert text.splitlines()[1].endswith('FAIL')
    assert text.endswith('1 beyond tolerance 0.0001')
