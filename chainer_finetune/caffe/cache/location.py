"""Where converted nets live, and whether a file there may be trusted.

Entries are pickles, which run code when loaded: they are only read from
:func:`cache_dir`, created private (0700); on POSIX the directory and each
entry must be the current user's and not writable by others, and a
symbolic link in place of an entry is refused.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import stat
from typing import BinaryIO, Optional, Tuple

from chainer_finetune.caffe.cache.container import CorruptEntryError
from chainer_finetune.caffe.cache.stats import count
from chainer_finetune.files import (
    NotARegularFileError, cache_root, open_regular)

logger = logging.getLogger(__name__)


def cache_dir() -> pathlib.Path:
    """The directory of converted nets: ``cache_root() / 'nets'``.

    The only place cache entries are read from. Not created here.
    """
    return cache_root() / 'nets'


def private_problem(st: os.stat_result) -> Optional[str]:
    """Why a file or directory may not be trusted, or None."""
    if os.name != 'posix':
        return None
    if st.st_uid != os.getuid():
        return 'owned by uid {}, not by the current user'.format(st.st_uid)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return 'writable by other users (mode {:o})'.format(
            stat.S_IMODE(st.st_mode))
    return None


def usable_dir(create: bool) -> Optional[pathlib.Path]:
    """The cache directory if it may be used (created when asked).

    Problems are logged at WARNING and counted as errors (when creating).
    """
    directory = cache_dir()
    try:
        if create and not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # https://bford.info/cachedir/: backup tools skip this directory.
            tag = directory.parent / 'CACHEDIR.TAG'
            if not tag.exists():
                with contextlib.suppress(OSError):
                    tag.write_text(
                        'Signature: 8a477f597d28d172789f06886806bc55\n# '
                        'chainer_finetune cache: converted nets and fetched '
                        'models.\n')
        st = os.stat(directory)
    except OSError as e:
        if create:
            logger.warning('cache directory %s is not usable (%s); loading '
                           'without cache', directory, e)
            count('errors')
        return None
    problem = (private_problem(st) if stat.S_ISDIR(st.st_mode)
               else 'not a directory')
    if problem:
        logger.warning('cache directory %s is %s; not using it (entries are '
                       'pickles, which run code when loaded)', directory,
                       problem)
        count('errors')
        return None
    return directory


def open_entry(path: pathlib.Path) -> Optional[Tuple[BinaryIO, int]]:
    """Opens an entry for reading if it exists and may be trusted.

    Only a regular file is opened (a FIFO in its place cannot hang the
    open: see :func:`~chainer_finetune.files.open_regular`).

    Returns:
        ``(file, size)``, or None when there is no entry.

    Raises:
        CorruptEntryError: a symbolic link, not a regular file (a
            directory, FIFO...), or not private to the current user.
    """
    try:
        f, st = open_regular(path, getattr(os, 'O_NOFOLLOW', 0))
    except FileNotFoundError:
        return None
    except NotARegularFileError as e:
        raise CorruptEntryError('{}; not loading it'.format(e)) from None
    except OSError as e:
        if e.errno == errno.ELOOP:   # O_NOFOLLOW met a symbolic link
            raise CorruptEntryError('{}: is a symbolic link; cache entries '
                                    'are read only from the cache '
                                    'directory itself'.format(path)) from None
        raise
    problem = private_problem(st)
    if problem:
        f.close()
        raise CorruptEntryError('{}: is {}; not loading it'.format(path,
                                                                   problem))
    return f, st.st_size


def remove_bad(path: pathlib.Path) -> None:
    """Deletes a damaged entry (or a link in its place), quietly."""
    with contextlib.suppress(OSError):
        path.unlink()
