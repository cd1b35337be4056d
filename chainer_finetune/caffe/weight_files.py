"""Pickle-free export of a converted net: Caffe blobs in HDF5 or NPZ.

:func:`save_weights` writes, per Caffe layer with parameters, the blobs
Caffe would store for it, computed back from the link by its layer type's
inverter, so reading the file is exactly reading a caffemodel's weights.
Chainer state without a Caffe blob (BatchNorm's ``N``) is stored as an
*extra*. Each layer is first rebuilt from its blobs and compared with its
link, so a file that would not load back the same is never written.
Guide: docs/cache_export.rst. Layout (the same keys in both formats)::

    meta                        JSON: format, version, net name, and per
                                layer its name, key, type, blob roles,
                                extras
    structure                   the net as prototxt text (layers without
                                blobs), so no prototxt is needed to load
    layers/<key>/blobs/<i>      blob i of the layer, float32, Caffe's shape
    layers/<key>/extras/<name>  a persistent value without a Caffe blob

HDF5 stores ``meta`` and ``structure`` as strings, ``name`` and ``type``
attributes per layer group and a ``role`` (``W``, ``b``...) per blob; NPZ
(no pickles, read with ``allow_pickle=False``) as UTF-8 ``uint8`` arrays.
``<key>`` is the layer name percent-encoded (RFC 3986) as UTF-8: every byte
but ``A-Z a-z 0-9 - _ . ~``, and a leading ``.``, becomes ``%XX``, so no key
holds ``/`` or names ``.``/``..``: ``conv1/7x7_s2`` is stored as
``layers/conv1%2F7x7_s2``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.parse
import zipfile
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

import chainer
import numpy
from google.protobuf import text_format

from chainer_finetune._version import __version__
from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe import layers as layer_builders
from chainer_finetune.caffe import upgrade
from chainer_finetune.caffe.layers import (
    InvertedBlob, float32_array, host_array)
from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.caffe.reader import Blob, CaffeModelFile, LayerRecord
from chainer_finetune.caffe.reader import open_regular_file
from chainer_finetune.errors import CaffeModelError, UnsupportedLayerError
# output_file: the name this module has always given the shared helper.
from chainer_finetune.files import atomic_output as output_file
from chainer_finetune.files import PathLike, ensure_absent

logger = logging.getLogger(__name__)

#: The ``format`` written in every file's metadata.
FORMAT = 'chainer_finetune.caffe_weights'
#: The layout version written and read.
FORMAT_VERSION = 1

_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'
_ZIP_SIGNATURES = (b'PK\x03\x04', b'PK\x05\x06')
_SUFFIXES = {'.h5': 'h5', '.hdf5': 'h5', '.hdf': 'h5', '.npz': 'npz'}


def encode_name(name: str) -> str:
    """The key a Caffe layer name is stored under (see the module doc).

    Raises:
        CaffeModelError: for an empty name.
    """
    if not name:
        raise CaffeModelError('cannot store a layer without a name')
    key = urllib.parse.quote(name, safe='', encoding='utf-8',
                             errors='strict')
    if key.startswith('.'):
        key = '%2E' + key[1:]
    return key


def decode_name(key: str) -> str:
    """The Caffe layer name of a key made by :func:`encode_name`."""
    return urllib.parse.unquote(key, encoding='utf-8', errors='strict')


class LayerWeights(NamedTuple):
    """The stored form of one layer.

    Attributes:
        name: The Caffe layer name.
        type: The Caffe layer type.
        blobs: Caffe's blobs (float32, Caffe's shapes and order).
        roles: What each blob holds (``W``, ``b``, ``avg_mean``...).
        extras: Persistent values of the link without a Caffe blob.
    """

    name: str
    type: str
    blobs: List[numpy.ndarray]
    roles: List[str]
    extras: Dict[str, numpy.ndarray]


def _value(value) -> numpy.ndarray:
    """A persistent value (array or Python scalar) as a NumPy array."""
    if isinstance(value, (bool, int, float)):
        return numpy.asarray(value)
    return host_array(value)


def _same(a, b) -> bool:
    if isinstance(a, numpy.ndarray) or isinstance(b, numpy.ndarray):
        a, b = numpy.asarray(a), numpy.asarray(b)
        if _same_memory(a, b):
            return True   # a rebuilt link wraps the blob it was given
        return a.shape == b.shape and numpy.array_equal(
            a, b, equal_nan=a.dtype.kind == 'f')
    return a == b


def _same_memory(a: numpy.ndarray, b: numpy.ndarray) -> bool:
    """Whether two arrays are views of the same values in the same
    layout (then equal without reading them: comparing a VGG-16's weights
    element by element takes seconds)."""
    return (a.__array_interface__['data'][0] ==
            b.__array_interface__['data'][0] and a.shape == b.shape and
            a.strides == b.strides and a.dtype == b.dtype)


def _check_rebuilds(layer: caffe_pb2.LayerParameter, link: chainer.Link,
                    out: List[InvertedBlob],
                    extras: Dict[str, numpy.ndarray],
                    where: str) -> None:
    """Rebuilds the layer from ``out`` and compares it with ``link``."""
    ctx = layer_builders.BuildContext(
        layer, [Blob(o.array, False) for o in out], where)
    try:
        rebuilt = layer_builders.build(ctx).link
    except CaffeModelError as e:
        raise CaffeModelError('cannot export: {}'.format(e)) from None
    mine = {n: float32_array(p) for n, p in link.namedparams()}
    theirs = {n: host_array(p) for n, p in rebuilt.namedparams()}
    problems = []
    if sorted(mine) != sorted(theirs):
        problems.append('parameters {} vs {} from the blobs'.format(
            sorted(mine), sorted(theirs)))
    else:
        problems += ['parameter {} differs'.format(n) for n in mine
                     if not _same(mine[n], theirs[n])]
    for name in sorted(link._persistent):
        if name not in extras and not _same(_value(getattr(link, name)),
                                            _value(getattr(rebuilt, name))):
            problems.append('persistent {} differs'.format(name))
    if problems:
        raise CaffeModelError(
            '{}: cannot export: its Caffe blobs would not load back to the '
            'same link ({}); was the link changed after loading?'.format(
                where, '; '.join(problems)))


def net_weights(net: CaffeNet, check: bool = True) -> List[LayerWeights]:
    """Every layer with parameters as Caffe blobs (what the file stores).

    Args:
        net: A net made by :func:`~chainer_finetune.caffe.load_caffe`.
        check: Rebuild each layer from its blobs and compare (costs one
            comparison pass over the weights).

    Raises:
        UnsupportedLayerError: a layer type with a link but no known blob
            layout.
        CaffeModelError: a link that its blobs would not rebuild (e.g.
            replaced or reshaped after loading).
    """
    result = []
    for layer in net.caffe_layers:
        if layer.name not in net.link_names:
            continue
        where = 'layer {!r} ({})'.format(layer.name, layer.type)
        link = net[layer.name]
        entry = layer_builders.find_layer_type(layer.type)
        inverter = None if entry is None else entry.invert
        if inverter is None:
            raise UnsupportedLayerError(
                '{}: cannot export: no Caffe blob layout is known for this '
                'type'.format(where))
        try:
            out = inverter(layer, link)
        except (AttributeError, CaffeModelError) as e:
            raise CaffeModelError('{}: cannot export: {}'.format(where, e)) \
                from None
        covered = {o.attr for o in out}
        extras = {name: _value(getattr(link, name))
                  for name in sorted(link._persistent)
                  if name not in covered}
        if check:
            _check_rebuilds(layer, link, out, extras, where)
        result.append(LayerWeights(layer.name, layer.type,
                                   [o.array for o in out],
                                   [o.role for o in out], extras))
    return result


def structure_text(net: CaffeNet) -> str:
    """The net's layers (without blobs) as prototxt text."""
    message = caffe_pb2.NetParameter(name=net.name or '')
    layers = net.caffe_layers
    declared = {top for layer in layers for top in layer.top}
    undeclared = [name for name in net.inputs if name not in declared]
    if undeclared:
        # Otherwise they would be bottoms nothing produces when read back.
        message.layer.append(upgrade.training_input_layer(undeclared))
    message.layer.extend(layers)
    return text_format.MessageToString(message)


def weights_format(path: PathLike) -> Optional[str]:
    """``'h5'`` or ``'npz'`` from a file's first bytes, else None."""
    try:
        # Only a regular file: opening a FIFO with open() waits forever.
        _, f, _ = open_regular_file(path, 'file')
    except CaffeModelError:
        return None
    with f:
        head = f.read(8)
    if head == _HDF5_SIGNATURE:
        return 'h5'
    if head[:4] in _ZIP_SIGNATURES:
        return 'npz'
    return None


def _format_of(path: str, format: Optional[str]) -> str:
    if format is not None:
        fmt = {'hdf5': 'h5'}.get(format.lower(), format.lower())
        if fmt not in ('h5', 'npz'):
            raise ValueError("format must be 'h5' or 'npz', not {!r}".format(
                format))
        return fmt
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _SUFFIXES:
        raise ValueError(
            '{}: cannot tell the format from the suffix {!r}; use .h5 or '
            '.npz (or format=); for a pickle use cache.save_pickle'.format(
                path, suffix))
    return _SUFFIXES[suffix]


def save_weights(net: CaffeNet, path: PathLike, *, overwrite: bool = False,
                 format: Optional[str] = None) -> None:
    """Writes a net's weights by Caffe layer name, without pickle.

    Every parameter and persistent value is stored (see the module doc for
    the layout and the name encoding); load the file with
    ``load_caffe(prototxt=..., weights=path)`` or ``load_caffe(weights=path)``
    (the file also holds the net's structure).

    Args:
        net: A net made by :func:`~chainer_finetune.caffe.load_caffe`
            (fine-tuned or not; CPU or GPU).
        path: The output file, ``.h5``/``.hdf5`` (HDF5, h5py) or ``.npz``.
        overwrite: Replace an existing file.
        format: ``'h5'`` or ``'npz'``, overriding the suffix.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        ValueError: an unknown suffix or format.
        CaffeModelError: a layer whose link cannot be stored as Caffe blobs.
    """
    path = os.fspath(path)
    fmt = _format_of(path, format)
    if not overwrite:
        ensure_absent(path)   # before the work, not only after it
    layers = net_weights(net)
    meta = json.dumps({
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'chainer_finetune': __version__,
        'net_name': net.name or '',
        'name_encoding': 'RFC 3986 percent-encoding of UTF-8; unreserved '
                         'characters kept except a leading "."',
        'layers': [{'name': w.name, 'key': encode_name(w.name),
                    'type': w.type, 'blobs': w.roles,
                    'extras': sorted(w.extras)} for w in layers],
    }, indent=1)
    structure = structure_text(net)
    with output_file(path, overwrite) as tmp:
        if fmt == 'h5':
            _write_h5(tmp, net, layers, meta, structure)
        else:
            _write_npz(tmp, layers, meta, structure)
    logger.info('wrote %s: %d layers, %d blobs', path, len(layers),
                sum(len(w.blobs) for w in layers))


def _items(layers: List[LayerWeights]):
    for w in layers:
        key = 'layers/' + encode_name(w.name)
        for i, (array, role) in enumerate(zip(w.blobs, w.roles)):
            yield '{}/blobs/{}'.format(key, i), array, role
        for name, value in w.extras.items():
            yield '{}/extras/{}'.format(key, name), value, None


def _write_h5(path: str, net: CaffeNet, layers: List[LayerWeights],
              meta: str, structure: str) -> None:
    import h5py
    with h5py.File(path, 'w') as f:
        f.attrs['format'] = FORMAT
        f.attrs['format_version'] = FORMAT_VERSION
        f.attrs['net_name'] = net.name or ''
        f.create_dataset('meta', data=meta)
        f.create_dataset('structure', data=structure)
        for w in layers:
            group = f.create_group('layers/' + encode_name(w.name))
            group.attrs['name'] = w.name
            group.attrs['type'] = w.type
        for key, array, role in _items(layers):
            dataset = f.create_dataset(key, data=array)
            if role is not None:
                dataset.attrs['role'] = role


def _write_npz(path: str, layers: List[LayerWeights], meta: str,
               structure: str) -> None:
    # numpy.savez's own scheme (a zip of .npy files), written here to pass
    # allow_pickle=False on every NumPy version and to stream each array.
    def text(s: str) -> numpy.ndarray:
        return numpy.frombuffer(s.encode('utf-8'), dtype=numpy.uint8)

    entries = [('meta', text(meta)), ('structure', text(structure))]
    entries += [(key, array) for key, array, _ in _items(layers)]
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED,
                         allowZip64=True) as zf:
        for key, array in entries:
            with zf.open(key + '.npy', 'w', force_zip64=True) as f:
                numpy.lib.format.write_array(f, numpy.asarray(array),
                                             allow_pickle=False)


class WeightsFile(NamedTuple):
    """What :func:`read_weights` found.

    Attributes:
        path: The file.
        format: ``'h5'`` or ``'npz'``.
        net_name: The net's name.
        structure: The stored net (layers without blobs), or None.
        layers: The stored layers, in file order.
    """

    path: str
    format: str
    net_name: str
    structure: Optional[caffe_pb2.NetParameter]
    layers: List[LayerWeights]


def read_weights(path: PathLike,
                 progress: Optional[Callable[[int, int], None]] = None
                 ) -> WeightsFile:
    """Reads a file written by :func:`save_weights` (no pickle involved).

    Args:
        path: The ``.h5`` or ``.npz`` file (recognized by content).
        progress: Called as ``progress(bytes_done, bytes_total)`` per layer.

    Raises:
        CaffeModelError: missing, unreadable, not this format, or
            inconsistent.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CaffeModelError('{}: weights file not found'.format(path))
    fmt = weights_format(path)
    if fmt is None:
        raise CaffeModelError(
            '{}: not a weights file written by save_weights (neither HDF5 '
            'nor NPZ)'.format(path))
    total = os.path.getsize(path)
    try:
        with _open_arrays(path, fmt) as get:
            return _read(path, fmt, get, total, progress)
    except CaffeModelError:
        raise
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile,
            EOFError) as e:
        raise CaffeModelError('{}: unreadable weights file: {}: {}'.format(
            path, type(e).__name__, e)) from None


@contextlib.contextmanager
def _open_arrays(path: str, fmt: str
                 ) -> Iterator[Callable[[str], numpy.ndarray]]:
    if fmt == 'h5':
        import h5py
        with h5py.File(path, 'r') as f:
            def get(key):
                dataset = f[key]
                if dataset.dtype.kind in 'SOU':
                    return dataset.asstr()[()]
                return dataset[()]
            yield get
    else:
        with numpy.load(path, allow_pickle=False) as npz:
            def get(key):
                array = npz[key]
                if key in ('meta', 'structure'):
                    return array.tobytes().decode('utf-8')
                return array
            yield get


def _read(path: str, fmt: str, get: Callable[[str], numpy.ndarray],
          total: int, progress) -> WeightsFile:
    try:
        meta = json.loads(get('meta'))
    except KeyError:
        raise CaffeModelError('{}: no `meta` entry; not a file written by '
                              'save_weights'.format(path)) from None
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        raise CaffeModelError('{}: not a {} file'.format(path, FORMAT))
    if meta.get('format_version') != FORMAT_VERSION:
        raise CaffeModelError(
            '{}: format version {}, this chainer_finetune reads {}'.format(
                path, meta.get('format_version'), FORMAT_VERSION))
    structure = None
    with contextlib.suppress(KeyError):
        text = get('structure')
        structure = caffe_pb2.NetParameter()
        try:
            text_format.Parse(text, structure)
        except text_format.ParseError as e:
            raise CaffeModelError('{}: stored structure is not a valid '
                                  'prototxt: {}'.format(path, e)) from None
    layers = []
    done = 0
    seen = set()
    for entry in meta.get('layers', []):
        name, key = entry['name'], entry['key']
        if decode_name(key) != name or name in seen:
            raise CaffeModelError('{}: layer key {!r} does not match name '
                                  '{!r} or repeats'.format(path, key, name))
        seen.add(name)
        prefix = 'layers/{}/'.format(key)
        blobs = []
        for i in range(len(entry['blobs'])):
            array = get('{}blobs/{}'.format(prefix, i))
            if not isinstance(array, numpy.ndarray) or \
                    array.dtype.kind not in 'fiu':
                raise CaffeModelError('{}: layer {!r} blob {} is not a '
                                      'numeric array'.format(path, name, i))
            blobs.append(numpy.ascontiguousarray(array, numpy.float32))
            done += array.nbytes
        extras = {extra: numpy.asarray(get(prefix + 'extras/' + extra))
                  for extra in entry.get('extras', [])}
        layers.append(LayerWeights(name, entry.get('type', ''), blobs,
                                   list(entry['blobs']), extras))
        if progress is not None:
            progress(min(done, total), total)
    return WeightsFile(path, fmt, meta.get('net_name', ''), structure, layers)


def model_file(weights: WeightsFile, with_structure: bool = True
               ) -> CaffeModelFile:
    """The weights file as the reader's :class:`CaffeModelFile`.

    Args:
        weights: What :func:`read_weights` returned.
        with_structure: Use the stored structure (needed when no prototxt
            is given); otherwise one bare record per stored layer.

    Raises:
        CaffeModelError: ``with_structure`` but the file holds none.
    """
    blobs = {w.name: [Blob(b, False) for b in w.blobs]
             for w in weights.layers}
    net = caffe_pb2.NetParameter(name=weights.net_name)
    if not with_structure:
        layers = [caffe_pb2.LayerParameter(name=w.name, type=w.type)
                  for w in weights.layers]
    elif weights.structure is None:
        raise CaffeModelError('{}: holds no net structure; pass the '
                              'prototxt'.format(weights.path))
    else:
        net.name = weights.structure.name or weights.net_name
        layers = weights.structure.layer
    records = [LayerRecord(layer, blobs.pop(layer.name, []))
               for layer in layers]
    if blobs:
        logger.debug('%s: weights of layers not in its structure ignored: '
                     '%s', weights.path, ', '.join(sorted(blobs)))
    return CaffeModelFile(weights.path, net, records, 2)


def apply_extras(net: CaffeNet, weights: WeightsFile) -> None:
    """Restores the stored persistent values without a Caffe blob.

    Layers the net does not have (``stop_at``) are skipped.

    Raises:
        CaffeModelError: a stored value that does not fit its link.
    """
    for w in weights.layers:
        if not w.extras or w.name not in net.link_names:
            continue
        link = net[w.name]
        for name, value in w.extras.items():
            if name not in link._persistent:
                raise CaffeModelError(
                    '{}: layer {!r} has no persistent value {!r}'.format(
                        weights.path, w.name, name))
            current = getattr(link, name)
            if isinstance(current, numpy.ndarray):
                if current.shape != value.shape:
                    raise CaffeModelError(
                        '{}: layer {!r} {} has shape {}, expected {}'.format(
                            weights.path, w.name, name, value.shape,
                            current.shape))
                value = value.astype(current.dtype)
            elif isinstance(current, (bool, int, float)) and value.ndim == 0:
                value = type(current)(value.item())
            setattr(link, name, value)


__all__ = ['FORMAT', 'FORMAT_VERSION', 'LayerWeights', 'WeightsFile',
           'apply_extras', 'decode_name', 'encode_name', 'model_file',
           'net_weights', 'output_file', 'read_weights', 'save_weights',
           'structure_text', 'weights_format']
