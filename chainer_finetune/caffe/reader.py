"""Read Caffe files: binary caffemodels, text prototxts, binaryproto means.

A caffemodel is scanned at the wire-format level rather than parsed whole:
layer descriptions go through protobuf, each blob's packed floats are read
straight from the file into their final array (about one copy of the
weights in memory), and every length is checked against the bytes that
remain before anything is read or allocated (docs/loading.rst).

Fields the schema lacks (a fork's or a newer Caffe's) never make reading
fail: protobuf keeps them as unknown fields of a caffemodel and skips them
in a prototxt, and each is logged once per layer as a warning.
"""

from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
from typing import (BinaryIO, Callable, Dict, List, NamedTuple, Optional,
                    Sequence, Tuple, Union)

import numpy
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import text_format

try:
    from google.protobuf.unknown_fields import UnknownFieldSet
except ImportError:   # protobuf < 4.22
    def UnknownFieldSet(msg):  # noqa: N802  (the class's name)
        return msg.UnknownFields()

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.wire import (
    BLOB_DATA, BLOB_DOUBLE_DATA, BLOB_LEGACY_DIMS, BLOB_RAW_DATA,
    BLOB_RAW_DATA_TYPE, BLOB_SHAPE, FIXED32, FIXED64, LAYER_BLOBS, LAYER_NAME,
    LEN, NET_LAYER, NET_LAYERS, RAW_DATA_DTYPES, V1_LAYER_BLOBS, V1_LAYER_NAME,
    V1_LAYER_V0, VARINT, WireFormatError, decode_varint)
from chainer_finetune.errors import CaffeModelError
from chainer_finetune.files import NotARegularFileError, open_regular

logger = logging.getLogger(__name__)

PathLike = Union[str, 'os.PathLike[str]']


class Blob(NamedTuple):
    """One stored blob.

    Attributes:
        array: The values, shaped as the file says.
        legacy: True when the shape came from the 4-D ``num, channels,
            height, width`` fields, which Caffe compares to a layer's
            expected shape after left-padding that shape with ones (so an
            InnerProduct weight stored as ``(1, 1, out, in)`` is fine).
    """

    array: numpy.ndarray
    legacy: bool


class LayerRecord(NamedTuple):
    """A layer as stored: its description (without blobs) and its blobs."""

    param: Union[caffe_pb2.LayerParameter, caffe_pb2.V1LayerParameter]
    blobs: List[Blob]


class CaffeModelFile(NamedTuple):
    """What :func:`read_caffemodel` found in a binary file.

    Attributes:
        path: The file read.
        net: The net-level fields (name, inputs, state); ``layer`` and
            ``layers`` are empty, see ``layers``.
        layers: One record per stored layer, in file order.
        version: 2 for ``layer`` (current) layers, 1 for ``layers`` (V1).
    """

    path: str
    net: caffe_pb2.NetParameter
    layers: List[LayerRecord]
    version: int


class _Field(NamedTuple):
    number: int
    wire_type: int
    start: int      # offset of the tag
    value_start: int
    end: int        # one past the last byte of the field
    value: int      # the varint or fixed value; the length for LEN


class _Scanner:
    """Walks protobuf fields in a byte buffer, checking every length."""

    def __init__(self, buf: Union[bytes, mmap.mmap, memoryview],
                 path: str) -> None:
        self.buf = buf
        self.path = path

    def _bad_varint(self, e: WireFormatError, what: str) -> CaffeModelError:
        problem = 'truncated {}' if e.truncated else 'malformed varint in {}'
        return self.error(e.offset, problem.format(what))

    def error(self, offset: int, what: str) -> CaffeModelError:
        return CaffeModelError('{}: not a valid Caffe binary: {} at byte '
                               'offset {}'.format(self.path, what, offset))

    def fields(self, start: int, end: int, what: str):
        """Yields the fields of the message stored in ``buf[start:end]``."""
        # The hot loop of reading: locals and no helper calls on purpose.
        buf = self.buf
        pos = start
        while pos < end:
            try:
                tag, value_start = decode_varint(buf, pos, end)
            except WireFormatError as e:
                raise self._bad_varint(e, what + ' field tag') from None
            number, wire_type = tag >> 3, tag & 7
            if number == 0:
                raise self.error(pos, 'field number 0 in ' + what)
            if wire_type == VARINT or wire_type == LEN:
                try:
                    value, field_end = decode_varint(buf, value_start, end)
                except WireFormatError as e:
                    raise self._bad_varint(e, what) from None
                if wire_type == LEN:
                    value_start = field_end
                    field_end = value_start + value
                    if field_end > end:
                        raise self.error(
                            pos, 'field {} of {} declares {} bytes but only '
                                 '{} remain (truncated file?)'.format(
                                     number, what, value, end - value_start))
            elif wire_type in (FIXED32, FIXED64):
                size = 4 if wire_type == FIXED32 else 8
                field_end = value_start + size
                if field_end > end:
                    raise self.error(pos, 'truncated fixed-size field {} of '
                                          '{}'.format(number, what))
                value = 0
            else:
                raise self.error(pos, 'unsupported wire type {} (field {}) '
                                      'in {}'.format(wire_type, number, what))
            yield _Field(number, wire_type, pos, value_start, field_end,
                         value)
            pos = field_end


_UTF16_32_BOMS = ((b'\xff\xfe\0\0', 'UTF-32'), (b'\0\0\xfe\xff', 'UTF-32'),
                  (b'\xff\xfe', 'UTF-16'), (b'\xfe\xff', 'UTF-16'))


def _mostly_printable(text: str) -> bool:
    printable = sum(c.isprintable() or c in '\t\r\n' for c in text)
    return printable >= 0.98 * len(text)


def _other_text_encoding(head: bytes) -> Optional[str]:
    """What text ``head`` is when it is text but not UTF-8, else None."""
    for bom, name in _UTF16_32_BOMS:
        if head.startswith(bom):
            return name + ' text (it starts with a byte order mark)'
    for codec in ('utf-16-le', 'utf-16-be'):
        # ASCII text in UTF-16 without a byte order mark: every other byte
        # is zero.
        zeros = head[1::2] if codec.endswith('le') else head[0::2]
        if zeros and zeros.count(0) >= 0.9 * len(zeros):
            text = head[:len(head) // 2 * 2].decode(codec, 'replace')
            if _mostly_printable(text):
                return 'UTF-16 text ({})'.format(codec[7:].upper() +
                                                 ' without a byte order mark')
    if head and b'\0' not in head and \
            _mostly_printable(head.decode('latin-1')):
        try:
            head.decode('utf-8')
        except UnicodeDecodeError as e:
            if e.start < len(head) - 3:   # not a character cut at the end
                return ('text in an 8-bit encoding such as Latin-1 (byte '
                        '0x{:02x} at offset {} is not UTF-8)'.format(
                            head[e.start], e.start))
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head or b'\0' in head:
        return False
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the end of the sample.
        try:
            text = head[:-3].decode('utf-8')
        except UnicodeDecodeError:
            return False
    return _mostly_printable(text)


def open_regular_file(path: PathLike, kind: str
                      ) -> Tuple[str, BinaryIO, int]:
    """Opens a model file for reading, refusing anything but a regular file.

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` before
    anything is read, so that a named pipe, a device or a directory given
    by mistake is an error at once instead of a read that waits forever.
    Virtual files (``/proc``, ``/sys``) that report a size of 0 yet hold
    text are refused too: a model is never one.

    Args:
        path: The file.
        kind: What the file should be (``'binary caffemodel'``), for
            messages.

    Returns:
        tuple: ``(path as str, the open binary file, its size in bytes)``.

    Raises:
        CaffeModelError: the file is missing, unreadable, not a regular
            file, or empty.
    """
    path = os.fspath(path)
    try:
        f, info = open_regular(path)
    except FileNotFoundError:
        raise CaffeModelError('{}: {} not found'.format(path, kind)) from None
    except NotARegularFileError as e:
        raise CaffeModelError('{}: cannot open {}: it is {}, not a regular '
                              'file'.format(path, kind, e.what)) from None
    except OSError as e:
        raise CaffeModelError('{}: cannot open {}: {}'.format(
            path, kind, e.strerror or e)) from None
    if info.st_size == 0:
        with f:
            virtual = bool(f.read(1))
        if virtual:
            raise CaffeModelError(
                '{}: a virtual file (size 0 yet not empty, as in /proc or '
                '/sys), expected a {}'.format(path, kind))
        raise CaffeModelError('{}: empty file, expected a {}'.format(path,
                                                                     kind))
    return path, f, info.st_size


def _read_blob(scanner: _Scanner, f: BinaryIO, start: int, end: int,
               where: str) -> Blob:
    """Reads the blob submessage ``buf[start:end]`` of an open caffemodel."""
    legacy: Dict[int, int] = {}
    shape: Optional[List[int]] = None
    runs: Dict[int, List[_Field]] = {BLOB_DATA: [], BLOB_DOUBLE_DATA: []}
    raw: Optional[_Field] = None
    raw_type = caffe_pb2.DOUBLE   # the proto2 default of raw_data_type
    for field in scanner.fields(start, end, where):
        if field.number in BLOB_LEGACY_DIMS and field.wire_type == VARINT:
            # int32 fields: protobuf keeps the low 32 bits, signed.
            value = field.value & 0xFFFFFFFF
            legacy[field.number] = value - (value >> 31 << 32)
        elif field.number == BLOB_SHAPE and field.wire_type == LEN:
            shape_msg = caffe_pb2.BlobShape()
            _parse_message(shape_msg,
                           bytes(scanner.buf[field.value_start:field.end]),
                           scanner.path, where + ' shape')
            shape = list(shape_msg.dim)
        elif field.number in runs:
            if field.wire_type != LEN:
                # Unpacked values (very old writers): one field per value,
                # far too many to walk here.
                return _read_blob_with_protobuf(scanner, start, end, where)
            if field.value:
                runs[field.number].append(field)
        elif field.number == BLOB_RAW_DATA and field.wire_type == LEN:
            raw = field   # a `bytes` field: the last one wins
        elif field.number == BLOB_RAW_DATA_TYPE and field.wire_type == VARINT:
            raw_type = field.value
    # Several packed runs of one field concatenate; rare enough to leave to
    # protobuf, like unpacked values.
    if any(len(r) > 1 for r in runs.values()):
        return _read_blob_with_protobuf(scanner, start, end, where)
    dims = [legacy.get(i, 0) for i in BLOB_LEGACY_DIMS] if legacy else shape
    # Caffe's Blob::FromProto takes `double_data` when it holds values,
    # else `data`; OpenCV reads NVIDIA's `raw_data` when both are empty.
    run = (runs[BLOB_DOUBLE_DATA] or runs[BLOB_DATA] or [raw])[0]
    is_raw = run is not None and run is raw
    blob_where = '{}: {}'.format(scanner.path, where)
    if is_raw:
        dtype = raw_data_dtype(raw_type, blob_where)
    else:
        dtype = numpy.dtype('<f8' if run is not None and
                            run.number == BLOB_DOUBLE_DATA else '<f4')
    nbytes = run.value if run is not None else 0
    count = _value_count(nbytes, dtype, is_raw, blob_where)
    _check_blob_count(dims if dims is not None else [count], count,
                      blob_where)
    array = numpy.empty(count, dtype=dtype)
    if nbytes:
        f.seek(run.value_start)
        if f.readinto(memoryview(array).cast('B')) != nbytes:
            raise CaffeModelError('{}: {}: file ended while reading blob '
                                  'data'.format(scanner.path, where))
    array = array.astype(numpy.float32, copy=False)
    warn_not_finite(array, blob_where)
    return Blob(array.reshape(array.shape if dims is None else dims),
                bool(legacy))


def _read_blob_with_protobuf(scanner: _Scanner, start: int, end: int,
                             where: str) -> Blob:
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(bytes(scanner.buf[start:end]))
    except pb_message.DecodeError as e:
        raise CaffeModelError('{}: {}: cannot parse blob: {}'.format(
            scanner.path, where, e)) from None
    return blob_from_proto(blob, '{}: {}'.format(scanner.path, where))


def raw_data_dtype(raw_type: int, where: str) -> numpy.dtype:
    """The little-endian dtype of a blob's ``raw_data``.

    Args:
        raw_type: The blob's ``raw_data_type`` (a ``caffe_pb2.Type`` value).
        where: File, layer and blob, for the error message.

    Raises:
        CaffeModelError: for a type that holds no floats (INT, UINT) or a
            value the schema does not define.
    """
    dtype = RAW_DATA_DTYPES.get(raw_type)
    if dtype is None:
        name = (caffe_pb2.Type.Name(raw_type)
                if raw_type in caffe_pb2.Type.values() else str(raw_type))
        raise CaffeModelError(
            '{}: raw_data of type {} is not supported (only FLOAT16, FLOAT '
            'and DOUBLE hold weights)'.format(where, name))
    return numpy.dtype(dtype)


def _value_count(nbytes: int, dtype: numpy.dtype, raw: bool,
                 where: str) -> int:
    if nbytes % dtype.itemsize:
        what = ('raw_data' if raw else 'packed data')
        raise CaffeModelError(
            '{}: {} of {} bytes is not a whole number of {}-byte '
            'values'.format(where, what, nbytes, dtype.itemsize))
    return nbytes // dtype.itemsize


def _check_blob_count(dims: List[int], count: int, where: str) -> None:
    if any(d < 0 for d in dims):
        raise CaffeModelError('{}: blob shape {} has a negative '
                              'dimension'.format(where, tuple(dims)))
    expected = 1
    for d in dims:
        expected *= d
    if expected != count:
        raise CaffeModelError(
            '{}: blob shape {} holds {} values but the file stores {}'.format(
                where, tuple(dims), expected, count))


def blob_from_proto(blob: caffe_pb2.BlobProto, where: str) -> Blob:
    """Converts a parsed ``BlobProto`` to a :class:`Blob` (float32).

    Args:
        blob: The message.
        where: File and layer, for error messages.

    Raises:
        CaffeModelError: if the shape does not match the number of values.
    """
    legacy = any(blob.HasField(f) for f in ('num', 'channels', 'height',
                                            'width'))
    if legacy:
        dims = [blob.num, blob.channels, blob.height, blob.width]
    elif blob.HasField('shape'):
        dims = list(blob.shape.dim)
    else:
        dims = None
    if not len(blob.data) and not len(blob.double_data) and \
            blob.HasField('raw_data'):
        dtype = raw_data_dtype(blob.raw_data_type, where)
        count = _value_count(len(blob.raw_data), dtype, True, where)
        array = numpy.frombuffer(blob.raw_data, dtype, count)
        array = array.astype(numpy.float32)
    else:
        # As Caffe's Blob::FromProto: double_data first when present.
        values = blob.double_data if len(blob.double_data) else blob.data
        # upb's repeated scalar fields expose a buffer: this is one memcpy.
        array = numpy.asarray(values, dtype=numpy.float32)
    if dims is None:
        dims = [array.size]
    _check_blob_count(dims, array.size, where)
    warn_not_finite(array, where)
    return Blob(array.reshape(dims), legacy)


def warn_not_finite(array: numpy.ndarray, where: str) -> None:
    """Logs a warning when ``array`` holds NaN or infinite values.

    Such weights load (Caffe loads them too) but make every output they
    reach NaN; the warning names the blob (``where``) so that a broken
    file is found before training on it.
    """
    if numpy.isfinite(array).all():
        return
    nan = int(numpy.isnan(array).sum())
    logger.warning('%s: holds %d NaN and %d infinite values of %d',
                   where, nan, int(numpy.isinf(array).sum()), array.size)


def _parse_message(msg: pb_message.Message, data: bytes, path: str,
                   where: str) -> None:
    try:
        msg.ParseFromString(data)
    except (pb_message.DecodeError, UnicodeDecodeError) as e:
        # The pure-Python backend raises UnicodeDecodeError for bad UTF-8.
        raise CaffeModelError('{}: not a valid Caffe binary: cannot parse {} '
                              '({})'.format(path, where, e)) from None
    _check_text(msg, path, where)


def _check_text(msg: pb_message.Message, path: str, where: str) -> None:
    # upb does not validate UTF-8 in proto2 `string` fields: it hands the
    # value back as bytes, which fails far away (in str.join, re.sub...).
    for field, value in msg.ListFields():
        if field.type == field.TYPE_STRING:
            for v in [value] if isinstance(value, (str, bytes)) else value:
                if not isinstance(v, str):
                    raise CaffeModelError(
                        '{}: not a valid Caffe binary: {} field {!r} is not '
                        'UTF-8 text: {!r}'.format(
                            path, where, field.name, v[:64]))
        elif field.type == field.TYPE_MESSAGE:
            if isinstance(value, pb_message.Message):
                value = [value]
            for v in value:
                _check_text(v, path, where)


def unknown_varint(msg: pb_message.Message, number: int) -> Optional[int]:
    """The value of field ``number`` that protobuf kept among the unknown
    fields of ``msg`` (an enum value the schema lacks: protobuf then reads
    the field as its default), or None; the last one when repeated."""
    found = None
    for field in UnknownFieldSet(msg):
        if field.field_number == number and field.wire_type == VARINT:
            found = field.data
    return found


def _layer_name(scanner: _Scanner, start: int, end: int, version: int) -> str:
    name_field = LAYER_NAME if version == 2 else V1_LAYER_NAME
    for field in scanner.fields(start, end, 'layer'):
        if field.number == name_field and field.wire_type == LEN:
            raw = bytes(scanner.buf[field.value_start:field.end])
            return raw.decode('utf-8', 'replace')
    return '?'


def read_caffemodel(path: PathLike,
                    progress: Optional[Callable[[int, int], None]] = None
                    ) -> CaffeModelFile:
    """Reads a binary ``.caffemodel`` (V1 or V2 ``NetParameter``).

    Args:
        path: The file.
        progress: Called as ``progress(bytes_done, bytes_total)`` after
            each layer is read (for a progress display).

    Returns:
        CaffeModelFile: The net-level fields and every layer with its blobs
        as float32 arrays.

    Raises:
        CaffeModelError: if the file is missing, empty, truncated, not a
            binary Caffe net (e.g. a text prototxt), holds a blob whose
            shape does not match its values, or uses the V0 format.
    """
    path, f, size = open_regular_file(path, 'binary caffemodel')
    with f:
        head = f.read(4096)
        if _looks_like_text(head):
            raise CaffeModelError(
                '{}: this is a text file (a prototxt?), expected a binary '
                'caffemodel; pass a prototxt as prototxt='.format(path))
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            if e.errno != errno.ENOMEM:
                raise
            # The address space is exhausted (ulimit -v): say which file.
            raise MemoryError('{}: cannot map its {:,} bytes into memory '
                              '({})'.format(path, size, e.strerror)) from e
        with mapped as buf:
            return _read_net(buf, f, path, size, progress)


def _cut_layer(scanner: _Scanner, pos: int, size: int, index: int) -> str:
    """Names the layer a bad top-level field at ``pos`` starts, if any."""
    try:
        tag, pos = decode_varint(scanner.buf, pos, size)
    except WireFormatError:
        return ''
    if tag >> 3 not in (NET_LAYER, NET_LAYERS) or tag & 7 != LEN:
        return ''
    try:
        _, pos = decode_varint(scanner.buf, pos, size)
        name = _layer_name(scanner, pos, size,
                           2 if tag >> 3 == NET_LAYER else 1)
    except (WireFormatError, CaffeModelError):
        name = '?'
    return '; in layer {} ({!r})'.format(index, name)


def _read_net(buf: mmap.mmap, f: BinaryIO, path: str, size: int,
              progress: Optional[Callable[[int, int], None]] = None
              ) -> CaffeModelFile:
    scanner = _Scanner(buf, path)
    header = bytearray()
    spans: List[Tuple[int, int, int]] = []   # field, start, end
    last_end = 0
    try:
        for field in scanner.fields(0, size, 'NetParameter'):
            if field.number in (NET_LAYER, NET_LAYERS) and \
                    field.wire_type == LEN:
                spans.append((field.number, field.value_start, field.end))
            else:
                header += buf[field.start:field.end]
            last_end = field.end
    except CaffeModelError as e:
        raise CaffeModelError('{}{}'.format(e, _cut_layer(
            scanner, last_end, size, len(spans)))) from None
    versions = {number for number, _, _ in spans}
    if not spans:
        raise CaffeModelError('{}: not a Caffe model: no layers found in '
                              '{} bytes'.format(path, size))
    if versions == {NET_LAYER, NET_LAYERS}:
        raise CaffeModelError('{}: mixes V1 (`layers`) and V2 (`layer`) '
                              'layers; Caffe cannot load that either'
                              .format(path))
    version = 2 if NET_LAYER in versions else 1
    net = caffe_pb2.NetParameter()
    _parse_message(net, bytes(header), path, 'the net header')
    _warn_unknown(path, 'net', _unknown_binary_fields(net))
    blobs_field = LAYER_BLOBS if version == 2 else V1_LAYER_BLOBS
    layers = []
    for index, (_, start, end) in enumerate(spans):
        name = _layer_name(scanner, start, end, version)
        where = 'layer {} ({!r})'.format(index, name)
        rest = bytearray()
        blob_spans = []
        for field in scanner.fields(start, end, where):
            if field.number == blobs_field and field.wire_type == LEN:
                blob_spans.append((field.value_start, field.end))
            elif version == 1 and field.number == V1_LAYER_V0:
                raise CaffeModelError(
                    '{}: {} is in the V0 format (2013); upgrade it with '
                    "Caffe's upgrade_net_proto_binary first".format(path,
                                                                  where))
            else:
                rest += buf[field.start:field.end]
        param = (caffe_pb2.LayerParameter() if version == 2
                 else caffe_pb2.V1LayerParameter())
        _parse_message(param, bytes(rest), path, where)
        _warn_unknown(path, _layer_label(param),
                      _unknown_binary_fields(param))
        blobs = [_read_blob(scanner, f, s, e, '{}, blob {}'.format(where, i))
                 for i, (s, e) in enumerate(blob_spans)]
        layers.append(LayerRecord(param, blobs))
        if progress is not None:
            progress(end, size)
    logger.debug('%s: %d V%d layers, %d blobs', path, len(layers), version,
                 sum(len(r.blobs) for r in layers))
    return CaffeModelFile(path, net, layers, version)


# Where an unknown field sits: the NetParameter field of its layer
# ('layer' or 'layers') and the layer's index there, or None at net level.
LayerSlot = Optional[Tuple[str, int]]


class _UnknownTextFields:
    """Finds the fields of a text NetParameter that the schema lacks.

    Walks the text's tokens against the schema's descriptors, only as far
    as the structure goes (values are protobuf's business: this runs after
    protobuf parsed the text with unknown fields allowed).
    """

    def __init__(self, text: str) -> None:
        self.tokens = text_format.Tokenizer(text.splitlines())
        # (layer, dotted field path, where in the text)
        self.found: List[Tuple[LayerSlot, str, str]] = []
        self.layer_counts = {'layer': 0, 'layers': 0}

    def walk(self) -> List[Tuple[LayerSlot, str, str]]:
        self._message(caffe_pb2.NetParameter.DESCRIPTOR, None, '', None)
        return self.found

    def _message(self, descriptor: Optional[pb_descriptor.Descriptor],
                 end: Optional[str], path: str, slot: LayerSlot) -> None:
        tokens = self.tokens
        while not (tokens.AtEnd() if end is None else tokens.LookingAt(end)):
            name = tokens.token
            tokens.NextToken()
            field = None
            if descriptor is not None:
                field = descriptor.fields_by_name.get(name)
                if field is None:
                    at = tokens.ParseErrorPreviousToken('')
                    self.found.append((slot, path + name, ' (line {}:{})'
                                       .format(at.GetLine(), at.GetColumn())))
            tokens.TryConsume(':')
            sub = field.message_type if field is not None else None
            at_net_level = descriptor is caffe_pb2.NetParameter.DESCRIPTOR
            container = (name if at_net_level and name in self.layer_counts
                         else None)
            self._value(sub, path + name + '.', slot, container)
            if not tokens.TryConsume(','):
                tokens.TryConsume(';')

    def _value(self, sub: Optional[pb_descriptor.Descriptor], path: str,
               slot: LayerSlot, container: Optional[str]) -> None:
        tokens = self.tokens
        if tokens.TryConsume('['):   # short repeated form: [a, b, ...]
            while not tokens.TryConsume(']'):
                self._value(sub, path, slot, container)
                tokens.TryConsume(',')
        elif tokens.LookingAt('{') or tokens.LookingAt('<'):
            close = '}' if tokens.token == '{' else '>'
            tokens.NextToken()
            if container is not None:
                slot = (container, self.layer_counts[container])
                self.layer_counts[container] += 1
                path = ''
            self._message(sub, close, path, slot)
            tokens.Consume(close)
        else:
            if tokens.token == '-':
                tokens.NextToken()
            tokens.NextToken()
            # Adjacent string literals are one value.
            while tokens.token[:1] in ('"', "'"):
                tokens.NextToken()


def _unknown_binary_fields(msg: pb_message.Message, path: str = ''
                           ) -> List[str]:
    """Dotted paths (numbers for the unknown part) of the unknown fields
    protobuf kept in ``msg`` and its sub-messages."""
    found = [path + str(f.field_number) for f in UnknownFieldSet(msg)]
    for field, value in msg.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for v in ([value] if isinstance(value, pb_message.Message)
                      else value):
                found += _unknown_binary_fields(v, path + field.name + '.')
    return found


def _layer_label(layer: Union[caffe_pb2.LayerParameter,
                              caffe_pb2.V1LayerParameter]) -> str:
    if isinstance(layer, caffe_pb2.V1LayerParameter):
        type_name = caffe_pb2.V1LayerParameter.LayerType.Name(layer.type) \
            if layer.type in caffe_pb2.V1LayerParameter.LayerType.values() \
            else str(layer.type)
    else:
        type_name = layer.type
    return 'layer {!r} ({})'.format(layer.name, type_name)


def _warn_unknown(path: str, where: str, fields: Sequence[str],
                  positions: Sequence[str] = ()) -> None:
    """Logs each unknown field once for its layer (``where``), with the
    position of its first occurrence where given."""
    first: Dict[str, str] = {}
    for field, position in itertools.zip_longest(fields, positions,
                                                 fillvalue=''):
        first.setdefault(field, position)
    for field, position in first.items():
        logger.warning("%s: %s: unknown field '%s' skipped%s", path, where,
                       field, position)


def _warn_unknown_text_fields(path: str, text: str,
                              net: caffe_pb2.NetParameter) -> None:
    by_slot: Dict[LayerSlot, List[Tuple[str, str]]] = {}
    for slot, field, position in _UnknownTextFields(text).walk():
        by_slot.setdefault(slot, []).append((field, position))
    for slot, found in by_slot.items():
        where = 'net' if slot is None else _layer_label(
            getattr(net, slot[0])[slot[1]])
        fields, positions = zip(*found)
        _warn_unknown(path, where, fields, positions)


def read_prototxt(path: PathLike) -> caffe_pb2.NetParameter:
    """Reads a text ``.prototxt`` net description (V1 or V2).

    Fields the schema lacks are skipped, each logged once per layer as a
    warning (``"deploy.prototxt: layer 'x' (Type): unknown field 'foo'
    skipped"``).

    Raises:
        CaffeModelError: if the file is missing, empty, binary (e.g. a
            caffemodel) or not a valid text ``NetParameter``; the message
            carries protobuf's line and column.
    """
    path, f, _ = open_regular_file(path, 'text prototxt')
    with f:
        raw = f.read()
    if not _looks_like_text(raw[:4096]):
        encoding = _other_text_encoding(raw[:4096])
        if encoding is not None:
            raise CaffeModelError(
                '{}: not UTF-8 text: this is {}; save the prototxt as '
                'UTF-8'.format(path, encoding))
        raise CaffeModelError(
            '{}: this is a binary file (a caffemodel?), expected a text '
            'prototxt'.format(path))
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as e:
        raise CaffeModelError('{}: not UTF-8 text: {}'.format(path, e)) \
            from None
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError:
        # Perhaps only fields the schema lacks: parse again skipping them.
        net = caffe_pb2.NetParameter()
        try:
            text_format.Parse(text, net, allow_unknown_field=True)
        except text_format.ParseError as e:
            raise CaffeModelError('{}: not a valid Caffe prototxt: '
                                  '{}'.format(path, e)) from None
        _warn_unknown_text_fields(path, text, net)
    if not net.layer and not net.layers:
        raise CaffeModelError('{}: prototxt defines no layers'.format(path))
    return net


def read_binaryproto(path: PathLike) -> Blob:
    """Reads a ``.binaryproto`` file holding one ``BlobProto`` (a mean).

    Raises:
        CaffeModelError: if the file is missing, empty, not a BlobProto, or
            its shape does not match its values.
    """
    path, f, _ = open_regular_file(path, 'binaryproto (BlobProto) file')
    with f:
        raw = f.read()
    if _looks_like_text(raw[:4096]):
        raise CaffeModelError('{}: this is a text file, expected a binary '
                              'BlobProto (.binaryproto)'.format(path))
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(raw)
    except pb_message.DecodeError as e:
        raise CaffeModelError('{}: not a valid BlobProto: {}'.format(
            path, e)) from None
    if not len(blob.data) and not len(blob.double_data) and \
            not blob.HasField('raw_data'):
        raise CaffeModelError('{}: holds no BlobProto values; expected a '
                              'binary BlobProto (a mean.binaryproto), not a '
                              'caffemodel or other file'.format(path))
    return blob_from_proto(blob, path)
