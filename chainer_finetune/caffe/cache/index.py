"""The SHA-256 of the cache's input files, remembered by file identity.

Hashing a 550 MB file takes 0.4-0.9 s, longer than loading its cache entry
(0.2-0.3 s), so a file's SHA-256 is remembered in ``hashes.json`` in the
cache directory, keyed by its real path, device, inode, size, modification
and change times (ns): any write changes the change time, so an edited file
is hashed again. As in git's "racily clean" rule, a hash computed less than
``_RACY_NS`` after the file's last change is not trusted.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import Dict, List, Optional

from chainer_finetune.caffe.cache.stats import count
from chainer_finetune.files import (
    PathLike, atomic_output, file_lock, sha256_of)

logger = logging.getLogger(__name__)

#: The index's file name inside the cache directory.
INDEX_NAME = 'hashes.json'
_INDEX_MAX = 512
# Files below this size are hashed every time: cheaper than the index.
_MEMO_MIN_BYTES = 1 << 20
# A remembered hash is trusted only for files last changed this long before
# it was computed (coarse timestamps: FAT 2 s, HFS+ 1 s).
_RACY_NS = 3_000_000_000


def _stat_key(st: os.stat_result) -> List[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _load_index(directory: pathlib.Path) -> Dict[str, List]:
    try:
        with open(directory / INDEX_NAME, 'rb') as f:
            index = json.loads(f.read().decode('utf-8'))
        files = index['files'] if index.get('version') == 1 else {}
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return {}


def _remember(directory: pathlib.Path, path: str, entry: List) -> None:
    try:
        with file_lock(directory / (INDEX_NAME + '.lock'), timeout=10):
            files = _load_index(directory)
            files[path] = entry
            if len(files) > _INDEX_MAX:   # forget the least recently hashed
                for old in sorted(files, key=lambda p: files[p][-1])[
                        :len(files) - _INDEX_MAX]:
                    del files[old]
            data = json.dumps({'version': 1, 'files': files}).encode()
            # A lost index only costs hashing again: no fsync.
            with atomic_output(directory / INDEX_NAME, overwrite=True,
                               mode=0o600, durable=False) as tmp:
                pathlib.Path(tmp).write_bytes(data)
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
    sha = sha256_of(path)
    count('hashed_files')
    count('hashed_bytes', st.st_size)
    # Remembered only if the file did not change while it was read.
    if memo and _stat_key(os.stat(path)) == _stat_key(st):
        _remember(directory, path, _stat_key(st) + [sha, started])
    return sha
