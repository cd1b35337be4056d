"""The file format of a cache entry: a checked container for a net pickle.

Layout: a fixed header (magic, format, length and CRC-32 of the metadata),
JSON metadata (key, source, versions, the length and CRC-32 of the pickle
stream, and of every 16 MiB chunk of the weights), the protocol 5 pickle,
then its out-of-band buffers (the arrays, 64-byte aligned). Reading loads
the buffers in parallel into NumPy-allocated memory and unpickles around
them: one copy of the weights, no gradients. Anything truncated, corrupt or
not in this format raises :class:`CorruptEntryError`.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import pickle
import struct
import threading
import zlib
from typing import (Any, BinaryIO, Dict, List, Mapping, NamedTuple, Optional,
                    Tuple, Union)

import chainer
import numpy

from chainer_finetune.errors import CaffeModelError

#: Version of the entry layout and of the key's recipe.
CACHE_FORMAT = 1

_MAGIC = b'CFNETPKL'
#: The fixed header: magic, format, metadata length, CRC-32 of the metadata.
HEADER = struct.Struct('<8sIII')
_MAX_META = 16 << 20
# Buffers start at multiples of this (cache lines; also keeps float data
# aligned in the file).
_ALIGN = 64
# Weights are checksummed (and read) in chunks of this size, in parallel.
_CRC_CHUNK = 16 << 20
_PICKLE_PROTOCOL = 5

_preadv = getattr(os, 'preadv', None)
_read_lock = threading.Lock()


class CorruptEntryError(CaffeModelError):
    """A cache entry or pickle file is truncated, corrupt or not ours."""


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


def write_entry(f: BinaryIO, obj: Any, meta: Mapping[str, Any]) -> None:
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
    f.write(HEADER.pack(_MAGIC, CACHE_FORMAT, len(meta_bytes),
                        zlib.crc32(meta_bytes)))
    f.write(meta_bytes)
    position = HEADER.size + len(meta_bytes)
    for view in [data] + views:
        start = _aligned(position)
        f.write(bytes(start - position))
        f.write(view)
        position = start + len(view)


class Layout(NamedTuple):
    """Where an entry's parts are, from its header and metadata."""

    meta: Dict[str, Any]
    pickle: Tuple[int, int, int]               # offset, length, crc32
    buffers: List[Tuple[int, int, List[int]]]  # offset, length, chunk crcs


def read_layout(f: BinaryIO, size: int, where: str) -> Layout:
    """Checks an entry's header, metadata and length (reads no weights)."""
    head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise CorruptEntryError('{}: truncated ({} bytes)'.format(where,
                                                                  size))
    magic, fmt, meta_len, meta_crc = HEADER.unpack(head)
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
        position = _aligned(HEADER.size + meta_len)
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
    return Layout(meta, pickled, buffers)


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


def read_entry(f: BinaryIO, size: int, where: str,
               verify: Union[bool, str] = False,
               key: Optional[str] = None) -> Tuple[Any, Dict[str, Any]]:
    """Reads and checks an entry, then unpickles it.

    The header, metadata, lengths and the pickle stream's CRC-32 are always
    checked.

    Args:
        f: The entry, open for binary reading.
        size: Its size in bytes.
        where: What to call it in messages.
        verify: Check the weights' CRCs too; ``'only'`` checks everything
            and unpickles nothing (the object is then None).
        key: The key the entry must have been written for.

    Returns:
        ``(object, metadata)``.

    Raises:
        CorruptEntryError: on any failed check or failed unpickling.
    """
    load = verify != 'only'
    layout = read_layout(f, size, where)
    if key is not None and layout.meta.get('key') != key:
        raise CorruptEntryError('{}: holds entry {}, not {}'.format(
            where, layout.meta.get('key'), key))
    offset, length, crc = layout.pickle
    f.seek(offset)
    data = f.read(length)
    if len(data) != length or zlib.crc32(data) != crc:
        raise CorruptEntryError('{}: corrupt pickle (checksum)'.format(where))
    arrays = _read_buffers(f, layout, where, load, bool(verify))
    if not load:
        return None, layout.meta
    try:
        obj = pickle.loads(data, buffers=arrays)
    except Exception as e:   # e.g. a class this version no longer has
        raise CorruptEntryError('{}: cannot unpickle: {}: {}'.format(
            where, type(e).__name__, e)) from None
    return obj, layout.meta


def _read_buffers(f: BinaryIO, layout: Layout, where: str, load: bool,
                  verify: bool) -> List[numpy.ndarray]:
    """Reads (when ``load``) and checks (when ``verify``) the weights."""
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
    return arrays
