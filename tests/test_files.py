"""chainer_finetune.files: cache root, atomic writes, file lock, SHA-256."""

import hashlib
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from chainer_finetune import files


def _names(directory: pathlib.Path):
    return sorted(os.listdir(directory))


def test_imports_neither_chainer_nor_caffe_code():
    code = ('import importlib.util, sys\n'
            'spec = importlib.util.spec_from_file_location("f", sys.argv[1])\n'
            'spec.loader.exec_module(importlib.util.module_from_spec(spec))\n'
            'print(sorted(m for m in sys.modules if m.startswith(("chainer",'
            ' "google", "numpy"))))\n')
    out = subprocess.run([sys.executable, '-c', code, files.__file__],
                         capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert out.strip() == '[]'


# --------------------------------------------------------------------------
# Where
# --------------------------------------------------------------------------

def test_cache_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path / 'c'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert files.cache_root() == tmp_path / 'c'
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', '')   # empty: unset
    assert files.cache_root() == tmp_path / 'xdg' / 'chainer_finetune'
    monkeypatch.delenv('CHAINER_FINETUNE_CACHE')
    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/ignored')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert files.cache_root() == (tmp_path / 'home' / '.cache' /
                                  'chainer_finetune')
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', '~/mine')
    assert files.cache_root() == tmp_path / 'home' / 'mine'


def test_net_cache_and_fetcher_share_the_root(tmp_path, monkeypatch):
    from chainer_finetune import hub
    from chainer_finetune.caffe import cache
    monkeypatch.setenv('CHAINER_FINETUNE_CACHE', str(tmp_path))
    assert cache.cache_dir().parent == files.cache_root()
    assert pathlib.Path(hub.default_cache_dir()).parent == \
        files.cache_root()


# --------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------

def test_atomic_output_writes_the_file(tmp_path):
    target = tmp_path / 'out.bin'
    with files.atomic_output(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)
        assert not target.exists()   # nothing visible before the end
        with open(tmp, 'wb') as f:
            f.write(b'new')
    assert target.read_bytes() == b'new'
    assert _names(tmp_path) == ['out.bin']


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / 'out.bin'
    target.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='writer failed'):
        with files.atomic_output(target, overwrite=True) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'half')
            raise RuntimeError('writer failed')
    assert target.read_bytes() == b'old'
    assert _names(tmp_path) == ['out.bin']


def test_failed_write_of_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_output(tmp_path / 'out.bin', durable=False):
            raise KeyboardInterrupt
    assert _names(tmp_path) == []


def test_refuses_to_overwrite_without_permission(tmp_path):
    target = tmp_path / 'out.bin'
    target.write_bytes(b'precious')
    with pytest.raises(FileExistsError, match='overwrite=True'):
        with files.atomic_output(target):
            pytest.fail('the body must not run')
    with pytest.raises(FileExistsError):
        files.ensure_absent(target)
    # A dangling symbolic link is an existing name too.
    link = tmp_path / 'link'
    link.symlink_to(tmp_path / 'nowhere')
    with pytest.raises(FileExistsError):
        files.ensure_absent(link)
    assert target.read_bytes() == b'precious'
    with files.atomic_output(target, overwrite=True) as tmp:
        pathlib.Path(tmp).write_bytes(b'replaced')
    assert target.read_bytes() == b'replaced'
    assert _names(tmp_path) == ['link', 'out.bin']


def test_file_created_meanwhile_is_not_replaced(tmp_path):
    target = tmp_path / 'out.bin'
    with pytest.raises(FileExistsError):
        with files.atomic_output(target) as tmp:
            pathlib.Path(tmp).write_bytes(b'new')
            target.write_bytes(b'theirs')   # appears while we write
    assert target.read_bytes() == b'theirs'
    assert _names(tmp_path) == ['out.bin']


@pytest.mark.skipif(os.name != 'posix', reason='POSIX permissions')
def test_mode_of_the_new_file(tmp_path):
    with files.atomic_output(tmp_path / 'private', mode=0o600) as tmp:
        pathlib.Path(tmp).write_bytes(b'x')
    assert (tmp_path / 'private').stat().st_mode & 0o777 == 0o600
    umask = os.umask(0o022)
    try:
        with files.atomic_output(tmp_path / 'shared') as tmp:
            pathlib.Path(tmp).write_bytes(b'x')
    finally:
        os.umask(umask)
    assert (tmp_path / 'shared').stat().st_mode & 0o777 == 0o644


def test_temp_name_is_hidden_and_next_to_the_file(tmp_path):
    name = files.temp_name(tmp_path / 'out.bin')
    assert os.path.dirname(name) == str(tmp_path)
    base = os.path.basename(name)
    assert base.startswith('.out.bin.') and base.endswith('.tmp')
    assert name != files.temp_name(tmp_path / 'out.bin')


# --------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------

# Loads files.py alone (it needs neither Chainer nor the package), so the
# holder starts fast.
_HOLDER = textwrap.dedent('''
    import importlib.util, sys, time
    module, lock, ready, release = sys.argv[1:5]
    spec = importlib.util.spec_from_file_location('files', module)
    files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(files)
    with files.file_lock(lock):
        open(ready, 'w').close()
        deadline = time.monotonic() + 60
        while not __import__('os').path.exists(release):
            if time.monotonic() > deadline:
                sys.exit('never released')
            time.sleep(0.01)
''')


def _start_holder(tmp_path):
    script = tmp_path / 'holder.py'
    script.write_text(_HOLDER)
    lock, ready, release = (tmp_path / 'x.lock', tmp_path / 'ready',
                            tmp_path / 'release')
    proc = subprocess.Popen([sys.executable, str(script), files.__file__,
                             str(lock), str(ready), str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail('lock holder did not start: {}'.format(
                proc.communicate(timeout=10)[1]))
        time.sleep(0.01)
    return proc, lock, release


def test_lock_excludes_a_second_process(tmp_path):
    proc, lock, release = _start_holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(files.LockTimeout, match='held for over'):
            with files.file_lock(lock, timeout=0.3):
                pytest.fail('got a lock another process holds')
        assert time.monotonic() - started < 30
        release.touch()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        with files.file_lock(lock, timeout=10) as waited:
            assert not waited   # free once the holder let go
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_lock_waits_for_the_holder(tmp_path):
    proc, lock, release = _start_holder(tmp_path)
    releaser = threading.Timer(0.5, release.touch)
    releaser.start()
    try:
        with files.file_lock(lock, timeout=60) as waited:
            assert waited
            assert proc.wait(timeout=60) == 0   # holder is gone
    finally:
        releaser.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


# --------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------

@pytest.mark.parametrize('size', [0, 1, (1 << 20) - 1, 1 << 20,
                                  (3 << 20) + 17])
def test_sha256_matches_hashlib(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / 'data'
    path.write_bytes(data)
    assert files.sha256_of(path) == hashlib.sha256(data).hexdigest()
    assert files.sha256_of(str(path), chunk_size=7) == \
        hashlib.sha256(data).hexdigest()


def test_fetcher_and_cache_hash_with_the_shared_function(tmp_path):
    from chainer_finetune import hub
    from chainer_finetune.caffe import cache
    path = tmp_path / 'data'
    path.write_bytes(b'abc' * 1000)
    expected = hashlib.sha256(b'abc' * 1000).hexdigest()
    assert hub.sha256_of is files.sha256_of
    assert cache.file_sha256(path) == expected
