"""load_caffe(..., cache=True): the per-user cache of converted nets."""

import json
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import chainer_finetune  # noqa: F401  (before chainer)

import chainer
import numpy
import pytest

from chainer_finetune import files
from chainer_finetune.caffe import cache
from chainer_finetune.caffe.cache import container
from chainer_finetune.caffe.cache import index
from chainer_finetune.caffe.cache import keys
from chainer_finetune.caffe.cache import location
from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.errors import CaffeModelError

INPUT_SHAPE = (2, 3, 8, 8)


def write_net(path, seed=0, n_hidden=16):
    """A small net (conv, BatchNorm, fc); weights depend on ``seed``."""
    rng = numpy.random.RandomState(seed)
    w = NetWriter('cached')
    w.input('data', INPUT_SHAPE)
    w.layer('conv1/3x3', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[rng.randn(4, 3, 3, 3), rng.randn(4)])
    w.layer('bn1', 'BatchNorm', 'conv1', 'conv1',
            blobs=[rng.randn(4), rng.uniform(0.5, 1.5, 4), [1.0]])
    w.layer('fc1', 'InnerProduct', 'conv1', 'fc1',
            params={'inner_product_param': {'num_output': n_hidden}},
            blobs=[rng.randn(n_hidden, 4 * 6 * 6) * 0.1,
                   rng.randn(n_hidden)])
    w.layer('prob', 'Softmax', 'fc1', 'prob')
    w.write_caffemodel(path)
    return str(path)


def output(net):
    x = numpy.linspace(-1, 1, numpy.prod(INPUT_SHAPE), dtype=numpy.float32)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        y, = net(inputs={'data': x.reshape(INPUT_SHAPE)}, outputs=['prob'])
    return y.array


def entries(directory=None):
    directory = pathlib.Path(directory or cache.cache_dir())
    return sorted(p.name for p in directory.glob('*.pkl'))


def delta(before):
    now = cache.cache_stats()
    return {k: getattr(now, k) - getattr(before, k) for k in now._fields}


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / 'cache'
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(root))
    return root


@pytest.fixture
def model(tmp_path):
    return write_net(tmp_path / 'net.caffemodel')


# --------------------------------------------------------------------------
# Location
# --------------------------------------------------------------------------

def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'c'))
    assert cache.cache_dir() == tmp_path / 'c' / 'nets'
    monkeypatch.delenv('CHAINER_FINETUNE_CACHE')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert cache.cache_dir() == tmp_path / 'xdg' / 'chainer_finetune' / 'nets'
    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/ignored')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert cache.cache_dir() == (tmp_path / 'home' / '.cache' /
                                 'chainer_finetune' / 'nets')


def test_cache_dir_is_private(cache_root, model):
    load_caffe(model, cache=True)
    if os.name == 'posix':
        assert cache.cache_dir().stat().st_mode & 0o777 == 0o700
        for name in entries():
            assert (cache.cache_dir() / name).stat().st_mode & 0o077 == 0
    assert (cache_root / 'CACHEDIR.TAG').exists()


# --------------------------------------------------------------------------
# Hits, misses, invalidation
# --------------------------------------------------------------------------

def test_second_load_hits_the_cache(cache_root, model, caplog):
    caplog.set_level(logging.INFO, logger='chainer_finetune.caffe.cache')
    before = cache.cache_stats()
    first = load_caffe(model, cache=True)
    assert delta(before)['misses'] == 1 and delta(before)['writes'] == 1
    assert len(entries()) == 1
    second = load_caffe(model, cache=True)
    d = delta(before)
    assert (d['hits'], d['misses'], d['writes']) == (1, 1, 1)
    assert any('cache hit' in r.getMessage() for r in caplog.records)
    numpy.testing.assert_array_equal(output(first), output(second))
    numpy.testing.assert_array_equal(output(second),
                                     output(load_caffe(model)))
    assert second.link_names == first.link_names


def test_cached_net_has_one_copy_of_the_weights(cache_root, model):
    net = load_caffe(model, cache=True)
    net.cleargrads()
    loaded = load_caffe(model, cache=True)
    assert all(p.grad is None for p in loaded.params())
    weights = sum(p.array.nbytes for p in loaded.params()) + sum(
        a.nbytes for a in (loaded.bn1.avg_mean, loaded.bn1.avg_var))
    size = (cache.cache_dir() / entries()[0]).stat().st_size
    assert weights < size < weights + 64 * 1024
    # Loaded arrays are ordinary writable arrays: the net trains.
    assert all(p.array.flags.writeable for p in loaded.params())
    x = numpy.ones(INPUT_SHAPE, numpy.float32)
    y, = loaded(inputs={'data': x}, outputs=['fc1'])
    chainer.functions.sum(y).backward()
    assert loaded.fc1.W.grad is not None


def test_editing_the_model_invalidates_the_entry(cache_root, tmp_path):
    path = tmp_path / 'net.caffemodel'
    write_net(path, seed=0)
    old = output(load_caffe(str(path), cache=True))
    size = path.stat().st_size
    write_net(path, seed=1)   # same structure and size, other weights
    assert path.stat().st_size == size
    before = cache.cache_stats()
    new = load_caffe(str(path), cache=True)
    assert delta(before)['misses'] == 1
    numpy.testing.assert_array_equal(output(new),
                                     output(load_caffe(str(path))))
    assert not numpy.array_equal(output(new), old)
    assert len(entries()) == 2


def test_options_and_prototxt_are_part_of_the_key(cache_root, model,
                                                  tmp_path):
    load_caffe(model, cache=True)
    backbone = load_caffe(model, cache=True, stop_at='conv1/3x3')
    assert 'fc1' not in backbone.link_names
    assert len(entries()) == 2
    prototxt = tmp_path / 'deploy.prototxt'
    w = NetWriter('cached')
    w.input('data', INPUT_SHAPE)
    w.layer('conv1/3x3', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}})
    w.write_prototxt(prototxt)
    net = load_caffe(model, prototxt, cache=True)
    assert list(net.link_names) == ['conv1/3x3']
    assert len(entries()) == 3


def test_known_file_is_not_hashed_again(cache_root, model, monkeypatch):
    monkeypatch.setattr(index, '_MEMO_MIN_BYTES', 0)
    monkeypatch.setattr(index, '_RACY_NS', 0)
    before = cache.cache_stats()
    load_caffe(model, cache=True)
    assert delta(before)['hashed_files'] == 1
    load_caffe(model, cache=True)
    d = delta(before)
    assert d['hashed_files'] == 1 and d['hits'] == 1
    # Same size, same mtime, other bytes: the change time still differs.
    st = os.stat(model)
    write_net(model, seed=1)
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(model).st_size == st.st_size
    load_caffe(model, cache=True)
    d = delta(before)
    assert d['hashed_files'] == 2 and d['misses'] == 2


def test_fresh_file_hash_is_not_trusted(cache_root, model):
    # Written just now (within _RACY_NS): hashed on every load, still hits.
    before = cache.cache_stats()
    load_caffe(model, cache=True)
    load_caffe(model, cache=True)
    d = delta(before)
    assert d['hashed_files'] == 2 and d['hits'] == 1


def test_unreadable_input_reports_like_without_cache(cache_root, tmp_path):
    with pytest.raises(CaffeModelError, match='missing.caffemodel'):
        load_caffe(str(tmp_path / 'missing.caffemodel'), cache=True)


# --------------------------------------------------------------------------
# Damaged entries
# --------------------------------------------------------------------------

def _only_entry():
    names = entries()
    assert len(names) == 1
    return cache.cache_dir() / names[0]


def test_truncated_entry_is_rebuilt(cache_root, model, caplog):
    expected = output(load_caffe(model, cache=True))
    entry = _only_entry()
    data = entry.read_bytes()
    entry.write_bytes(data[:len(data) // 2])
    before = cache.cache_stats()
    with caplog.at_level(logging.WARNING, logger='chainer_finetune'):
        net = load_caffe(model, cache=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and 'truncated' in warnings[0].getMessage()
    d = delta(before)
    assert (d['corrupt'], d['misses'], d['writes']) == (1, 1, 1)
    numpy.testing.assert_array_equal(output(net), expected)
    assert entry.stat().st_size == len(data)
    before = cache.cache_stats()
    load_caffe(model, cache=True)
    assert delta(before)['hits'] == 1


@pytest.mark.parametrize('where', ['header', 'metadata', 'pickle'])
def test_corrupt_entry_is_rebuilt(cache_root, model, caplog, where):
    expected = output(load_caffe(model, cache=True))
    entry = _only_entry()
    data = bytearray(entry.read_bytes())
    with open(entry, 'rb') as f:
        layout = container.read_layout(f, len(data), 'entry')
    offset = {'header': 2, 'metadata': container.HEADER.size + 10,
              'pickle': layout.pickle[0] + layout.pickle[1] // 2}[where]
    data[offset] ^= 0xFF
    entry.write_bytes(bytes(data))
    before = cache.cache_stats()
    with caplog.at_level(logging.WARNING, logger='chainer_finetune'):
        net = load_caffe(model, cache=True)
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    assert delta(before)['corrupt'] == 1
    numpy.testing.assert_array_equal(output(net), expected)


def test_corrupt_weights_are_found_by_verification(cache_root, model,
                                                   monkeypatch, caplog):
    expected = output(load_caffe(model, cache=True))
    entry = _only_entry()
    data = bytearray(entry.read_bytes())
    data[-3] ^= 0x10   # in the last buffer: weights, not the pickle stream
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger='chainer_finetune'):
        [(path, problem)] = cache.verify_cache(remove=False)
    assert path == entry and 'checksum' in problem
    monkeypatch.setattr(cache, 'VERIFY_WEIGHTS', True)
    before = cache.cache_stats()
    net = load_caffe(model, cache=True)
    assert delta(before)['corrupt'] == 1
    numpy.testing.assert_array_equal(output(net), expected)
    assert cache.verify_cache() == [(entry, None)]


def test_unwritable_cache_is_not_fatal(tmp_path, monkeypatch, model, caplog):
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(blocker))
    before = cache.cache_stats()
    with caplog.at_level(logging.WARNING, logger='chainer_finetune'):
        net = load_caffe(model, cache=True)
    assert 'not usable' in caplog.text
    assert delta(before)['errors'] == 1
    numpy.testing.assert_array_equal(output(net), output(load_caffe(model)))


# --------------------------------------------------------------------------
# Read only from the cache directory
# --------------------------------------------------------------------------

def test_entries_are_read_only_from_the_cache_dir(tmp_path, monkeypatch,
                                                  model, caplog):
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'a'))
    load_caffe(model, cache=True)
    [name] = entries()
    elsewhere = tmp_path / 'a' / 'nets' / name
    # Another cache directory does not see it...
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'b'))
    before = cache.cache_stats()
    load_caffe(model, cache=True)
    assert delta(before)['hits'] == 0 and entries() == [name]
    # ...and a symbolic link to it is not followed.
    own = cache.cache_dir() / name
    own.unlink()
    own.symlink_to(elsewhere)
    before = cache.cache_stats()
    with caplog.at_level(logging.WARNING, logger='chainer_finetune'):
        load_caffe(model, cache=True)
    assert 'symbolic link' in caplog.text
    d = delta(before)
    assert d['hits'] == 0 and d['corrupt'] == 1 and d['writes'] == 1
    assert not own.is_symlink()


@pytest.mark.skipif(os.name != 'posix', reason='POSIX permissions')
def test_cache_dir_writable_by_others_is_not_used(cache_root, model,
                                                  caplog):
    load_caffe(model, cache=True)
    cache.cache_dir().chmod(0o777)
    try:
        before = cache.cache_stats()
        with caplog.at_level(logging.WARNING, logger='chainer_finetune'):
            net = load_caffe(model, cache=True)
        assert 'writable by other users' in caplog.text
        d = delta(before)
        assert d['hits'] == 0 and d['errors'] == 1
        numpy.testing.assert_array_equal(output(net),
                                         output(load_caffe(model)))
    finally:
        cache.cache_dir().chmod(0o700)


# --------------------------------------------------------------------------
# Several processes
# --------------------------------------------------------------------------

_WORKER = textwrap.dedent('''
    import json, os, sys, time
    import chainer_finetune
    import chainer, numpy
    from chainer_finetune.caffe import cache
    from chainer_finetune.caffe.loader import load_caffe
    model, ready, go = sys.argv[1:4]
    open(ready, 'w').close()
    while not os.path.exists(go):
        time.sleep(0.005)
    net = load_caffe(model, cache=True)
    with chainer.using_config('train', False):
        y, = net(inputs={'data': numpy.ones((2, 3, 8, 8), 'f')},
                 outputs=['prob'])
    print(json.dumps({'stats': cache.cache_stats()._asdict(),
                      'y': y.array.tolist()}))
''')


def test_concurrent_processes_share_one_entry(cache_root, tmp_path):
    # Big enough that converting and writing takes a while.
    model = write_net(tmp_path / 'big.caffemodel', n_hidden=2000)
    script = tmp_path / 'worker.py'
    script.write_text(_WORKER)
    go = tmp_path / 'go'
    procs, readies = [], []
    for i in range(2):
        ready = tmp_path / 'ready{}'.format(i)
        readies.append(ready)
        procs.append(subprocess.Popen(
            [sys.executable, str(script), model, str(ready), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ)))
    try:
        import time
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in readies):
            assert time.monotonic() < deadline, 'workers did not start'
            time.sleep(0.01)
        go.touch()   # both start loading at once
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    reports = [json.loads(out) for out, _ in results]
    assert reports[0]['y'] == reports[1]['y']
    assert sum(r['stats']['writes'] for r in reports) == 1
    assert sum(r['stats']['corrupt'] for r in reports) == 0
    assert len(entries()) == 1
    leftovers = [n for n in os.listdir(cache.cache_dir())
                 if n.endswith('.tmp')]
    assert leftovers == []
    assert cache.verify_cache() == [(cache.cache_dir() / entries()[0],
                                     None)]


def test_waiting_process_uses_the_entry_written_meanwhile(cache_root,
                                                          tmp_path, model):
    # This process holds the entry's lock, as a process converting the
    # model would; the worker must wait, then load what was written.
    script = tmp_path / 'worker.py'
    script.write_text(_WORKER)
    ready, go = tmp_path / 'ready', tmp_path / 'go'
    go.touch()
    directory = location.usable_dir(create=True)
    key = cache.cache_key([('model', model), ('prototxt', None),
                           ('weights', None)], {'stop_at': None}, directory)
    with files.file_lock(directory / (key + '.lock')):
        proc = subprocess.Popen(
            [sys.executable, str(script), model, str(ready), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            import time
            deadline = time.monotonic() + 120
            while not ready.exists():
                assert time.monotonic() < deadline, 'worker did not start'
                time.sleep(0.01)
            time.sleep(2)   # the worker hashes the model, then waits
            assert proc.poll() is None
            cache._store(directory / (key + '.pkl'), load_caffe(model),
                         keys.entry_meta(key, model, {'stop_at': None}))
        except BaseException:
            proc.kill()
            raise
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    stats = json.loads(out)['stats']
    assert (stats['waits'], stats['hits'], stats['misses'],
            stats['writes']) == (1, 1, 0, 0)


# --------------------------------------------------------------------------
# Introspection, cleanup, standalone pickles
# --------------------------------------------------------------------------

def test_cache_info_and_clear(cache_root, model):
    assert cache.cache_info() == []
    load_caffe(model, cache=True, stop_at='conv1/3x3')
    [info] = cache.cache_info()
    assert info.source == model and info.problem is None
    assert info.options == {'stop_at': 'conv1/3x3'}
    assert info.versions['chainer'] == chainer.__version__
    foreign = cache.cache_dir() / 'notes.txt'
    foreign.write_text('mine')
    removed, freed = cache.clear_cache()
    assert removed == 1 and freed == info.size
    assert entries() == [] and foreign.read_text() == 'mine'
    assert cache.clear_cache() == (0, 0)


def test_save_and_load_pickle(tmp_path, model):
    net = load_caffe(model)
    x = numpy.ones(INPUT_SHAPE, numpy.float32)
    y, = net(inputs={'data': x}, outputs=['fc1'])
    chainer.functions.sum(y).backward()   # grads and net.variables set
    path = tmp_path / 'net.pkl'
    cache.save_pickle(net, path)
    loaded = cache.load_pickle(path)
    assert all(p.grad is None for p in loaded.params())
    assert 'variables' not in loaded.__dict__
    numpy.testing.assert_array_equal(output(loaded), output(net))
    with pytest.raises(FileExistsError):
        cache.save_pickle(net, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CaffeModelError, match='net.pkl'):
        cache.load_pickle(path)
