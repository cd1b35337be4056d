"""Files on disk: the cache root, atomic writes, a lock, a file's SHA-256.

Shared by the converted-net cache (:mod:`chainer_finetune.caffe.cache`), the
fetcher of pretrained files (:mod:`chainer_finetune.hub`) and
:func:`chainer_finetune.save_weights`. Nothing here imports Chainer or knows
about Caffe.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pathlib
import stat
import time
from typing import BinaryIO, Iterator, Tuple, Union

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:   # POSIX
    msvcrt = None

PathLike = Union[str, 'os.PathLike[str]']

#: How long :func:`file_lock` waits by default, in seconds.
LOCK_TIMEOUT_S = 600.0


def cache_root() -> pathlib.Path:
    """chainer_finetune's per-user cache root (``nets/``, ``models/``).

    ``$CHAINER_FINETUNE_CACHE`` when set and not empty, else
    ``$XDG_CACHE_HOME/chainer_finetune``, ``XDG_CACHE_HOME`` defaulting to
    ``~/.cache`` (a relative ``XDG_CACHE_HOME`` is ignored, as the XDG spec
    asks). A ``~`` in ``CHAINER_FINETUNE_CACHE`` is expanded. Not created
    here.
    """
    root = os.environ.get('CHAINER_FINETUNE_CACHE')
    if root:
        return pathlib.Path(os.path.expanduser(root))
    xdg = os.environ.get('XDG_CACHE_HOME')
    if not xdg or not os.path.isabs(xdg):
        xdg = os.path.join(os.path.expanduser('~'), '.cache')
    return pathlib.Path(xdg) / 'chainer_finetune'


def ensure_absent(path: PathLike) -> None:
    """Refuses to go on when ``path`` exists (a dangling link included).

    Raises:
        FileExistsError: ``path`` exists.
    """
    path = os.fspath(path)
    if os.path.lexists(path):
        raise _exists(path)


def _exists(path: str) -> FileExistsError:
    return FileExistsError('{}: already exists; pass overwrite=True (CLI: '
                           '--force) to replace it'.format(path))


def temp_name(final: PathLike) -> str:
    """A fresh hidden name next to ``final``: ``.NAME.PID.RANDOM.tmp``."""
    directory, name = os.path.split(os.path.abspath(os.fspath(final)))
    return os.path.join(directory, '.{}.{}.{}.tmp'.format(
        name, os.getpid(), os.urandom(4).hex()))


@contextlib.contextmanager
def atomic_output(path: PathLike, overwrite: bool = False, *,
                  mode: int = 0o666, durable: bool = True) -> Iterator[str]:
    """Yields a temporary path next to ``path``, moved there on success.

    Write the (new, empty, exclusively created) temporary file by name. A
    reader never sees a partial file: if the block raises, it is removed
    and ``path`` is left as it was. Without ``overwrite`` it is hard-linked
    into place, which fails if ``path`` appeared meanwhile; with it, moved
    with :func:`os.replace`.

    Args:
        path: The final file.
        overwrite: Replace an existing ``path``.
        mode: Permissions of the new file, before the umask (``0o600`` for a
            private file).
        durable: fsync the file before moving it into place (and its
            directory after), so that a crash cannot leave a complete name
            with incomplete contents.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = os.fspath(path)
    if not overwrite:
        ensure_absent(path)
    tmp = temp_name(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                     getattr(os, 'O_BINARY', 0), mode))
    try:
        yield tmp
        if durable:
            _fsync(tmp, os.O_RDWR | getattr(os, 'O_BINARY', 0))
        _move_into_place(tmp, path, overwrite)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    if durable and os.name == 'posix':
        # Makes the new name itself durable; POSIX only (Windows cannot open
        # a directory), and best effort: some file systems refuse it.
        with contextlib.suppress(OSError):
            _fsync(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)


def _move_into_place(tmp: str, path: str, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)   # leaves tmp, removed by the caller
    except FileExistsError:
        raise _exists(path) from None
    except OSError:   # no hard links here (FAT, some network shares)
        ensure_absent(path)
        os.replace(tmp, path)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LockTimeout(OSError):
    """Another process held a lock for longer than the timeout."""


@contextlib.contextmanager
def file_lock(path: PathLike,
              timeout: float = LOCK_TIMEOUT_S) -> Iterator[bool]:
    """Holds an exclusive lock on the file ``path`` (created if needed).

    ``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows. The lock is
    released when the block ends, or by the system when the process dies.

    Args:
        path: The lock file.
        timeout: Seconds to wait for another holder before giving up.

    Yields:
        bool: Whether the lock had to be waited for.

    Raises:
        LockTimeout: The lock was held for over ``timeout`` seconds.
    """
    path = os.fspath(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        waited = _acquire(fd, path, timeout)
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


def _acquire(fd: int, path: str, timeout: float) -> bool:
    """Locks ``fd``, polling with backoff; returns whether it waited."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    waited = False
    while True:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return waited
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


def file_type(mode: int) -> str:
    """What a non-regular file is (``'a directory'``...), for messages."""
    for test, name in ((stat.S_ISDIR, 'a directory'),
                       (stat.S_ISFIFO, 'a named pipe (FIFO)'),
                       (stat.S_ISSOCK, 'a socket'),
                       (stat.S_ISCHR, 'a character device'),
                       (stat.S_ISBLK, 'a block device')):
        if test(mode):
            return name
    return 'not a regular file'


def open_regular(path: PathLike, flags: int = 0
                 ) -> Tuple[BinaryIO, os.stat_result]:
    """Opens a regular file for binary reading, never blocking on a FIFO.

    The file is opened with ``O_NONBLOCK`` (so a FIFO or a device cannot
    hang the open), checked with ``fstat`` on the open descriptor (so what
    is checked is what is read), then switched back to blocking reads.

    Args:
        path: The file.
        flags: Extra ``os.open`` flags, e.g. ``os.O_NOFOLLOW``.

    Returns:
        ``(file, its stat)``.

    Raises:
        NotARegularFileError: ``path`` is a directory, FIFO, socket or
            device.
        OSError: it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) |
                 getattr(os, 'O_BINARY', 0) | flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(path, file_type(st.st_mode))
        if hasattr(os, 'set_blocking'):
            os.set_blocking(fd, True)
        return os.fdopen(fd, 'rb'), st
    except BaseException:
        os.close(fd)
        raise


class NotARegularFileError(OSError):
    """A directory, FIFO, socket or device where a file was expected.

    Attributes:
        path (str): The path.
        what (str): What it is (:func:`file_type`).
    """

    def __init__(self, path: PathLike, what: str) -> None:
        self.path, self.what = os.fspath(path), what
        super().__init__('{}: is {}, not a regular file'.format(self.path,
                                                               what))


def sha256_of(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 of a file, lowercase hex.

    Args:
        path: The file.
        chunk_size: Bytes read at a time (one buffer, reused).
    """
    digest = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    f, _ = open_regular(path)
    with f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


__all__ = ['LOCK_TIMEOUT_S', 'LockTimeout', 'NotARegularFileError',
           'atomic_output', 'cache_root', 'ensure_absent', 'file_lock',
           'file_type', 'open_regular', 'sha256_of', 'temp_name']
