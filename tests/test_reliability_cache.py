"""Issue 11, the cache: it never serves a wrong net, cleans up after killed
writers, and survives odd files in place of its entries."""

import functools
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import chainer_finetune  # noqa: F401  (before chainer)

import numpy
import pytest

from chainer_finetune import cli, files
from chainer_finetune.caffe import cache
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.errors import CaffeModelError

from test_cache import delta, entries, output, write_net
# The fixtures test_cache.py uses: a private cache root, a small model.
from test_cache import cache_root, model  # noqa: F401


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
