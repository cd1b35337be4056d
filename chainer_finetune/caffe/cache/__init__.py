"""A per-user cache of converted networks: ``load_caffe(..., cache=True)``.

Where entries live, why they are trusted, what keys them and how they are
written: docs/cache_export.rst, and the parts :mod:`.location`,
:mod:`.keys`, :mod:`.index`, :mod:`.container`, :mod:`.stats`. This module
holds the policy: when to read, build, write, list and remove entries. A
bad entry is logged at WARNING and rebuilt; cache trouble (unwritable
directory, full disk) only costs the conversion, never fatal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import re
import threading
import time
from typing import (Any, Callable, Dict, List, Mapping, NamedTuple, Optional,
                    Sequence, Set, Tuple, TypeVar)

from chainer_finetune.caffe.cache.container import (
    CACHE_FORMAT, CorruptEntryError, read_entry, read_layout, write_entry)
from chainer_finetune.caffe.cache.index import INDEX_NAME, file_sha256
from chainer_finetune.caffe.cache.keys import cache_key, entry_meta
from chainer_finetune.caffe.cache.location import (
    cache_dir, open_entry, remove_bad, usable_dir)
from chainer_finetune.caffe.cache.stats import CacheStats, cache_stats, count
from chainer_finetune.errors import CaffeModelError
from chainer_finetune.files import (
    LockTimeout, NotARegularFileError, PathLike, atomic_output, cache_root,
    file_lock, open_regular)

logger = logging.getLogger(__name__)

T = TypeVar('T')

#: Check the CRC-32 of every weight chunk on every load of an entry. Off by
#: default, the weights of an entry are then checked on its first hit in a
#: process only (per file identity: a rewritten entry is checked again):
#: the check costs about 0.17 s per 553 MB (docs/cache_export.rst), so a
#: flipped byte is never served to a fresh process, and a process loading
#: the same net again does not pay twice. The header, lengths and pickle
#: stream are always checked; :func:`verify_cache` checks everything.
VERIFY_WEIGHTS = False
# Identities (device, inode, size, mtime) of the entries whose weights this
# process has checked.
_verified: Set[Tuple[int, int, int, int]] = set()
_verified_lock = threading.Lock()
_ENTRY_RE = re.compile(r'^[0-9a-f]{64}\.pkl$')
# atomic_output's temporary files (files.temp_name) of entries and index.
_TEMP_RE = re.compile(r'^\.([0-9a-f]{64}\.pkl|' + re.escape(INDEX_NAME) +
                      r')\.[0-9]+\.[0-9a-f]+\.tmp$')


def _try_entry(path: pathlib.Path, key: str, source: str,
               warn: bool) -> Tuple[Optional[Any], bool]:
    """``(cached object or None, whether the entry was bad)``."""
    try:
        opened = open_entry(path)
        if opened is None:
            return None, False
        f, size = opened
        with f:
            st = os.fstat(f.fileno())
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            with _verified_lock:
                verify = VERIFY_WEIGHTS or identity not in _verified
            obj = read_entry(f, size, os.fspath(path), verify, key=key)[0]
        if verify:
            with _verified_lock:
                _verified.add(identity)
        return obj, False
    except (CorruptEntryError, OSError) as e:
        if warn:
            logger.warning('cache entry for %s is unusable, rebuilding it: '
                           '%s', source, e)
            count('corrupt')
        return None, True


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
    directory = usable_dir(create=True)
    if directory is None:
        return build()
    try:
        # Taken before hashing: a file replaced (or rewritten) between the
        # hash and the build shows as another identity afterwards.
        identities = _identities(inputs)
        key = cache_key(inputs, options, directory)
    except OSError as e:
        # Unreadable inputs: let the loader report them its own way.
        logger.debug('cache skipped, cannot hash inputs: %s', e)
        return build()
    entry = directory / (key + '.pkl')
    start = time.perf_counter()
    obj, reported = _try_entry(entry, key, source, warn=True)
    if obj is not None:
        return _hit(obj, source, entry, start)
    with contextlib.ExitStack() as stack:
        try:
            if stack.enter_context(file_lock(directory / (key + '.lock'))):
                count('waits')
        except OSError as e:   # includes LockTimeout
            logger.warning('cache lock not acquired (%s); loading without '
                           'cache', e)
            count('errors')
            return build()
        # Another process may have written the entry while this one waited.
        obj, bad = _try_entry(entry, key, source, warn=not reported)
        if obj is not None:
            return _hit(obj, source, entry, start)
        if bad:
            remove_bad(entry)
        count('misses')
        logger.info('cache miss for %s', source)
        obj = build()
        changed = _identities(inputs) != identities
        if changed:
            # The net may be built from other bytes than the key's.
            logger.warning('%s changed while it was loaded; not caching '
                           'the result', source)
            count('errors')
        else:
            _store(entry, obj, entry_meta(key, source, options))
        return obj


def _identities(inputs: Sequence[Tuple[str, Optional[PathLike]]]
                ) -> List[Optional[Tuple[int, ...]]]:
    """Each input file's identity: device, inode, size, mtime, ctime."""
    result = []
    for _, path in inputs:
        st = None if path is None else os.stat(path)
        result.append(None if st is None else (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns))
    return result


def _hit(obj: T, source: str, entry: pathlib.Path, start: float) -> T:
    count('hits')
    logger.info('cache hit for %s: %s in %.2f s', source, entry.name,
                time.perf_counter() - start)
    return obj


def _lock_of(final: str) -> str:
    """The lock its writer holds while writing ``final``."""
    return (final[:-len('.pkl')] if _ENTRY_RE.match(final) else final) + \
        '.lock'


def orphaned_temp_files(held: Optional[str] = None
                        ) -> List[Tuple[pathlib.Path, int]]:
    """Temporary files left in :func:`cache_dir` by killed writers.

    A writer holds the lock of what it writes for the whole life of its
    temporary file, so a temporary file whose lock is free (or is
    ``held``, by the caller) has no living writer.

    Args:
        held: The name of a lock file the caller holds.

    Returns:
        list: ``(path, size in bytes)`` per orphan.
    """
    directory = cache_dir()
    orphans = []
    for name in _names(directory, entries_only=False):
        match = _TEMP_RE.match(name)
        if match is None:
            continue
        lock = _lock_of(match.group(1))
        try:
            if lock != held:
                with file_lock(directory / lock, timeout=0):
                    pass
            size = (directory / name).lstat().st_size
        except OSError:   # a writer holds it (LockTimeout), or it is gone
            continue
        orphans.append((directory / name, size))
    return orphans


def _remove_orphans(held: str) -> None:
    for path, size in orphaned_temp_files(held):
        try:
            path.unlink()
        except OSError as e:
            logger.debug('cannot remove %s: %s', path, e)
            continue
        logger.info('removed %s (%d bytes), left by a killed writer',
                    path.name, size)


def _store(entry: pathlib.Path, obj: Any, meta: Mapping[str, Any]) -> None:
    start = time.perf_counter()
    # Called under the entry's lock.
    _remove_orphans(held=_lock_of(entry.name))
    try:
        # Private (0600), and fsync'ed before it is moved into place.
        with atomic_output(entry, overwrite=True, mode=0o600) as tmp:
            with open(tmp, 'wb') as f:
                write_entry(f, obj, meta)
    except Exception as e:   # never fatal: the net itself is fine
        logger.warning('cannot write cache entry %s: %s: %s', entry,
                       type(e).__name__, e)
        count('errors')
        return
    count('writes')
    logger.info('cached %s as %s in %.2f s', meta.get('source'), entry.name,
                time.perf_counter() - start)


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


def _names(directory: pathlib.Path, entries_only: bool = True
           ) -> List[str]:
    """The sorted names in ``directory`` (only entries' by default)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [n for n in names if not entries_only or _ENTRY_RE.match(n)]


def cache_info() -> List[CacheEntry]:
    """The entries in :func:`cache_dir`, oldest first (headers only)."""
    directory = cache_dir()
    entries = []
    for name in _names(directory):
        path = directory / name
        meta: Dict[str, Any] = {}
        problem = None
        size = 0
        try:
            opened = open_entry(path)
            if opened is None:   # removed meanwhile
                continue
            f, size = opened
            with f:
                meta = read_layout(f, size, name).meta
        except (OSError, CorruptEntryError) as e:
            problem = str(e)
            with contextlib.suppress(OSError):
                size = size or path.lstat().st_size
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
    result = []
    for name in _names(directory):
        path = directory / name
        try:
            opened = open_entry(path)
            if opened is None:
                continue
            f, size = opened
            with f:
                read_entry(f, size, name, verify='only',
                           key=name[:-len('.pkl')])
            problem = None
        except (CorruptEntryError, OSError) as e:
            problem = str(e)
            logger.warning('corrupt cache entry: %s', problem)
            if remove:
                remove_bad(path)
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
    for name in _names(directory, entries_only=False):
        path = directory / name
        is_entry = bool(_ENTRY_RE.match(name))
        if not (is_entry or name.endswith('.lock') or
                name.endswith('.held') or name == INDEX_NAME or
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


def save_pickle(net: Any, path: PathLike, *, overwrite: bool = False
                ) -> None:
    """Writes a net as a pickle in the cache's entry format.

    A checked container (:mod:`.container`) of ``net`` without gradients,
    read back only by :func:`load_pickle` (or the cache).

    Args:
        net: The net (any picklable object); CPU arrays load anywhere, GPU
            arrays only where CuPy is.
        path: The output file.
        overwrite: Replace an existing file; without it an existing file
            raises :class:`FileExistsError`.
    """
    with atomic_output(path, overwrite) as tmp:
        with open(tmp, 'wb') as f:
            write_entry(f, net, entry_meta(None, None))


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
        f, st = open_regular(path)
    except NotARegularFileError as e:
        raise CaffeModelError(str(e)) from None
    except OSError as e:
        raise CaffeModelError('{}: cannot open: {}'.format(
            path, e.strerror or e)) from None
    with f:
        obj, _ = read_entry(f, st.st_size, path, verify)
    return obj


__all__ = ['CACHE_FORMAT', 'CacheEntry', 'CacheStats', 'CorruptEntryError',
           'LockTimeout', 'cache_dir', 'cache_info', 'cache_key',
           'cache_root', 'cache_stats', 'cached', 'clear_cache',
           'file_sha256', 'load_pickle', 'orphaned_temp_files',
           'save_pickle', 'verify_cache']
