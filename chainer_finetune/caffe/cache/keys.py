"""What a cache entry is keyed by, and the versions it records.

The key is the SHA-256 of the input files' SHA-256s (:mod:`.index`), the
options that change the result (``stop_at``) and :func:`versions`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import pathlib
import platform
import sys
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import chainer
import numpy

from chainer_finetune._version import __version__
from chainer_finetune.caffe.cache.container import CACHE_FORMAT
from chainer_finetune.caffe.cache.index import file_sha256
from chainer_finetune.files import PathLike

# chainer_finetune/, found from this file (caffe/cache/keys.py) rather than
# by importing the package, which may still be importing.
_PACKAGE = pathlib.Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def _code_fingerprint() -> str:
    # Covers the Caffe code (caffe/ and its subpackages) and _compat.py.
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.glob('caffe/**/*.py')) + [
            _PACKAGE / '_compat.py']:
        with contextlib.suppress(OSError):
            name = path.relative_to(_PACKAGE).as_posix()
            digest.update(name.encode() + b'\0' + path.read_bytes())
    return digest.hexdigest()[:16]


def versions() -> Dict[str, str]:
    """The versions that decide whether an entry loads and what it holds.

    The fingerprint of the Caffe code (``code``) keeps an edited checkout
    from reusing nets built by older code.
    """
    import google.protobuf
    return {
        'chainer_finetune': __version__,
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
        'versions': versions(),
    }
    text = json.dumps(recipe, sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def entry_meta(key: Optional[str], source: Optional[str],
               options: Optional[Mapping[str, Any]] = None
               ) -> Dict[str, Any]:
    """The metadata an entry is written with (see :mod:`.container`)."""
    return {'key': key, 'source': source, 'options': options or {},
            'created': time.time(), 'versions': versions()}
