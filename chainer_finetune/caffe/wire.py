"""The protobuf wire format of Caffe files, for reading and for writing.

A ``.caffemodel`` is one serialized ``NetParameter``. The reader
(:mod:`chainer_finetune.caffe.reader`) scans it field by field instead of
parsing it whole, and the writer (:mod:`chainer_finetune.caffe.writer`)
streams it field by field instead of serializing it whole; both rely on the
facts gathered here: the wire types, the numbers of the fields they walk
(taken from the generated schema, not typed again), and base-128 varints
(https://protobuf.dev/programming-guides/encoding/).
"""

from __future__ import annotations

import mmap
from typing import Tuple, Union

from chainer_finetune.caffe import caffe_pb2

# Wire types: the low three bits of a field's key.
VARINT = 0
FIXED64 = 1
LEN = 2       # length-delimited: strings, messages, packed repeated values
FIXED32 = 5

# The fields the reader scans and the writer streams itself; every other
# field goes through protobuf.
NET_LAYER = caffe_pb2.NetParameter.LAYER_FIELD_NUMBER          # V2 `layer`
NET_LAYERS = caffe_pb2.NetParameter.LAYERS_FIELD_NUMBER        # V1 `layers`
LAYER_NAME = caffe_pb2.LayerParameter.NAME_FIELD_NUMBER
LAYER_BLOBS = caffe_pb2.LayerParameter.BLOBS_FIELD_NUMBER
V1_LAYER_NAME = caffe_pb2.V1LayerParameter.NAME_FIELD_NUMBER
V1_LAYER_BLOBS = caffe_pb2.V1LayerParameter.BLOBS_FIELD_NUMBER
# V1LayerParameter.layer: a whole V0 (2013) layer inside a V1 one.
V1_LAYER_V0 = caffe_pb2.V1LayerParameter.LAYER_FIELD_NUMBER
BLOB_LEGACY_DIMS = tuple(
    getattr(caffe_pb2.BlobProto, name.upper() + '_FIELD_NUMBER')
    for name in ('num', 'channels', 'height', 'width'))
BLOB_DATA = caffe_pb2.BlobProto.DATA_FIELD_NUMBER
BLOB_SHAPE = caffe_pb2.BlobProto.SHAPE_FIELD_NUMBER
BLOB_DOUBLE_DATA = caffe_pb2.BlobProto.DOUBLE_DATA_FIELD_NUMBER
# NVIDIA Caffe's raw blob bytes and their element type (caffe.Type).
BLOB_RAW_DATA = caffe_pb2.BlobProto.RAW_DATA_FIELD_NUMBER
BLOB_RAW_DATA_TYPE = caffe_pb2.BlobProto.RAW_DATA_TYPE_FIELD_NUMBER
# The raw_data element types that hold floats, as little-endian NumPy
# dtypes (OpenCV reads FLOAT16 and FLOAT; DOUBLE is read like `double_data`).
RAW_DATA_DTYPES = {
    caffe_pb2.FLOAT16: '<f2',
    caffe_pb2.FLOAT: '<f4',
    caffe_pb2.DOUBLE: '<f8',
}

# A varint of more than ten bytes (70 bits) is not a 64-bit value.
_MAX_VARINT_SHIFT = 70

Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]


class WireFormatError(ValueError):
    """Bytes that do not hold a valid varint.

    Args:
        offset: The byte offset where decoding stopped.
        truncated: True when the bytes end inside the varint; False when it
            runs past ten bytes (malformed).
    """

    def __init__(self, offset: int, truncated: bool) -> None:
        super().__init__('{} varint at byte offset {}'.format(
            'truncated' if truncated else 'malformed', offset))
        self.offset = offset
        self.truncated = truncated


def decode_varint(buf: Buffer, pos: int, end: int) -> Tuple[int, int]:
    """Reads the varint that starts at ``buf[pos]``, stopping at ``end``.

    Args:
        buf: The bytes (anything indexable to ints: ``bytes``, ``mmap``).
        pos: Where the varint starts.
        end: One past the last byte it may use.

    Returns:
        tuple: The value (unsigned: a negative int32/int64 comes back as its
        64-bit two's complement) and the offset just after it.

    Raises:
        WireFormatError: if the varint is cut off by ``end`` or longer than
            ten bytes.
    """
    # Most keys and lengths fit in one byte: no loop for them.
    if pos < end and buf[pos] < 0x80:
        return buf[pos], pos + 1
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireFormatError(pos, truncated=True)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= _MAX_VARINT_SHIFT:
            raise WireFormatError(pos, truncated=False)


def encode_varint(value: int) -> bytes:
    """The base-128 varint of ``value``.

    A negative value is encoded as its 64-bit two's complement (ten bytes),
    as protobuf encodes negative int32 and int64 values.
    """
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_key(number: int, wire_type: int) -> bytes:
    """The key that starts field ``number`` of ``wire_type``
    (:data:`VARINT`, :data:`LEN`, ...)."""
    return encode_varint((number << 3) | wire_type)


def len_prefix(number: int, length: int) -> bytes:
    """The key and length of a length-delimited field whose ``length``
    bytes of body follow (written separately, e.g. streamed)."""
    return field_key(number, LEN) + encode_varint(length)


def len_field(number: int, body: bytes) -> bytes:
    """A whole length-delimited field: key, length, ``body``."""
    return len_prefix(number, len(body)) + body
