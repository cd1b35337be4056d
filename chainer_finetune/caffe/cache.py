"""A per-user cache of converted networks: ``load_caffe(..., cache=True)``.

Converting a large caffemodel is fast (well under a second for VGG-16), but
unpickling the converted :class:`~chainer_finetune.caffe.CaffeNet` is
faster still, so ``load_caffe(model, prototxt, cache=True)`` stores the
converted net once and loads it back from the cache afterwards.

Where: ``$CHAINER_FINETUNE_CACHE/nets`` when ``CHAINER_FINETUNE_CACHE`` is
set, else ``$XDG_CACHE_HOME/chainer_finetune/nets`` (``XDG_CACHE_HOME``
defaulting to ``~/.cache``); see :func:`cache_dir`. Fetched model files
live next to it, in ``models/`` (:mod:`chainer_finetune.models`).

Security: a cache entry is a pickle, and loading a pickle runs whatever code
it names. Entries are therefore only ever read from :func:`cache_dir`, which
is created private (mode 0700); on POSIX the directory and each entry must
belong to the current user and must not be writable by others, and a
symbolic link in place of an entry is refused. Nothing else is read as a
pickle: not a file next to the model, not a path given by an argument.
:func:`load_pickle` reads a pickle you name, for files you made yourself.

The entry key is the SHA-256 of everything the converted net depends on:

* the contents of the caffemodel, prototxt and exported weights file
  (SHA-256 each);
* the ``stop_at`` selection;
* the versions that decide whether the pickle loads and what it holds:
  chainer_finetune (plus a fingerprint of its Caffe code, so an edited
  checkout does not reuse nets built by older code), Chainer, NumPy major,
  protobuf major, and the Python implementation and major.minor version.

Hashing a 550 MB file takes 0.4-0.9 s, longer than loading its entry
(0.2-0.3 s), so a file's SHA-256 is remembered in a small index
(``hashes.json``) keyed by its real path, device, inode, size, modification
and change times (ns). An unchanged file is not read again; any write
changes its change time, so an edited file is hashed again. As in git's
"racily clean" rule, a hash recorded within ``_RACY_NS`` (3 s) of the
file's last change is not trusted (a later write in the same timestamp
tick would go unnoticed on file systems with coarse timestamps).

Entries are written to a temporary file in the cache directory and moved
into place with :func:`os.replace`, under a per-entry lock file
(``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows, an exclusively
created marker file elsewhere), so processes loading the same model at once
convert it once and never see a partial entry; the file is fsync'ed before
the rename, so a crash cannot leave a renamed but unwritten entry.

Entry layout: a fixed header (magic, format, length and CRC-32 of the
metadata), JSON metadata (key, source, versions, the length and CRC-32 of
the pickle stream, and of every 16 MiB chunk of the weights), the protocol 5
pickle, then its out-of-band buffers (the arrays, 64-byte aligned). Loading
reads the buffers in parallel into NumPy-allocated memory and unpickles
around them: one copy of the weights, no gradients. A truncated or corrupt
entry (bad header or metadata, wrong length, pickle stream checksum, failed
unpickling; the weights' checksums too with :data:`VERIFY_WEIGHTS` or
:func:`verify_cache`) is logged at WARNING and rebuilt, never fatal. Cache
trouble (unwritable directory, full disk) is logged and the net is
converted as without cache.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import pathlib
import pickle
import platform
import re
import stat
import struct
import sys
import threading
import time
import zlib
from typing import (Any, BinaryIO, Callable, Dict, Iterator, List, Mapping,
                    NamedTuple, Optional, Sequence, Tuple, TypeVar, Union)

import chainer
import numpy

import chainer_finetune
from chainer_finetune.errors import CaffeModelError

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:   # POSIX
    msvcrt = None

logger = logging.getLogger(__name__)

_preadv = getattr(os, 'preadv', None)
_read_lock = threading.Lock()

PathLike = Union[str, 'os.PathLike[str]']
T = TypeVar('T')

#: Version of the entry layout and of the key's recipe.
CACHE_FORMAT = 1

_MAGIC = b'CFNETPKL'
# magic, format, metadata length, CRC-32 of the metadata.
_HEADER = struct.Struct('<8sIII')
_MAX_META = 16 << 20
# Buffers start at multiples of this (cache lines; also keeps float data
# aligned in the file).
_ALIGN = 64
# Weights are checksummed (and read) in chunks of this size, in parallel.
_CRC_CHUNK = 16 << 20
#: Check the CRC-32 of every weight chunk when loading an entry. Off by
#: default: it costs as much again as reading the weights (0.2-0.4 s per
#: 550 MB on one core, run in parallel chunks), which made a cached load
#: slower than converting the caffemodel. The header, lengths and pickle
#: stream are always checked, and entries are fsync'ed before they are
#: moved into place, so truncation and crash damage are caught either way;
#: :func:`verify_cache` checks everything.
VERIFY_WEIGHTS = False
_PICKLE_PROTOCOL = 5
_ENTRY_RE = re.compile(r'^[0-9a-f]{64}\.pkl$')
_INDEX_NAME = 'hashes.json'
_INDEX_MAX = 512
# Files below this size are hashed every time: cheaper than the index.
_MEMO_MIN_BYTES = 1 << 20
# A remembered hash is trusted only for files last changed this long before
# it was computed (coarse timestamps: FAT 2 s, HFS+ 1 s).
_RACY_NS = 3_000_000_000
_LOCK_TIMEOUT_S = 600.0
_CHUNK = 1 << 20


class CacheStats(NamedTuple):
    """Counters of this process's cache use (see :func:`cache_stats`).

    Attributes:
        hits: Nets loaded from the cache.
        misses: Nets converted because no valid entry existed.
        writes: Entries written.
        corrupt: Entries found truncated or corrupt (then rebuilt).
        hashed_files: Input files read to compute their SHA-256.
        hashed_bytes: Bytes read for that.
        errors: Times the cache was skipped (unusable directory, failed
            write, lock timeout).
        waits: Times an entry's lock was held by another process (which
            was writing the entry) when this one wanted it.
    """

    hits: int = 0
    misses: int = 0
    writes: int = 0
    corrupt: int = 0
    hashed_files: int = 0
    hashed_bytes: int = 0
    errors: int = 0
    waits: int = 0


_stats: Dict[str, int] = dict(CacheStats()._asdict())
_stats_lock = threading.Lock()


def _count(name: str, n: int = 1) -> None:
    with _stats_lock:
        _stats[name] += n


def cache_stats() -> CacheStats:
    """This process's cache counters (hits, misses, writes...)."""
    with _stats_lock:
        return CacheStats(**_stats)


class CorruptEntryError(CaffeModelError):
    """A cache entry or pickle file is truncated, corrupt or not ours."""


# --------------------------------------------------------------------------
# Where
# --------------------------------------------------------------------------

def cache_root() -> pathlib.Path:
    """chainer_finetune's per-user cache root (nets and fetched models).

    ``$CHAINER_FINETUNE_CACHE`` when set and not empty, else
    ``$XDG_CACHE_HOME/chainer_finetune``, ``XDG_CACHE_HOME`` defaulting to
    ``~/.cache`` (a relative ``XDG_CACHE_HOME`` is ignored, as the XDG spec
    asks).
    """
    root = os.environ.get('CHAINER_FINETUNE_CACHE')
    if root:
        return pathlib.Path(os.path.expanduser(root))
    xdg = os.environ.get('XDG_CACHE_HOME')
    if not xdg or not os.path.isabs(xdg):
        xdg = os.path.join(os.path.expanduser('~'), '.cache')
    return pathlib.Path(xdg) / 'chainer_finetune'


def cache_dir() -> pathlib.Path:
    """The directory of converted nets: ``cache_root() / 'nets'``.

    The only place cache entries are read from. Not created here.
    """
    return cache_root() / 'nets'


def _private_problem(st: os.stat_result) -> Optional[str]:
    """Why a file or directory may not be trusted, or None."""
    if os.name != 'posix':
        return None
    if st.st_uid != os.getuid():
        return 'owned by uid {}, not by the current user'.format(st.st_uid)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return 'writable by other users (mode {:o})'.format(
            stat.S_IMODE(st.st_mode))
    return None


def _usable_dir(create: bool) -> Optional[pathlib.Path]:
    """The cache directory if it may be used (created when asked)."""
    directory = cache_dir()
    try:
        if create and not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_tag(directory.parent)
        st = os.stat(directory)
    except OSError as e:
        if create:
            logger.warning('cache directory %s is not usable (%s); loading '
                           'without cache', directory, e)
            _count('errors')
        return None
    problem = (_private_problem(st) if stat.S_ISDIR(st.st_mode)
               else 'not a directory')
    if problem:
        logger.warning('cache directory %s is %s; not using it (entries are '
                       'pickles, which run code when loaded)', directory,
                       problem)
        _count('errors')
        return None
    return directory


def _write_tag(root: pathlib.Path) -> None:
    # https://bford.info/cachedir/: backup tools skip this directory.
    tag = root / 'CACHEDIR.TAG'
    if not tag.exists():
        with contextlib.suppress(OSError):
            tag.write_text('Signature: 8a477f597d28d172789f06886806bc55\n'
                           '# chainer_finetune cache: converted nets and '
                           'fetched models.\n')


# --------------------------------------------------------------------------
# Locks and atomic files
# --------------------------------------------------------------------------

class LockTimeout(OSError):
    """Another process held a cache lock for too long."""


@contextlib.contextmanager
def _file_lock(path: pathlib.Path,
               timeout: float = _LOCK_TIMEOUT_S) -> Iterator[bool]:
    """Holds an exclusive lock on ``path`` (created if needed).

    Yields:
        bool: Whether the lock had to be waited for.
    """
    if fcntl is None and msvcrt is None:
        with _marker_lock(path, timeout) as waited:
            yield waited
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        waited = False
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES,
                                   errno.EWOULDBLOCK, errno.EDEADLK):
                    raise
            if time.monotonic() > deadline:
                raise LockTimeout('{} held for over {:.0f} s'.format(
                    path, timeout))
            waited = True
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        try:
            yield waited
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _marker_lock(path: pathlib.Path, timeout: float) -> Iterator[bool]:
    # Fallback without flock/msvcrt: an exclusively created marker file; a
    # marker older than the timeout is taken to be left by a dead process.
    marker = path.with_name(path.name + '.held')
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                             0o600))
            break
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - os.stat(marker).st_mtime > timeout:
                    os.unlink(marker)
                    continue
            if time.monotonic() > deadline:
                raise LockTimeout('{} held for over {:.0f} s'.format(
                    marker, timeout)) from None
            waited = True
            time.sleep(0.05)
    try:
        yield waited
    finally:
        with contextlib.suppress(OSError):
            os.unlink(marker)


def _temp_name(final: pathlib.Path) -> pathlib.Path:
    return final.with_name('.{}.{}.{}.tmp'.format(
        final.name, os.getpid(), os.urandom(4).hex()))


def _replace_atomically(final: pathlib.Path,
                        write: Callable[[BinaryIO], None],
                        mode: int = 0o600, durable: bool = False) -> None:
    """Writes a file next to ``final`` and moves it into place.

    Args:
        durable: fsync the file before the rename (and the directory after
            it), so that a crash cannot leave a renamed but unwritten file.
    """
    tmp = _temp_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                 getattr(os, 'O_BINARY', 0), mode)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable and os.name == 'posix':
        with contextlib.suppress(OSError):
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


# --------------------------------------------------------------------------
# Entry format: header, metadata (JSON), pickle
# --------------------------------------------------------------------------

class _NetPickler(pickle.Pickler):
    """Pickles a net with one copy of its weights.

    Gradients are left out (a fine-tuned net's ``grad`` arrays would double
    the file) and so is ``CaffeFunction.variables``, the blobs of the last
    forward pass.
    """

    def reducer_override(self, obj):
        if isinstance(obj, chainer.Parameter) and obj.grad is not None:
            function, args = obj.__reduce__()
            # chainer 7.8.1: (array, name, grad, grad_valid, initializer,
            # update_rule, device).
            if len(args) == 7:
                args = args[:2] + (None, True) + args[4:]
                return function, args
        if isinstance(obj, chainer.links.caffe.CaffeFunction) and \
                'variables' in obj.__dict__:
            reduced = obj.__reduce_ex__(_PICKLE_PROTOCOL)
            state = dict(reduced[2])
            del state['variables']
            return reduced[:2] + (state,) + tuple(reduced[3:])
        return NotImplemented


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _chunks(length: int) -> List[Tuple[int, int]]:
    return [(start, min(start + _CRC_CHUNK, length))
            for start in range(0, length, _CRC_CHUNK)] or [(0, 0)]


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _write_entry(f: BinaryIO, obj: Any, meta: Mapping[str, Any]) -> None:
    """Writes header, metadata, the pickle, then its buffers."""
    stream = io.BytesIO()
    buffers: List[pickle.PickleBuffer] = []
    _NetPickler(stream, protocol=_PICKLE_PROTOCOL,
                buffer_callback=buffers.append).dump(obj)
    data = stream.getbuffer()
    views = [b.raw() for b in buffers]
    # zlib releases the GIL: checksum the chunks in parallel.
    with concurrent.futures.ThreadPoolExecutor(_workers()) as pool:
        crcs = [list(pool.map(lambda c, v=v: zlib.crc32(v[c[0]:c[1]]),
                              _chunks(len(v)))) for v in views]
    layout = dict(meta)
    layout['pickle'] = {'length': len(data), 'crc32': zlib.crc32(data)}
    layout['buffers'] = [{'length': len(v), 'crc32': c}
                         for v, c in zip(views, crcs)]
    meta_bytes = json.dumps(layout, sort_keys=True).encode('utf-8')
    f.write(_HEADER.pack(_MAGIC, CACHE_FORMAT, len(meta_bytes),
                         zlib.crc32(meta_bytes)))
    f.write(meta_bytes)
    position = _HEADER.size + len(meta_bytes)
    for view in [data] + views:
        start = _aligned(position)
        f.write(bytes(start - position))
        f.write(view)
        position = start + len(view)


class _Layout(NamedTuple):
    meta: Dict[str, Any]
    pickle: Tuple[int, int, int]               # offset, length, crc32
    buffers: List[Tuple[int, int, List[int]]]  # offset, length, chunk crcs


def _read_layout(f: BinaryIO, size: int, where: str) -> _Layout:
    """Checks an entry's header, metadata and length (reads no weights)."""
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise CorruptEntryError('{}: truncated ({} bytes)'.format(where,
                                                                  size))
    magic, fmt, meta_len, meta_crc = _HEADER.unpack(head)
    if magic != _MAGIC:
        raise CorruptEntryError('{}: not a chainer_finetune net pickle (bad '
                                'magic)'.format(where))
    if fmt != CACHE_FORMAT:
        raise CorruptEntryError('{}: entry format {}, this version reads '
                                '{}'.format(where, fmt, CACHE_FORMAT))
    if meta_len > min(_MAX_META, size):
        raise CorruptEntryError('{}: truncated or corrupt header'.format(
            where))
    meta_bytes = f.read(meta_len)
    if len(meta_bytes) != meta_len or zlib.crc32(meta_bytes) != meta_crc:
        raise CorruptEntryError('{}: truncated or corrupt metadata'.format(
            where))
    try:
        meta = json.loads(meta_bytes.decode('utf-8'))
        position = _aligned(_HEADER.size + meta_len)
        pickled = (position, int(meta['pickle']['length']),
                   int(meta['pickle']['crc32']))
        end = position + pickled[1]
        buffers = []
        for b in meta['buffers']:
            length = int(b['length'])
            crcs = [int(c) for c in b['crc32']]
            if len(crcs) != len(_chunks(length)) or length < 0:
                raise ValueError('inconsistent buffer table')
            position = _aligned(end)
            buffers.append((position, length, crcs))
            end = position + length
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptEntryError('{}: unreadable metadata: {}'.format(
            where, e)) from None
    if end != size:
        raise CorruptEntryError(
            '{}: truncated or padded: {} bytes, the header announces '
            '{}'.format(where, size, end))
    return _Layout(meta, pickled, buffers)


def _read_into(f: BinaryIO, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        if _preadv is not None:
            n = _preadv(f.fileno(), [view[done:]], offset + done)
        else:   # no positional reads (Windows): one reader at a time
            with _read_lock:
                f.seek(offset + done)
                n = f.readinto(view[done:])
        if not n:
            raise EOFError('file ended early')
        done += n


def _read_entry(f: BinaryIO, size: int, where: str,
                verify: Union[bool, str, None] = None,
                key: Optional[str] = None) -> Tuple[Any, Dict[str, Any]]:
    """Reads and checks an entry, then unpickles it.

    Args:
        key: The key the entry must have been written for.
        verify: Check the weights' CRCs (default :data:`VERIFY_WEIGHTS`);
            ``'only'`` checks everything and unpickles nothing (the result
            is then None).
    """
    if verify is None:
        verify = VERIFY_WEIGHTS
    load = verify != 'only'
    layout = _read_layout(f, size, where)
    if key is not None and layout.meta.get('key') != key:
        raise CorruptEntryError('{}: holds entry {}, not {}'.format(
            where, layout.meta.get('key'), key))
    offset, length, crc = layout.pickle
    f.seek(offset)
    data = f.read(length)
    if len(data) != length or zlib.crc32(data) != crc:
        raise CorruptEntryError('{}: corrupt pickle (checksum)'.format(where))
    # NumPy-allocated buffers (large ones get transparent huge pages, which
    # fault in much faster than a bytearray's pages), read in parallel
    # chunks, each checked against its CRC-32 (if asked) before anything is
    # unpickled.
    arrays = [numpy.empty(n if load else 0, numpy.uint8)
              for _, n, _ in layout.buffers]
    tasks = []
    for array, (offset, length, crcs) in zip(arrays, layout.buffers):
        view = memoryview(array)
        for (start, stop), crc in zip(_chunks(length), crcs):
            tasks.append((view[start:stop] if load else stop - start,
                          offset + start, crc))

    def check(task) -> bool:
        view, offset, crc = task
        if not load:   # a scratch buffer per chunk
            view = memoryview(bytearray(view))
        _read_into(f, view, offset)
        return not verify or zlib.crc32(view) == crc

    try:
        with concurrent.futures.ThreadPoolExecutor(_workers()) as pool:
            ok = all(list(pool.map(check, tasks)))
    except (OSError, EOFError) as e:
        raise CorruptEntryError('{}: cannot read: {}'.format(where, e)) \
            from None
    if not ok:
        raise CorruptEntryError('{}: corrupt weights (checksum)'.format(
            where))
    if not load:
        return None, layout.meta
    try:
        obj = pickle.loads(data, buffers=arrays)
    except Exception as e:   # e.g. a class this version no longer has
        raise CorruptEntryError('{}: cannot unpickle: {}: {}'.format(
            where, type(e).__name__, e)) from None
    return obj, layout.meta


def save_pickle(net: Any, path: PathLike, *, overwrite: bool = False
                ) -> None:
    """Writes a net as a pickle in the cache's entry format.

    The file holds a header and metadata (lengths, CRC-32s) before a
    protocol 5 pickle of ``net`` without gradients, whose arrays follow as
    out-of-band buffers. Only :func:`load_pickle` (or the cache) reads it
    back.

    Args:
        net: The net (any picklable object); CPU arrays load anywhere, GPU
            arrays only where CuPy is.
        path: The output file.
        overwrite: Replace an existing file; without it an existing file
            raises :class:`FileExistsError`.
    """
    from chainer_finetune.caffe.export import output_file
    with output_file(path, overwrite) as tmp:
        with open(tmp, 'wb') as f:
            _write_entry(f, net, _entry_meta(None, None))


def load_pickle(path: PathLike, *, verify: bool = True) -> Any:
    """Reads a file written by :func:`save_pickle`.

    Warning:
        Unpickling runs code named in the file. Load only files you wrote
        yourself; for files from elsewhere use the pickle-free formats of
        :func:`chainer_finetune.save_weights`.

    Args:
        path: The file.
        verify: Check the CRC-32 of the weights too (the header and pickle
            stream are always checked).

    Raises:
        CaffeModelError: if the file is missing, truncated, corrupt or not
            in this format.
    """
    path = os.fspath(path)
    try:
        f = open(path, 'rb')
    except OSError as e:
        raise CaffeModelError('{}: cannot open: {}'.format(
            path, e.strerror or e)) from None
    with f:
        obj, _ = _read_entry(f, os.fstat(f.fileno()).st_size, path,
                             verify)
    return obj


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------

def _index_path(directory: pathlib.Path) -> pathlib.Path:
    return directory / _INDEX_NAME


def _stat_key(st: os.stat_result) -> List[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _load_index(directory: pathlib.Path) -> Dict[str, List]:
    try:
        with open(_index_path(directory), 'rb') as f:
            index = json.loads(f.read().decode('utf-8'))
        files = index['files'] if index.get('version') == 1 else {}
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return {}


def _remember(directory: pathlib.Path, path: str, entry: List) -> None:
    try:
        with _file_lock(directory / (_INDEX_NAME + '.lock'), timeout=10):
            files = _load_index(directory)
            files[path] = entry
            if len(files) > _INDEX_MAX:   # forget the least recently hashed
                for old in sorted(files, key=lambda p: files[p][-1])[
                        :len(files) - _INDEX_MAX]:
                    del files[old]
            data = json.dumps({'version': 1, 'files': files}).encode()
            _replace_atomically(_index_path(directory),
                                lambda f: f.write(data))
    except OSError as e:
        logger.debug('cannot update the hash index: %s', e)


def file_sha256(path: PathLike, directory: Optional[pathlib.Path] = None
                ) -> str:
    """The SHA-256 of a file, remembered in the cache's index.

    Args:
        path: The file.
        directory: The cache directory holding the index; None reads the
            file every time.
    """
    path = os.path.realpath(os.fspath(path))
    st = os.stat(path)
    memo = directory is not None and st.st_size >= _MEMO_MIN_BYTES
    if memo:
        entry = _load_index(directory).get(path)
        if (isinstance(entry, list) and len(entry) == 7 and
                entry[:5] == _stat_key(st) and
                max(st.st_mtime_ns, st.st_ctime_ns) + _RACY_NS <= entry[6]):
            return entry[5]
    started = time.time_ns()
    digest = hashlib.sha256()
    size = 0
    with open(path, 'rb') as f:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
            size += n
        after = os.fstat(f.fileno())
    _count('hashed_files')
    _count('hashed_bytes', size)
    sha = digest.hexdigest()
    if memo and _stat_key(after) == _stat_key(st):
        _remember(directory, path, _stat_key(st) + [sha, started])
    return sha


def _code_fingerprint() -> str:
    # The net's pickle names classes of this package: code changes without a
    # version bump (an editable checkout) must not reuse older entries.
    global _fingerprint
    if _fingerprint is None:
        package = pathlib.Path(chainer_finetune.__file__).parent
        digest = hashlib.sha256()
        # caffe/**: the layer types live in caffe/layers/.
        sources = sorted(package.glob('caffe/**/*.py'))
        for path in sources + [package / '_compat.py']:
            with contextlib.suppress(OSError):
                digest.update(path.name.encode() + b'\0' + path.read_bytes())
        _fingerprint = digest.hexdigest()[:16]
    return _fingerprint


_fingerprint: Optional[str] = None


def _versions() -> Dict[str, str]:
    import google.protobuf
    return {
        'chainer_finetune': chainer_finetune.__version__,
        'code': _code_fingerprint(),
        'chainer': chainer.__version__,
        'numpy': numpy.__version__.split('.')[0],
        'protobuf': google.protobuf.__version__.split('.')[0],
        'python': '{} {}.{}'.format(platform.python_implementation(),
                                    *sys.version_info[:2]),
    }


def cache_key(inputs: Sequence[Tuple[str, Optional[PathLike]]],
              options: Mapping[str, Any],
              directory: Optional[pathlib.Path] = None) -> str:
    """The entry key (hex SHA-256) for these input files and options.

    Args:
        inputs: ``(role, path or None)`` pairs, e.g. ``('model', path)``.
        options: JSON-serializable settings that change the result
            (``stop_at``).
        directory: Cache directory whose hash index may be used.

    Raises:
        OSError: if an input file cannot be read.
    """
    recipe = {
        'format': CACHE_FORMAT,
        'inputs': [[role, None if path is None else
                    file_sha256(path, directory)] for role, path in inputs],
        'options': options,
        'versions': _versions(),
    }
    text = json.dumps(recipe, sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def _entry_meta(key: Optional[str], source: Optional[str],
                options: Optional[Mapping[str, Any]] = None
                ) -> Dict[str, Any]:
    return {'key': key, 'source': source, 'options': options or {},
            'created': time.time(), 'versions': _versions()}


# --------------------------------------------------------------------------
# Loading through the cache
# --------------------------------------------------------------------------

def _open_entry(path: pathlib.Path) -> Optional[Tuple[BinaryIO, int]]:
    """Opens an entry for reading if it exists and may be trusted."""
    flags = os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0) | \
        getattr(os, 'O_BINARY', 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:   # O_NOFOLLOW met a symbolic link
            raise CorruptEntryError('{}: is a symbolic link; cache entries '
                                    'are read only from the cache '
                                    'directory itself'.format(path)) from None
        raise
    f = os.fdopen(fd, 'rb')
    st = os.fstat(fd)
    problem = (_private_problem(st) if stat.S_ISREG(st.st_mode)
               else 'not a regular file')
    if problem:
        f.close()
        raise CorruptEntryError('{}: is {}; not loading it'.format(path,
                                                                   problem))
    return f, st.st_size


def _try_entry(path: pathlib.Path, key: str) -> Optional[Any]:
    """The cached object, None without an entry; raises if it is bad."""
    opened = _open_entry(path)
    if opened is None:
        return None
    f, size = opened
    with f:
        obj, _ = _read_entry(f, size, os.fspath(path), key=key)
    return obj


def _remove_bad(path: pathlib.Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_symlink() or path.exists():
            path.unlink()


def cached(inputs: Sequence[Tuple[str, Optional[PathLike]]],
           options: Mapping[str, Any], build: Callable[[], T],
           source: str) -> T:
    """Returns ``build()``'s result through the cache.

    Used by ``load_caffe(..., cache=True)``. The entry is keyed by
    :func:`cache_key`; without a valid entry, ``build()`` runs (once across
    processes, under the entry's lock) and its result is stored.

    Args:
        inputs: ``(role, path or None)`` of every file ``build`` reads.
        options: JSON-serializable settings that change the result.
        build: Makes the object; its exceptions propagate.
        source: What is loaded, for messages and :func:`cache_info`.
    """
    directory = _usable_dir(create=True)
    if directory is None:
        return build()
    try:
        key = cache_key(inputs, options, directory)
    except OSError as e:
        # Unreadable inputs: let the loader report them its own way.
        logger.debug('cache skipped, cannot hash inputs: %s', e)
        return build()
    entry = directory / (key + '.pkl')
    start = time.perf_counter()
    reported = False
    try:
        obj = _try_entry(entry, key)
    except (CorruptEntryError, OSError) as e:
        logger.warning('cache entry for %s is unusable, rebuilding it: %s',
                       source, e)
        _count('corrupt')
        reported = True
        obj = None
    if obj is not None:
        return _hit(obj, source, entry, start)
    with contextlib.ExitStack() as stack:
        try:
            if stack.enter_context(_file_lock(directory / (key + '.lock'))):
                _count('waits')
        except OSError as e:   # includes LockTimeout
            logger.warning('cache lock not acquired (%s); loading without '
                           'cache', e)
            _count('errors')
            return build()
        # Another process may have written the entry while this one waited.
        try:
            obj = _try_entry(entry, key)
        except (CorruptEntryError, OSError) as e:
            if not reported:
                logger.warning('cache entry for %s is unusable, rebuilding '
                               'it: %s', source, e)
                _count('corrupt')
            _remove_bad(entry)
            obj = None
        if obj is not None:
            return _hit(obj, source, entry, start)
        _count('misses')
        logger.info('cache miss for %s', source)
        obj = build()
        _store(entry, obj, _entry_meta(key, source, options))
        return obj


def _hit(obj: T, source: str, entry: pathlib.Path, start: float) -> T:
    _count('hits')
    logger.info('cache hit for %s: %s in %.2f s', source, entry.name,
                time.perf_counter() - start)
    return obj


def _store(entry: pathlib.Path, obj: Any, meta: Mapping[str, Any]) -> None:
    start = time.perf_counter()
    try:
        _replace_atomically(entry, lambda f: _write_entry(f, obj, meta),
                            durable=True)
    except Exception as e:   # never fatal: the net itself is fine
        logger.warning('cannot write cache entry %s: %s: %s', entry,
                       type(e).__name__, e)
        _count('errors')
        return
    _count('writes')
    logger.info('cached %s as %s in %.2f s', meta.get('source'), entry.name,
                time.perf_counter() - start)


# --------------------------------------------------------------------------
# Introspection and cleanup
# --------------------------------------------------------------------------

class CacheEntry(NamedTuple):
    """One cache entry, described from its header (not unpickled).

    Attributes:
        path: The entry file.
        size: Its size in bytes.
        source: The files it was converted from.
        options: Settings such as ``stop_at``.
        created: When it was written (seconds since the epoch).
        versions: The versions it was written with.
        problem: Why it cannot be used, or None.
    """

    path: pathlib.Path
    size: int
    source: Optional[str]
    options: Dict[str, Any]
    created: Optional[float]
    versions: Dict[str, str]
    problem: Optional[str]


def cache_info() -> List[CacheEntry]:
    """The entries in :func:`cache_dir`, oldest first (headers only)."""
    directory = cache_dir()
    entries = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    for name in names:
        if not _ENTRY_RE.match(name):
            continue
        path = directory / name
        meta: Dict[str, Any] = {}
        problem = None
        try:
            with open(path, 'rb') as f:
                size = os.fstat(f.fileno()).st_size
                meta = _read_layout(f, size, name).meta
        except (OSError, CorruptEntryError) as e:
            size = path.stat().st_size if path.exists() else 0
            problem = str(e)
        entries.append(CacheEntry(path, size, meta.get('source'),
                                  meta.get('options') or {},
                                  meta.get('created'),
                                  meta.get('versions') or {}, problem))
    entries.sort(key=lambda e: e.created or 0)
    return entries


def verify_cache(remove: bool = True
                 ) -> List[Tuple[pathlib.Path, Optional[str]]]:
    """Checks every entry completely (all CRCs), without unpickling.

    Args:
        remove: Delete the entries that fail.

    Returns:
        list: ``(entry, problem or None)`` per entry.
    """
    directory = cache_dir()
    try:
        names = sorted(n for n in os.listdir(directory)
                       if _ENTRY_RE.match(n))
    except OSError:
        return []
    result = []
    for name in names:
        path = directory / name
        try:
            opened = _open_entry(path)
            if opened is None:
                continue
            f, size = opened
            with f:
                _read_entry(f, size, name, verify='only',
                            key=name[:-len('.pkl')])
            problem = None
        except (CorruptEntryError, OSError) as e:
            problem = str(e)
            logger.warning('corrupt cache entry: %s', problem)
            if remove:
                _remove_bad(path)
        result.append((path, problem))
    return result


def clear_cache() -> Tuple[int, int]:
    """Deletes every converted net in :func:`cache_dir`.

    Only files the cache made are removed (entries, locks, the hash index,
    leftover temporary files), so a ``CHAINER_FINETUNE_CACHE`` pointing at a
    directory holding other files is safe; fetched models are kept.

    Returns:
        tuple: ``(entries removed, bytes freed)``.
    """
    directory = cache_dir()
    removed = freed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0, 0
    for name in names:
        path = directory / name
        is_entry = bool(_ENTRY_RE.match(name))
        if not (is_entry or name.endswith('.lock') or
                name.endswith('.held') or name == _INDEX_NAME or
                (name.startswith('.') and name.endswith('.tmp'))):
            continue
        try:
            size = path.lstat().st_size
            path.unlink()
        except OSError as e:
            logger.warning('cannot remove %s: %s', path, e)
            continue
        if is_entry:
            removed += 1
            freed += size
    logger.info('cleared %d cache entries (%d bytes) from %s', removed,
                freed, directory)
    return removed, freed


__all__ = ['CACHE_FORMAT', 'CacheEntry', 'CacheStats', 'CorruptEntryError',
           'cache_dir', 'cache_info', 'cache_key', 'cache_root',
           'cache_stats', 'cached', 'clear_cache', 'file_sha256',
           'load_pickle', 'save_pickle', 'verify_cache']
