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
