"""Issue 11, the cache: it never serves a wrong net, cleans up after killed
writers, and survives odd files in place of its entries."""

import logging
import os
import threading
import time

import chainer_finetune  # noqa: F401  (before chainer)

import numpy
import pytest

from chainer_finetune import files
from chainer_finetune.caffe import cache
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.errors import CaffeModelError

from test_cache import delta, entries, output, write_net


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / 'cache'
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(root))
    return root


@pytest.fixture
def model(tmp_path):
    return write_net(tmp_path / 'net.caffemodel')


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
    assert info.problem == ('{}: is a FIFO (named pipe), not a regular '
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
        with pytest.raises(CaffeModelError, match='net.pkl: is a FIFO'):
            cache.load_pickle(fifo)
        with pytest.raises(files.NotARegularFileError):
            files.sha256_of(fifo)
    finally:
        stop.set()
    assert not hung.is_set(), 'opening the FIFO blocked'
    with pytest.raises(CaffeModelError, match='is a directory'):
        cache.load_pickle(tmp_path)
