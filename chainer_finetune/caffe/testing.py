"""Write Caffe models (caffemodel + prototxt) with chainer_finetune's schema.

For tests, examples and benchmarks: build a net layer by layer with
:class:`NetWriter`, then write it as a binary ``.caffemodel`` in the current
(V2 ``layer``) or the legacy (V1 ``layers``) format, and as a text
``.prototxt``::

    w = NetWriter('tiny')
    w.input('data', (1, 3, 8, 8))
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[weights, bias])
    w.write_caffemodel('tiny.caffemodel')            # V2
    w.write_caffemodel('tiny_v1.caffemodel', version=1)
    w.write_prototxt('tiny.prototxt')

Weights are written the way Caffe writes them: V2 blobs carry a ``shape``
(omitted for a 0-axis blob, as ``Blob::ToProto`` does), V1 blobs the legacy
``num/channels/height/width`` fields with the shape left-padded with ones
(an InnerProduct weight ``(out, in)`` becomes ``(1, 1, out, in)``).

The binary writer emits the protobuf wire format itself, streaming each
blob's packed floats straight to the file: a blob may be a
:class:`RandomBlob`, whose values are generated chunk by chunk while
writing, so models of any size (:func:`make_vgg16`: 528 MiB) are written in
seconds with bounded memory. The bytes are exactly those protobuf's own
serializer produces for the same message (fields in number order), and
:meth:`NetWriter.net_parameter` gives that message for small nets.

Ready-made nets: :func:`make_alexnet` (bvlc_alexnet's structure, layer names
and blob shapes), :func:`make_vgg16` (VGG_ILSVRC_16_layers) and
:func:`make_all_layers_net` (tiny shapes, every layer type the loader
supports), all with seeded random weights.
"""

from __future__ import annotations

import math
import os
from typing import (Any, BinaryIO, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, Union)

import numpy
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import text_format

from chainer_finetune.caffe import caffe_pb2

PathLike = Union[str, 'os.PathLike[str]']

# V2 type strings -> V1LayerParameter.LayerType names: the inverse of
# Caffe's UpgradeV1LayerType (upgrade_proto.cpp). Types added after the V1
# format (BatchNorm, Scale, Bias, ELU, PReLU, Input, Reshape, ...) have no
# V1 code, so a net using them cannot be written as V1. Written out here,
# not derived from upgrade.V1_TYPE_NAMES: V1 files this writer makes test
# the upgrade, so a mistake in its table must not be mirrored here.
V1_TYPE_CODES: Dict[str, str] = {
    'AbsVal': 'ABSVAL', 'Accuracy': 'ACCURACY', 'ArgMax': 'ARGMAX',
    'BNLL': 'BNLL', 'Concat': 'CONCAT', 'ContrastiveLoss': 'CONTRASTIVE_LOSS',
    'Convolution': 'CONVOLUTION', 'Data': 'DATA',
    'Deconvolution': 'DECONVOLUTION', 'Dropout': 'DROPOUT',
    'DummyData': 'DUMMY_DATA', 'EuclideanLoss': 'EUCLIDEAN_LOSS',
    'Eltwise': 'ELTWISE', 'Exp': 'EXP', 'Flatten': 'FLATTEN',
    'HDF5Data': 'HDF5_DATA', 'HDF5Output': 'HDF5_OUTPUT',
    'HingeLoss': 'HINGE_LOSS', 'Im2col': 'IM2COL', 'ImageData': 'IMAGE_DATA',
    'InfogainLoss': 'INFOGAIN_LOSS', 'InnerProduct': 'INNER_PRODUCT',
    'LRN': 'LRN', 'MemoryData': 'MEMORY_DATA',
    'MultinomialLogisticLoss': 'MULTINOMIAL_LOGISTIC_LOSS', 'MVN': 'MVN',
    'Pooling': 'POOLING', 'Power': 'POWER', 'ReLU': 'RELU',
    'Sigmoid': 'SIGMOID',
    'SigmoidCrossEntropyLoss': 'SIGMOID_CROSS_ENTROPY_LOSS',
    'Silence': 'SILENCE', 'Softmax': 'SOFTMAX',
    'SoftmaxWithLoss': 'SOFTMAX_LOSS', 'Split': 'SPLIT', 'Slice': 'SLICE',
    'TanH': 'TANH', 'WindowData': 'WINDOW_DATA', 'Threshold': 'THRESHOLD',
}

INPUT_FORMS = ('layer', 'input_shape', 'input_dim')

# Wire format (https://protobuf.dev/programming-guides/encoding/).
_VARINT, _LEN = 0, 2
_V2_LAYER_FIELD, _V1_LAYER_FIELD = 100, 2     # NetParameter.layer / layers
_V2_BLOBS_FIELD, _V1_BLOBS_FIELD = 7, 6       # (V1)LayerParameter.blobs
_BLOB_DATA, _BLOB_SHAPE = 5, 7                # BlobProto.data / shape
# Values generated per RandomBlob chunk (4 MiB of float32).
_CHUNK = 1 << 20


class RandomBlob:
    """A blob of seeded random float32 values, generated when written.

    Values are drawn from ``numpy.random.default_rng(seed)`` in chunks of
    ``2**20``, so writing needs one chunk of memory whatever the size;
    :meth:`array` gives the same values as one array. The default
    distribution is uniform with the given mean and standard deviation
    (``mean +- std * sqrt(3)``): about three times faster to draw than a
    normal one, which ``distribution='normal'`` gives.

    Args:
        shape: The blob's shape.
        std: Standard deviation.
        mean: Mean.
        seed: Anything ``numpy.random.default_rng`` accepts (an int or a
            sequence of ints).
        distribution: ``'uniform'`` or ``'normal'``.
    """

    def __init__(self, shape: Sequence[int], std: float = 1.0,
                 mean: float = 0.0, seed: Any = 0,
                 distribution: str = 'uniform') -> None:
        self.shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in self.shape):
            raise ValueError('negative dimension in {}'.format(self.shape))
        if distribution not in ('uniform', 'normal'):
            raise ValueError("distribution must be 'uniform' or 'normal'")
        self.std = float(std)
        self.mean = float(mean)
        self.seed = seed
        self.distribution = distribution

    @property
    def size(self) -> int:
        return int(numpy.prod(self.shape, dtype=numpy.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def chunks(self) -> Iterator[numpy.ndarray]:
        """The values in order, as float32 arrays of at most 2**20."""
        rng = numpy.random.default_rng(self.seed)
        if self.distribution == 'uniform':
            width = numpy.float32(2 * math.sqrt(3.0) * self.std)
            low = numpy.float32(self.mean - math.sqrt(3.0) * self.std)
        remaining = self.size
        while remaining:
            n = min(remaining, _CHUNK)
            if self.distribution == 'uniform':
                chunk = rng.random(n, dtype=numpy.float32)
                chunk *= width
                chunk += low
            else:
                chunk = rng.standard_normal(n, dtype=numpy.float32)
                chunk *= numpy.float32(self.std)
                chunk += numpy.float32(self.mean)
            yield chunk
            remaining -= n

    def array(self) -> numpy.ndarray:
        """All values as one float32 array of :attr:`shape`."""
        out = numpy.empty(self.size, dtype=numpy.float32)
        pos = 0
        for chunk in self.chunks():
            out[pos:pos + chunk.size] = chunk
            pos += chunk.size
        return out.reshape(self.shape)

    def __repr__(self) -> str:
        return 'RandomBlob({}, std={:g}, mean={:g}, seed={!r}, {})'.format(
            self.shape, self.std, self.mean, self.seed, self.distribution)


BlobLike = Union[numpy.ndarray, RandomBlob]


def _as_blob(value) -> BlobLike:
    if isinstance(value, RandomBlob):
        return value
    return numpy.array(value, dtype=numpy.float32)   # a copy, C order


def blob_array(blob: BlobLike) -> numpy.ndarray:
    """The values of a blob given to :meth:`NetWriter.layer` (float32)."""
    return blob.array() if isinstance(blob, RandomBlob) else blob


# --------------------------------------------------------------------------
# Filling protobuf messages from Python values
# --------------------------------------------------------------------------

def fill_message(msg: pb_message.Message, values: Mapping[str, Any]
                 ) -> pb_message.Message:
    """Sets fields of ``msg`` from a dict; returns ``msg``.

    Nested messages take dicts (or messages), repeated fields take lists (a
    single value is wrapped), enums take their names or numbers::

        fill_message(p, {'num_output': 8, 'kernel_size': 3,
                         'engine': 'CAFFE'})
    """
    fields = msg.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        if name not in fields:
            raise ValueError('{} has no field {!r}'.format(
                msg.DESCRIPTOR.name, name))
        field = fields[name]
        is_message = field.type == pb_descriptor.FieldDescriptor.TYPE_MESSAGE
        if _is_repeated(field):
            items = value if isinstance(value, (list, tuple)) else [value]
            container = getattr(msg, name)
            for item in items:
                if is_message:
                    sub = container.add()
                    if isinstance(item, pb_message.Message):
                        sub.CopyFrom(item)
                    else:
                        fill_message(sub, item)
                else:
                    container.append(_scalar(field, item))
        elif is_message:
            sub = getattr(msg, name)
            if isinstance(value, pb_message.Message):
                sub.CopyFrom(value)
            else:
                sub.SetInParent()
                fill_message(sub, value)
        else:
            setattr(msg, name, _scalar(field, value))
    return msg


def _is_repeated(field: pb_descriptor.FieldDescriptor) -> bool:
    # protobuf >= 5 has is_repeated; `label` is deprecated (gone in 7).
    if hasattr(field, 'is_repeated'):
        return field.is_repeated
    return field.label == pb_descriptor.FieldDescriptor.LABEL_REPEATED


def _scalar(field: pb_descriptor.FieldDescriptor, value):
    if field.type == pb_descriptor.FieldDescriptor.TYPE_ENUM and \
            isinstance(value, str):
        return field.enum_type.values_by_name[value].number
    return value


# --------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------

def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of ``value`` (negative: 64-bit two's
    complement, as protobuf encodes int32/int64)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field_key(number: int, wire_type: int) -> bytes:
    """The key of field ``number`` with ``wire_type`` (0 varint, 2 length-
    delimited, 5 32-bit...)."""
    return varint((number << 3) | wire_type)


def _len_prefix(number: int, length: int) -> bytes:
    return field_key(number, _LEN) + varint(length)


def len_field(number: int, body: bytes) -> bytes:
    """A whole length-delimited field: key, length, ``body``."""
    return _len_prefix(number, len(body)) + body


def _split_serialize(msg: pb_message.Message, number: int
                     ) -> Tuple[bytes, bytes]:
    """Serializations of the fields of ``msg`` numbered below / above
    ``number``: the bytes protobuf writes before and after that field."""
    head = type(msg)()
    head.CopyFrom(msg)
    tail = type(msg)()
    tail.CopyFrom(msg)
    for field, _ in msg.ListFields():
        if field.number >= number:
            head.ClearField(field.name)
        if field.number <= number:
            tail.ClearField(field.name)
    return head.SerializeToString(), tail.SerializeToString()


def legacy_dims(shape: Sequence[int], where: str = 'blob') -> Tuple[int, ...]:
    """A shape as Caffe's legacy (num, channels, height, width)."""
    shape = tuple(shape)
    if len(shape) > 4:
        raise ValueError('{}: a {}-D blob {} has no legacy 4-D form'.format(
            where, len(shape), shape))
    return (1,) * (4 - len(shape)) + shape


class _EncodedBlob:
    """One BlobProto, laid out as protobuf serializes it: legacy dims
    (fields 1-4), packed data (5), shape (7)."""

    def __init__(self, blob: BlobLike, legacy: bool, where: str) -> None:
        self.blob = blob
        shape = tuple(blob.shape)
        if legacy:
            self.prefix = b''.join(
                field_key(i + 1, _VARINT) + varint(d)
                for i, d in enumerate(legacy_dims(shape, where)))
            self.suffix = b''
        else:
            self.prefix = b''
            if shape:
                encoded = caffe_pb2.BlobShape(dim=shape).SerializeToString()
                self.suffix = _len_prefix(_BLOB_SHAPE, len(encoded)) + encoded
            else:
                # Blob::ToProto adds no shape for a 0-axis blob.
                self.suffix = b''
        self.nbytes = 4 * int(numpy.prod(shape, dtype=numpy.int64))
        self.data_header = _len_prefix(_BLOB_DATA, self.nbytes) \
            if self.nbytes else b''
        self.length = (len(self.prefix) + len(self.data_header) +
                       self.nbytes + len(self.suffix))

    def write(self, f: BinaryIO) -> None:
        f.write(self.prefix)
        f.write(self.data_header)
        if isinstance(self.blob, RandomBlob):
            for chunk in self.blob.chunks():
                f.write(_little_endian(chunk).data)
        elif self.nbytes:
            f.write(_little_endian(self.blob).data)
        f.write(self.suffix)


def _little_endian(array: numpy.ndarray) -> numpy.ndarray:
    return numpy.ascontiguousarray(array, dtype='<f4').reshape(-1)


def _fill_blob_proto(proto: caffe_pb2.BlobProto, blob: BlobLike,
                     legacy: bool, where: str) -> None:
    array = blob_array(blob)
    if legacy:
        proto.num, proto.channels, proto.height, proto.width = \
            legacy_dims(array.shape, where)
    elif array.ndim:
        proto.shape.dim.extend(array.shape)
    proto.data.extend(array.ravel().tolist())


# --------------------------------------------------------------------------
# V2 -> V1 layer descriptions
# --------------------------------------------------------------------------

_V1_HANDLED = {'name', 'type', 'bottom', 'top', 'loss_weight', 'include',
               'exclude', 'param', 'blobs'}


def to_v1_layer(layer: caffe_pb2.LayerParameter) -> caffe_pb2.V1LayerParameter:
    """The V1 form of a V2 layer description (without blobs).

    ``param { name lr_mult decay_mult share_mode }`` become the V1 lists
    ``param``, ``blobs_lr``, ``weight_decay``, ``blob_share_mode``.

    Raises:
        ValueError: for a type without a V1 code (BatchNorm, Scale, Bias,
            ELU, PReLU, Input, Reshape, ...) or a field V1 lacks.
    """
    code = V1_TYPE_CODES.get(layer.type)
    if code is None:
        raise ValueError(
            'layer {!r}: type {!r} has no V1 (`layers`) code; write the net '
            'as V2'.format(layer.name, layer.type))
    v1 = caffe_pb2.V1LayerParameter()
    v1.name = layer.name
    v1.type = caffe_pb2.V1LayerParameter.LayerType.Value(code)
    v1.bottom.extend(layer.bottom)
    v1.top.extend(layer.top)
    v1.loss_weight.extend(layer.loss_weight)
    for rule in layer.include:
        v1.include.add().CopyFrom(rule)
    for rule in layer.exclude:
        v1.exclude.add().CopyFrom(rule)
    specs = list(layer.param)
    if any(s.HasField('name') for s in specs):
        v1.param.extend(s.name for s in specs)
    if any(s.HasField('share_mode') for s in specs):
        v1.blob_share_mode.extend(s.share_mode for s in specs)
    if any(s.HasField('lr_mult') for s in specs):
        v1.blobs_lr.extend(s.lr_mult for s in specs)
    if any(s.HasField('decay_mult') for s in specs):
        v1.weight_decay.extend(s.decay_mult for s in specs)
    v1_fields = caffe_pb2.V1LayerParameter.DESCRIPTOR.fields_by_name
    for field, value in layer.ListFields():
        if field.name in _V1_HANDLED:
            continue
        if field.name not in v1_fields or not field.name.endswith('_param'):
            raise ValueError('layer {!r}: field {!r} has no V1 form'.format(
                layer.name, field.name))
        getattr(v1, field.name).CopyFrom(value)
    return v1


# --------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------

class NetWriter:
    """Builds a Caffe net description with weights and writes it.

    Layers are kept as V2 ``LayerParameter`` messages (without blobs) plus a
    list of blobs each (NumPy arrays, stored as float32 copies, or
    :class:`RandomBlob`); the V1 form is derived when writing.

    Args:
        name: The net's ``name``.
    """

    def __init__(self, name: str = 'net') -> None:
        self.name = name
        self._layers: List[caffe_pb2.LayerParameter] = []
        self._blobs: List[List[BlobLike]] = []
        # Net-level inputs: (name, shape, form) for forms input_dim and
        # input_shape.
        self._net_inputs: List[Tuple[str, Tuple[int, ...], str]] = []
        self.input_shapes: Dict[str, Tuple[int, ...]] = {}

    # -- building ---------------------------------------------------------

    def input(self, name: str, shape: Sequence[int], form: str = 'layer',
              layer_name: Optional[str] = None) -> None:
        """Declares an input blob in one of Caffe's three ways.

        Args:
            name: The blob name.
            shape: Its shape.
            form: ``'layer'``: an ``Input`` layer (V2 only; named
                ``layer_name``, default ``name``); ``'input_shape'``: the
                net-level ``input`` + ``input_shape`` fields;
                ``'input_dim'``: ``input`` + four ``input_dim`` values
                (4-D shapes only). The two net-level forms cannot be mixed.
        """
        shape = tuple(int(d) for d in shape)
        if form not in INPUT_FORMS:
            raise ValueError('form must be one of {}'.format(INPUT_FORMS))
        if form == 'input_dim' and len(shape) != 4:
            raise ValueError('input_dim needs a 4-D shape, got {}'.format(
                shape))
        if form != 'layer':
            forms = {f for _, _, f in self._net_inputs}
            if forms and form not in forms:
                raise ValueError('cannot mix input_dim and input_shape')
            self._net_inputs.append((name, shape, form))
        else:
            self.layer(layer_name or name, 'Input', (), name,
                       params={'input_param': {'shape': [{'dim': shape}]}})
        self.input_shapes[name] = shape

    def layer(self, name: str, type: str,
              bottoms: Union[str, Sequence[str]] = (),
              tops: Union[str, Sequence[str], None] = None,
              params: Optional[Mapping[str, Any]] = None,
              blobs: Iterable[Any] = (),
              param_specs: Sequence[Mapping[str, Any]] = (),
              include: Optional[Mapping[str, Any]] = None,
              exclude: Optional[Mapping[str, Any]] = None,
              loss_weight: Union[float, Sequence[float], None] = None
              ) -> caffe_pb2.LayerParameter:
        """Appends a layer; returns its description (which may be edited).

        Args:
            name: Layer name.
            type: V2 type string (``'Convolution'``).
            bottoms: Bottom blob name(s).
            tops: Top blob name(s); default: one top named like the layer.
            params: Other ``LayerParameter`` fields as a dict, e.g.
                ``{'convolution_param': {'num_output': 8, 'kernel_size': 3}}``
                (see :func:`fill_message`).
            blobs: The layer's weights: arrays (copied as float32) or
                :class:`RandomBlob`.
            param_specs: One ``ParamSpec`` dict per blob
                (``{'lr_mult': 1, 'decay_mult': 0}``).
            include: A ``NetStateRule`` dict (``{'phase': 'TRAIN'}``).
            exclude: A ``NetStateRule`` dict.
            loss_weight: ``loss_weight`` value(s).
        """
        if any(layer.name == name for layer in self._layers):
            raise ValueError('two layers named {!r}'.format(name))
        layer = caffe_pb2.LayerParameter(name=name, type=type)
        layer.bottom.extend([bottoms] if isinstance(bottoms, str) else bottoms)
        if tops is None:
            tops = [name]
        layer.top.extend([tops] if isinstance(tops, str) else tops)
        if loss_weight is not None:
            layer.loss_weight.extend(
                [loss_weight] if isinstance(loss_weight, (int, float))
                else loss_weight)
        for spec in param_specs:
            fill_message(layer.param.add(), spec)
        if include is not None:
            fill_message(layer.include.add(), include)
        if exclude is not None:
            fill_message(layer.exclude.add(), exclude)
        if params:
            fill_message(layer, params)
        self._layers.append(layer)
        self._blobs.append([_as_blob(b) for b in blobs])
        return layer

    # -- inspecting -------------------------------------------------------

    @property
    def layers(self) -> List[caffe_pb2.LayerParameter]:
        """The V2 layer descriptions (without blobs), in order."""
        return list(self._layers)

    def get_layer(self, name: str) -> caffe_pb2.LayerParameter:
        return self._layers[self._index(name)]

    def blobs(self, name: str) -> List[BlobLike]:
        """The blobs of layer ``name`` as given (arrays or RandomBlobs)."""
        return list(self._blobs[self._index(name)])

    def blob_arrays(self, name: str) -> List[numpy.ndarray]:
        """The blobs of layer ``name`` as float32 arrays."""
        return [blob_array(b) for b in self._blobs[self._index(name)]]

    def set_blobs(self, name: str, blobs: Iterable[Any]) -> None:
        self._blobs[self._index(name)] = [_as_blob(b) for b in blobs]

    def remove_layer(self, name: str) -> None:
        index = self._index(name)
        if self._layers[index].type == 'Input':
            for top in self._layers[index].top:
                self.input_shapes.pop(top, None)
        del self._layers[index]
        del self._blobs[index]

    def _index(self, name: str) -> int:
        for i, layer in enumerate(self._layers):
            if layer.name == name:
                return i
        raise KeyError('no layer named {!r}'.format(name))

    def n_params(self) -> int:
        """The number of weight values in all blobs."""
        return sum(int(numpy.prod(b.shape, dtype=numpy.int64))
                   for blobs in self._blobs for b in blobs)

    def v1_compatible(self) -> bool:
        """Whether :meth:`write_caffemodel` can write this net as V1."""
        try:
            self._net_header(1)
            for layer in self._layers:
                to_v1_layer(layer)
        except ValueError:
            return False
        return True

    # -- messages ---------------------------------------------------------

    def _net_header(self, version: int) -> caffe_pb2.NetParameter:
        if version not in (1, 2):
            raise ValueError('version must be 1 or 2')
        net = caffe_pb2.NetParameter(name=self.name)
        for name, shape, form in self._net_inputs:
            net.input.append(name)
            if form == 'input_dim':
                net.input_dim.extend(shape)
            else:
                net.input_shape.add().dim.extend(shape)
        has_input_layer = any(layer.type == 'Input' for layer in self._layers)
        if version == 1 and has_input_layer:
            raise ValueError('an Input layer has no V1 form; declare inputs '
                             "with form='input_dim' or 'input_shape'")
        return net

    def _layer_message(self, index: int, version: int):
        layer = self._layers[index]
        return layer if version == 2 else to_v1_layer(layer)

    def net_parameter(self, version: int = 2, with_blobs: bool = True,
                      legacy: Optional[bool] = None
                      ) -> caffe_pb2.NetParameter:
        """The whole net as one protobuf message.

        Args:
            version: 2 (``layer``) or 1 (``layers``).
            with_blobs: Include the weights (materializing RandomBlobs:
                meant for small nets).
            legacy: Write blob shapes as legacy 4-D dims (default: for V1).
        """
        legacy = version == 1 if legacy is None else legacy
        net = self._net_header(version)
        container = net.layer if version == 2 else net.layers
        for i in range(len(self._layers)):
            msg = container.add()
            msg.CopyFrom(self._layer_message(i, version))
            if with_blobs:
                for j, blob in enumerate(self._blobs[i]):
                    _fill_blob_proto(msg.blobs.add(), blob, legacy,
                                     self._where(i, j))
        return net

    def _where(self, index: int, blob: int) -> str:
        return 'layer {!r} blob {}'.format(self._layers[index].name, blob)

    # -- writing ----------------------------------------------------------

    def write_caffemodel(self, path: PathLike, version: int = 2,
                         legacy: Optional[bool] = None) -> int:
        """Writes the binary caffemodel, streaming blob data to the file.

        Args:
            path: Output file.
            version: 2 (``layer``, blob ``shape``) or 1 (``layers`` with V1
                type codes, legacy 4-D blob dims).
            legacy: Legacy 4-D blob dims in a V2 file too (as Caffe wrote
                them in 2014-2015); default: only for V1.

        Returns:
            int: The number of bytes written.

        Raises:
            ValueError: V1 requested for a net with a type or field that V1
                lacks, or legacy dims for a blob of more than 4 axes.
        """
        legacy = version == 1 if legacy is None else legacy
        layer_field = _V2_LAYER_FIELD if version == 2 else _V1_LAYER_FIELD
        blobs_field = _V2_BLOBS_FIELD if version == 2 else _V1_BLOBS_FIELD
        net_head, net_tail = _split_serialize(self._net_header(version),
                                              layer_field)
        # Convert everything first so that a ValueError leaves no file.
        layers = []
        for i in range(len(self._layers)):
            head, tail = _split_serialize(self._layer_message(i, version),
                                          blobs_field)
            encoded = [_EncodedBlob(b, legacy, self._where(i, j))
                       for j, b in enumerate(self._blobs[i])]
            layers.append((head, encoded, tail))
        written = 0
        with open(path, 'wb') as f:
            f.write(net_head)
            for head, encoded, tail in layers:
                length = len(head) + len(tail) + sum(
                    len(_len_prefix(blobs_field, e.length)) + e.length
                    for e in encoded)
                f.write(_len_prefix(layer_field, length))
                f.write(head)
                for e in encoded:
                    f.write(_len_prefix(blobs_field, e.length))
                    e.write(f)
                f.write(tail)
            f.write(net_tail)
            written = f.tell()
        return written

    def write_prototxt(self, path: PathLike, version: int = 2) -> None:
        """Writes the text net description (no weights)."""
        net = self.net_parameter(version, with_blobs=False)
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text_format.MessageToString(net))


def write_binaryproto(path: PathLike, array: numpy.ndarray,
                      legacy: bool = True) -> None:
    """Writes a ``.binaryproto`` BlobProto, e.g. a mean image.

    Args:
        path: Output file.
        array: The values; a mean image ``(C, H, W)`` is written as Caffe's
            ``compute_image_mean`` does, with legacy dims ``(1, C, H, W)``.
        legacy: Legacy 4-D dims (else a ``shape``).
    """
    blob = caffe_pb2.BlobProto()
    _fill_blob_proto(blob, numpy.asarray(array, dtype=numpy.float32), legacy,
                     os.fspath(path))
    with open(path, 'wb') as f:
        f.write(blob.SerializeToString())


# --------------------------------------------------------------------------
# Ready-made nets
# --------------------------------------------------------------------------

_PARAM_SPECS = ({'lr_mult': 1, 'decay_mult': 1},
                {'lr_mult': 2, 'decay_mult': 0})


def _he_blobs(shape: Sequence[int], fan_in: int, seed: Any,
              bias: bool = True) -> List[RandomBlob]:
    """He-scaled weights (std sqrt(2 / fan_in)) and small biases (std
    0.01), uniform (see :class:`RandomBlob`)."""
    blobs = [RandomBlob(shape, std=math.sqrt(2.0 / fan_in), seed=seed + (0,))]
    if bias:
        blobs.append(RandomBlob((shape[0],), std=0.01, seed=seed + (1,)))
    return blobs


class _Builder:
    """Adds Conv/IP layers with He-scaled random weights to a NetWriter."""

    def __init__(self, writer: NetWriter, seed: int) -> None:
        self.w = writer
        self.seed = seed
        self.count = 0

    def _seed(self) -> Tuple[int, int]:
        self.count += 1
        return (self.seed, self.count)

    def conv(self, name, bottom, top, channels_in, num_output, kernel,
             pad=0, stride=1, group=1):
        params = {'num_output': num_output, 'kernel_size': kernel}
        if pad:
            params['pad'] = pad
        if stride != 1:
            params['stride'] = stride
        if group != 1:
            params['group'] = group
        fan_in = channels_in // group * kernel * kernel
        self.w.layer(name, 'Convolution', bottom, top,
                     params={'convolution_param': params},
                     blobs=_he_blobs((num_output, channels_in // group,
                                      kernel, kernel), fan_in, self._seed()),
                     param_specs=_PARAM_SPECS)

    def fc(self, name, bottom, top, n_in, n_out):
        self.w.layer(name, 'InnerProduct', bottom, top,
                     params={'inner_product_param': {'num_output': n_out}},
                     blobs=_he_blobs((n_out, n_in), n_in, self._seed()),
                     param_specs=_PARAM_SPECS)

    def relu(self, name, blob):
        self.w.layer(name, 'ReLU', blob, blob)

    def max_pool(self, name, bottom, top, kernel, stride):
        self.w.layer(name, 'Pooling', bottom, top, params={
            'pooling_param': {'pool': 'MAX', 'kernel_size': kernel,
                              'stride': stride}})

    def dropout(self, name, blob):
        self.w.layer(name, 'Dropout', blob, blob,
                     params={'dropout_param': {'dropout_ratio': 0.5}})


def _check_version(version: int) -> None:
    if version not in (1, 2):
        raise ValueError('version must be 1 or 2')


def alexnet_writer(n_class: int = 1000, seed: int = 0, batch: int = 10,
                   input_form: str = 'layer', train: bool = False
                   ) -> NetWriter:
    """bvlc_alexnet with random weights, not yet written (see
    :func:`make_alexnet`).

    The structure, layer names, parameters and blob shapes are those of
    BVLC's ``models/bvlc_alexnet/deploy.prototxt`` as released with
    ``bvlc_alexnet.caffemodel``: conv2, conv4 and conv5 have ``group: 2``
    (so conv2's weights are 256x48x5x5), LRN 5/1e-4/0.75 after relu1 and
    relu2, 3x3/2 max pooling, fc6 4096x9216.

    Args:
        n_class: fc8's outputs.
        seed: Seed of all weights.
        batch: The declared input batch size (BVLC: 10).
        input_form: How the input is declared (see :meth:`NetWriter.input`).
        train: The layout of the released *caffemodel* instead of the
            deploy net: a ``Data`` layer (phase TRAIN, tops data and label)
            instead of the input, and a ``SoftmaxWithLoss`` named ``loss``
            instead of ``prob``.
    """
    w = NetWriter('AlexNet')
    if train:
        w.layer('data', 'Data', (), ['data', 'label'],
                params={'data_param': {'source': 'ilsvrc12_train_lmdb',
                                       'batch_size': 256, 'backend': 'LMDB'},
                        'transform_param': {'mirror': True,
                                            'crop_size': 227}},
                include={'phase': 'TRAIN'})
    else:
        w.input('data', (batch, 3, 227, 227), form=input_form)
    b = _Builder(w, seed)
    b.conv('conv1', 'data', 'conv1', 3, 96, 11, stride=4)
    b.relu('relu1', 'conv1')
    lrn = {'lrn_param': {'local_size': 5, 'alpha': 0.0001, 'beta': 0.75}}
    w.layer('norm1', 'LRN', 'conv1', 'norm1', params=lrn)
    b.max_pool('pool1', 'norm1', 'pool1', 3, 2)
    b.conv('conv2', 'pool1', 'conv2', 96, 256, 5, pad=2, group=2)
    b.relu('relu2', 'conv2')
    w.layer('norm2', 'LRN', 'conv2', 'norm2', params=lrn)
    b.max_pool('pool2', 'norm2', 'pool2', 3, 2)
    b.conv('conv3', 'pool2', 'conv3', 256, 384, 3, pad=1)
    b.relu('relu3', 'conv3')
    b.conv('conv4', 'conv3', 'conv4', 384, 384, 3, pad=1, group=2)
    b.relu('relu4', 'conv4')
    b.conv('conv5', 'conv4', 'conv5', 384, 256, 3, pad=1, group=2)
    b.relu('relu5', 'conv5')
    b.max_pool('pool5', 'conv5', 'pool5', 3, 2)
    b.fc('fc6', 'pool5', 'fc6', 256 * 6 * 6, 4096)
    b.relu('relu6', 'fc6')
    b.dropout('drop6', 'fc6')
    b.fc('fc7', 'fc6', 'fc7', 4096, 4096)
    b.relu('relu7', 'fc7')
    b.dropout('drop7', 'fc7')
    b.fc('fc8', 'fc7', 'fc8', 4096, n_class)
    if train:
        w.layer('loss', 'SoftmaxWithLoss', ['fc8', 'label'], 'loss')
    else:
        w.layer('prob', 'Softmax', 'fc8', 'prob')
    return w


def make_alexnet(path_caffemodel: PathLike,
                 path_prototxt: Optional[PathLike] = None,
                 n_class: int = 1000, seed: int = 0, version: int = 2,
                 batch: int = 10, train_layers: bool = False) -> NetWriter:
    """Writes an AlexNet with bvlc_alexnet's exact structure, random weights.

    About 61 million float32 weights (233 MiB): He-scaled (std
    ``sqrt(2 / fan_in)``), biases with std 0.01, uniform, generated while
    writing (about half a second with the disk's page cache).

    Args:
        path_caffemodel: The binary model to write.
        path_prototxt: Also write the deploy prototxt here.
        n_class: fc8's outputs.
        seed: Seed of the weights (same seed, same values, any version).
        version: 2, or 1 for the V1 ``layers`` format of the 2014 release
            (inputs then declared with ``input_dim``).
        batch: The declared input batch size.
        train_layers: Give the caffemodel the released model's layout (a
            TRAIN-phase ``Data`` layer, a ``loss`` head, no ``prob``); the
            prototxt stays the deploy net.

    Returns:
        NetWriter: The caffemodel's net (``blob_arrays(name)`` gives the
        weights).
    """
    _check_version(version)
    form = 'layer' if version == 2 else 'input_dim'
    deploy = alexnet_writer(n_class, seed, batch, form)
    model = alexnet_writer(n_class, seed, batch, form, train=True) \
        if train_layers else deploy
    model.write_caffemodel(path_caffemodel, version)
    if path_prototxt is not None:
        deploy.write_prototxt(path_prototxt, version)
    return model


def vgg16_writer(n_class: int = 1000, seed: int = 0, batch: int = 10,
                 input_form: str = 'layer') -> NetWriter:
    """VGG_ILSVRC_16_layers (deploy) with random weights, not yet written.

    Layer names and shapes of the released model: conv1_1 ... conv5_3 (3x3,
    pad 1) with relu*_*, pool1..pool5 (2x2/2 max), fc6 4096x25088, fc7,
    fc8, drop6/drop7, prob; 138,357,544 weights.
    """
    w = NetWriter('VGG_ILSVRC_16_layers')
    w.input('data', (batch, 3, 224, 224), form=input_form)
    b = _Builder(w, seed)
    bottom, channels = 'data', 3
    for stage, (n_conv, width) in enumerate(
            [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for i in range(1, n_conv + 1):
            name = 'conv{}_{}'.format(stage, i)
            b.conv(name, bottom, name, channels, width, 3, pad=1)
            b.relu('relu{}_{}'.format(stage, i), name)
            bottom, channels = name, width
        pool = 'pool{}'.format(stage)
        b.max_pool(pool, bottom, pool, 2, 2)
        bottom = pool
    b.fc('fc6', 'pool5', 'fc6', 512 * 7 * 7, 4096)
    b.relu('relu6', 'fc6')
    b.dropout('drop6', 'fc6')
    b.fc('fc7', 'fc6', 'fc7', 4096, 4096)
    b.relu('relu7', 'fc7')
    b.dropout('drop7', 'fc7')
    b.fc('fc8', 'fc7', 'fc8', 4096, n_class)
    w.layer('prob', 'Softmax', 'fc8', 'prob')
    return w


def make_vgg16(path: PathLike, seed: int = 0,
               path_prototxt: Optional[PathLike] = None, version: int = 2,
               n_class: int = 1000, batch: int = 10) -> NetWriter:
    """Writes VGG-16 with the released model's shapes and random weights.

    528 MiB, streamed layer by layer and chunk by chunk (memory stays at a
    few MiB). The released VGG_ILSVRC_16_layers.caffemodel is V1: pass
    ``version=1`` to get that format (legacy 4-D blob dims, ``input_dim``).

    Returns:
        NetWriter: The net written.
    """
    _check_version(version)
    w = vgg16_writer(n_class, seed, batch,
                     'layer' if version == 2 else 'input_dim')
    w.write_caffemodel(path, version)
    if path_prototxt is not None:
        w.write_prototxt(path_prototxt, version)
    return w


# The all-layers net: blob shapes are small so that a NumPy reference of
# every layer runs in milliseconds.
ALL_LAYERS_INPUT_SHAPE = (2, 4, 7, 7)
ALL_LAYERS_N_CLASS = 5

# Types of make_all_layers_net's layers that V1 cannot express: in the V1
# net they are left out (they are in-place or on a side branch, so the rest
# of the net is unchanged).
_V2_ONLY_LAYERS = ('bn1', 'scale1', 'prelu2', 'elu2', 'bias3', 'reshape',
                   'fc_t')


def all_layers_writer(version: int = 2, seed: int = 0) -> NetWriter:
    """A tiny net using every layer type the loader supports (see
    :func:`make_all_layers_net`)."""
    _check_version(version)
    rng = numpy.random.RandomState(seed)

    def normal(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(numpy.float32)

    def positive(*shape):
        return rng.uniform(0.5, 1.5, shape).astype(numpy.float32)

    n, c, h, _ = ALL_LAYERS_INPUT_SHAPE
    w = NetWriter('all_layers')
    if version == 2:
        w.input('data', ALL_LAYERS_INPUT_SHAPE, form='layer')
        w.input('label', (n,), form='layer')
    else:
        w.input('data', ALL_LAYERS_INPUT_SHAPE, form='input_dim')
        w.input('label', (n, 1, 1, 1), form='input_dim')
    # Data layers of every kind: no-ops whose tops the caller would supply;
    # a Silence layer consumes them.
    w.layer('memory', 'MemoryData', (), ['mem_data', 'mem_label'],
            params={'memory_data_param': {'batch_size': n, 'channels': c,
                                          'height': h, 'width': h}})
    w.layer('dummy', 'DummyData', (), 'dummy',
            params={'dummy_data_param': {'shape': [{'dim': [n, c]}]}})
    w.layer('db', 'Data', (), ['db_data', 'db_label'],
            params={'data_param': {'source': 'train_lmdb', 'batch_size': n,
                                   'backend': 'LMDB'}})
    w.layer('images', 'ImageData', (), ['img_data', 'img_label'],
            params={'image_data_param': {'source': 'list.txt'}})
    w.layer('hdf5', 'HDF5Data', (), ['h5_data', 'h5_label'],
            params={'hdf5_data_param': {'source': 'h5.txt',
                                        'batch_size': n}})
    w.layer('windows', 'WindowData', (), ['win_data', 'win_label'],
            params={'window_data_param': {'source': 'windows.txt',
                                          'batch_size': n}})
    w.layer('silence_data', 'Silence',
            ['mem_data', 'mem_label', 'dummy', 'db_data', 'db_label',
             'img_data', 'img_label', 'h5_data', 'h5_label', 'win_data',
             'win_label'], [])
    # conv1 (2,6,7,7) -> BatchNorm -> Scale -> leaky ReLU
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 6, 'kernel_size': 3,
                                          'pad': 1}},
            blobs=[normal(6, c, 3, 3), normal(6)], param_specs=_PARAM_SPECS)
    factor = 2.5
    w.layer('bn1', 'BatchNorm', 'conv1', 'conv1',
            params={'batch_norm_param': {'eps': 1e-3}},
            blobs=[normal(6) * factor, positive(6) * factor,
                   numpy.array([factor], numpy.float32)])
    w.layer('scale1', 'Scale', 'conv1', 'conv1',
            params={'scale_param': {'bias_term': True}},
            blobs=[positive(6), normal(6)])
    w.layer('relu1', 'ReLU', 'conv1', 'conv1',
            params={'relu_param': {'negative_slope': 0.1}})
    # LRN both ways, then 3x3/2 pad 1 max pooling: (2,6,4,4)
    w.layer('norm1', 'LRN', 'conv1', 'norm1',
            params={'lrn_param': {'local_size': 3, 'alpha': 0.3,
                                  'beta': 0.75, 'k': 1.5}})
    w.layer('norm2', 'LRN', 'norm1', 'norm2',
            params={'lrn_param': {'local_size': 3, 'alpha': 0.3,
                                  'beta': 0.75,
                                  'norm_region': 'WITHIN_CHANNEL'}})
    w.layer('pool1', 'Pooling', 'norm2', 'pool1',
            params={'pooling_param': {'pool': 'MAX', 'kernel_size': 3,
                                      'stride': 2, 'pad': 1}})
    w.layer('split1', 'Split', 'pool1', ['pool1_a', 'pool1_b'])
    # Two branches: dilated group conv + PReLU, group deconv + ELU.
    w.layer('conv2', 'Convolution', 'pool1_a', 'conv2',
            params={'convolution_param': {'num_output': 6, 'kernel_size': 3,
                                          'pad': 2, 'dilation': 2,
                                          'group': 2}},
            blobs=[normal(6, 3, 3, 3), normal(6)])
    w.layer('prelu2', 'PReLU', 'conv2', 'conv2', blobs=[normal(6)])
    w.layer('deconv2', 'Deconvolution', 'pool1_b', 'deconv2',
            params={'convolution_param': {'num_output': 6, 'kernel_size': 3,
                                          'pad': 1, 'group': 2}},
            blobs=[normal(6, 3, 3, 3), normal(6)])
    w.layer('elu2', 'ELU', 'deconv2', 'deconv2',
            params={'elu_param': {'alpha': 0.7}})
    w.layer('sum2', 'Eltwise', ['conv2', 'deconv2'], 'sum2',
            params={'eltwise_param': {'operation': 'SUM',
                                      'coeff': [1.0, -0.5]}})
    w.layer('prod2', 'Eltwise', ['sum2', 'pool1_a'], 'prod2',
            params={'eltwise_param': {'operation': 'PROD'}})
    w.layer('max2', 'Eltwise', ['prod2', 'sum2', 'conv2'], 'max2',
            params={'eltwise_param': {'operation': 'MAX'}})
    w.layer('sigmoid', 'Sigmoid', 'max2', 'sigmoid')
    w.layer('tanh', 'TanH', 'sum2', 'tanh')
    w.layer('absval', 'AbsVal', 'tanh', 'absval')
    w.layer('bnll', 'BNLL', 'prod2', 'bnll')
    w.layer('power', 'Power', 'absval', 'power',
            params={'power_param': {'power': 2.0, 'scale': 0.5,
                                    'shift': 1.0}})
    w.layer('concat', 'Concat', ['sigmoid', 'bnll', 'power'], 'concat')
    w.layer('slice', 'Slice', 'concat', ['s1', 's2', 's3'],
            params={'slice_param': {'slice_point': [6, 12]}})
    w.layer('bias3', 'Bias', 's1', 's1', blobs=[normal(6)])
    w.layer('pool2', 'Pooling', 's1', 'pool2',
            params={'pooling_param': {'pool': 'AVE', 'kernel_size': 3,
                                      'stride': 2, 'pad': 1}})
    w.layer('drop2', 'Dropout', 'pool2', 'pool2',
            params={'dropout_param': {'dropout_ratio': 0.3}})
    w.layer('gpool', 'Pooling', 's2', 'gpool',
            params={'pooling_param': {'pool': 'AVE',
                                      'global_pooling': True}})
    w.layer('flat', 'Flatten', 'pool2', 'flat')
    w.layer('fc1', 'InnerProduct', 'flat', 'fc1',
            params={'inner_product_param': {
                'num_output': ALL_LAYERS_N_CLASS}},
            blobs=[normal(ALL_LAYERS_N_CLASS, 54), normal(ALL_LAYERS_N_CLASS)],
            param_specs=_PARAM_SPECS)
    w.layer('reshape', 'Reshape', 'gpool', 'rs',
            params={'reshape_param': {'shape': {'dim': [0, 3, -1]}}})
    w.layer('fc_t', 'InnerProduct', 'rs', 'fc_t',
            params={'inner_product_param': {'num_output': 4, 'axis': 2,
                                            'transpose': True}},
            blobs=[normal(2, 4), normal(4)])
    w.layer('prob', 'Softmax', 'fc1', 'prob')
    w.layer('loss', 'SoftmaxWithLoss', ['fc1', 'label'], 'loss',
            params={'loss_param': {'ignore_label': -1}})
    w.layer('accuracy', 'Accuracy', ['fc1', 'label'], 'accuracy',
            params={'accuracy_param': {'top_k': 2}})
    w.layer('silence', 'Silence', ['s3'], [])
    if version == 1:
        for name in _V2_ONLY_LAYERS:
            w.remove_layer(name)
    return w


def all_layers_inputs(seed: int = 0) -> Dict[str, numpy.ndarray]:
    """Inputs for :func:`make_all_layers_net`'s net: ``data`` (float32) and
    ``label`` (int32, one label ignored)."""
    rng = numpy.random.RandomState(seed)
    data = rng.standard_normal(ALL_LAYERS_INPUT_SHAPE).astype(numpy.float32)
    label = rng.randint(0, ALL_LAYERS_N_CLASS,
                        ALL_LAYERS_INPUT_SHAPE[0]).astype(numpy.int32)
    return {'data': data, 'label': label}


def make_all_layers_net(path_caffemodel: PathLike,
                        path_prototxt: Optional[PathLike] = None,
                        version: int = 2, seed: int = 0) -> NetWriter:
    """Writes a tiny net that uses every layer type the loader supports.

    Input ``data`` is ``(2, 4, 7, 7)`` and ``label`` holds 2 labels of 5
    classes (:func:`all_layers_inputs`). Every data-layer type (Input,
    Data, MemoryData, DummyData, ImageData, HDF5Data, WindowData), Silence,
    Convolution (pad, dilation, group), Deconvolution (group), BatchNorm,
    Scale (with bias), Bias, ReLU (leaky), PReLU, ELU, LRN (both regions),
    Pooling (MAX, AVE, global), Split, Eltwise (SUM with coeff, PROD,
    MAX), Sigmoid, TanH, AbsVal, BNLL, Power, Concat, Slice, Dropout,
    Flatten, Reshape, InnerProduct (also axis 2 + transpose), Softmax,
    SoftmaxWithLoss and Accuracy. Outputs include ``prob``, ``loss``,
    ``accuracy``, ``fc_t``.

    With ``version=1`` the net is written in the V1 format without the
    layers whose types V1 lacks (Input, BatchNorm, Scale, Bias, PReLU,
    ELU, Reshape and the InnerProduct after it); inputs are then declared
    with ``input_dim``.

    Returns:
        NetWriter: The net written.
    """
    w = all_layers_writer(version, seed)
    w.write_caffemodel(path_caffemodel, version)
    if path_prototxt is not None:
        w.write_prototxt(path_prototxt, version)
    return w
