"""Write Caffe files: ``.caffemodel``, ``.prototxt``, ``.binaryproto``.

:class:`NetWriter` holds a net as V2 layer descriptions with their weights
and writes it in either of Caffe's formats:

* **V2** (``NetParameter.layer``, Caffe since 2015): type strings
  (``'Convolution'``), ``BlobShape`` shapes of any number of axes, inputs
  as ``Input`` layers or the net-level ``input`` fields.
* **V1** (``NetParameter.layers``, the 2014 model zoo's, e.g.
  ``VGG_ILSVRC_16_layers.caffemodel``): enum types (:data:`V1_TYPE_CODES`),
  legacy 4-D ``num, channels, height, width`` blob dims left-padded with
  ones (an InnerProduct weight ``(out, in)`` is ``(1, 1, out, in)``), the
  lists ``blobs_lr`` / ``weight_decay``. Types newer than V1 (BatchNorm,
  Scale, ELU, PReLU, Input, ...) cannot be written as V1;
  :meth:`NetWriter.v1_compatible` says whether a net can.

Blobs are written as Caffe's ``Blob::ToProto`` writes them; ``legacy=True``
gives a V2 file with legacy dims, as Caffe wrote them in 2014-2015, and
``raw_data_type='FLOAT16'`` (or ``'FLOAT'``, ``'DOUBLE'``) stores the values
as NVIDIA Caffe's ``raw_data`` bytes of that type instead of packed
``data``, as FP16 model files do (OpenCV reads them). The
caffemodel is streamed (:mod:`chainer_finetune.caffe.wire`), each blob from
its array or a :class:`RandomBlob`'s chunks straight to the file: a
VGG-16-sized model (528 MiB) takes seconds and a few MiB. Its bytes are
those protobuf serializes for :meth:`NetWriter.net_parameter`.

Every file is written through :func:`chainer_finetune.files.atomic_output`
and replaces an existing one only when complete: a write that fails
part-way leaves no partial file. A net that cannot be written in the
format asked raises :class:`~chainer_finetune.errors.CaffeModelError`
naming the layer, before anything is written. Example::

    w = NetWriter('tiny')
    w.input('data', (1, 3, 8, 8))
    w.layer('conv1', 'Convolution', 'data', 'conv1',
            params={'convolution_param': {'num_output': 4,
                                          'kernel_size': 3}},
            blobs=[weights, bias])
    w.write_caffemodel('tiny.caffemodel')            # V2
    w.write_caffemodel('tiny_v1.caffemodel', version=1)
    w.write_prototxt('tiny.prototxt')
"""

from __future__ import annotations

import io
import math
import os
from typing import (Any, BinaryIO, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, Union)

import numpy
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import text_format

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.upgrade import V1_PARAM_SPEC_LISTS
from chainer_finetune.caffe.upgrade import V1_TYPE_NAMES
from chainer_finetune.caffe.upgrade import copy_shared_layer_fields
from chainer_finetune.caffe.wire import (
    BLOB_DATA, BLOB_LEGACY_DIMS, BLOB_RAW_DATA, BLOB_RAW_DATA_TYPE, BLOB_SHAPE,
    LAYER_BLOBS, NET_LAYER, NET_LAYERS, RAW_DATA_DTYPES, V1_LAYER_BLOBS,
    VARINT, encode_varint, field_key, len_prefix)
from chainer_finetune.errors import CaffeModelError
from chainer_finetune.files import atomic_output

PathLike = Union[str, 'os.PathLike[str]']

# V2 type strings -> V1LayerParameter.LayerType names: the inverse of
# Caffe's UpgradeV1LayerType, whose table the reader's upgrade holds (the
# tests check both directions against a transcription of Caffe's).
V1_TYPE_CODES: Dict[str, str] = {
    v2: v1 for v1, v2 in V1_TYPE_NAMES.items()}

# Caffe's two binary/text net formats: 2 (`layer`) and 1 (`layers`).
FORMAT_VERSIONS = (1, 2)

# The ways NetWriter.input declares an input (see there).
INPUT_FORMS = ('layer', 'input_shape', 'input_dim')

# Values generated per RandomBlob chunk (4 MiB of float32).
CHUNK_VALUES = 1 << 20


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
        """The number of values."""
        return int(numpy.prod(self.shape, dtype=numpy.int64))

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return len(self.shape)

    def chunks(self) -> Iterator[numpy.ndarray]:
        """The values in order, as float32 arrays of at most 2**20."""
        rng = numpy.random.default_rng(self.seed)
        if self.distribution == 'uniform':
            draw = rng.random
            scale = numpy.float32(2 * math.sqrt(3.0) * self.std)
            shift = numpy.float32(self.mean - math.sqrt(3.0) * self.std)
        else:
            draw = rng.standard_normal
            scale = numpy.float32(self.std)
            shift = numpy.float32(self.mean)
        for start in range(0, self.size, CHUNK_VALUES):
            chunk = draw(min(CHUNK_VALUES, self.size - start),
                         dtype=numpy.float32)
            chunk *= scale
            chunk += shift
            yield chunk

    def array(self) -> numpy.ndarray:
        """All values as one float32 array of :attr:`shape`."""
        out = numpy.empty(self.size, dtype=numpy.float32)
        for start, chunk in zip(range(0, self.size, CHUNK_VALUES),
                                self.chunks()):
            out[start:start + chunk.size] = chunk
        return out.reshape(self.shape)

    def __repr__(self) -> str:
        return 'RandomBlob({}, std={:g}, mean={:g}, seed={!r}, {})'.format(
            self.shape, self.std, self.mean, self.seed, self.distribution)


BlobLike = Union[numpy.ndarray, RandomBlob]


def _as_blob(value, copy: bool = True) -> BlobLike:
    if isinstance(value, RandomBlob):
        return value
    if not copy:
        return numpy.ascontiguousarray(value, dtype=numpy.float32)
    return numpy.array(value, dtype=numpy.float32)   # a copy, C order


def blob_array(blob: BlobLike) -> numpy.ndarray:
    """The values of a blob given to :meth:`NetWriter.layer` (float32)."""
    return blob.array() if isinstance(blob, RandomBlob) else blob


def check_format_version(version: int) -> None:
    """Raises ``ValueError`` unless ``version`` is 1 or 2 (V1 or V2)."""
    if version not in FORMAT_VERSIONS:
        raise ValueError('version must be 1 or 2, got {!r}'.format(version))


def fill_message(msg: pb_message.Message, values: Mapping[str, Any]
                 ) -> pb_message.Message:
    """Sets fields of ``msg`` from a dict; returns ``msg``.

    Nested messages take dicts (or messages), repeated fields take lists (a
    single value is wrapped), enums take their names or numbers::

        fill_message(p, {'num_output': 8, 'kernel_size': 3,
                         'engine': 'CAFFE'})

    Raises:
        ValueError: for a name that is not a field of the message.
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
                    _fill_submessage(container.add(), item)
                else:
                    container.append(_scalar(field, item))
        elif is_message:
            _fill_submessage(getattr(msg, name), value)
        else:
            setattr(msg, name, _scalar(field, value))
    return msg


def _fill_submessage(sub: pb_message.Message, value) -> None:
    if isinstance(value, pb_message.Message):
        sub.CopyFrom(value)
    else:
        sub.SetInParent()
        fill_message(sub, value)


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


def _as_list(value, single) -> list:
    """``[value]`` for one value of type ``single``, else ``list(value)``."""
    return [value] if isinstance(value, single) else list(value)


def legacy_dims(shape: Sequence[int], where: str = 'blob') -> Tuple[int, ...]:
    """A shape as Caffe's legacy (num, channels, height, width).

    Shorter shapes are left-padded with ones, as Caffe compares them.

    Args:
        shape: The blob's shape.
        where: The blob, for the error message (``"layer 'fc' blob 0"``).

    Raises:
        CaffeModelError: for a shape of more than four axes.
    """
    shape = tuple(shape)
    if len(shape) > 4:
        raise CaffeModelError('{}: a {}-D blob {} has no legacy 4-D '
                              'form'.format(where, len(shape), shape))
    return (1,) * (4 - len(shape)) + shape


def check_raw_data_type(raw_data_type: Optional[str]) -> Optional[int]:
    """The ``caffe_pb2.Type`` value of a writer's ``raw_data_type`` option.

    Args:
        raw_data_type: None (packed float32 ``data``), ``'FLOAT16'``,
            ``'FLOAT'`` or ``'DOUBLE'``.

    Raises:
        ValueError: for any other value.
    """
    if raw_data_type is None:
        return None
    names = {caffe_pb2.Type.Name(t): t for t in RAW_DATA_DTYPES}
    if raw_data_type not in names:
        raise ValueError('raw_data_type must be None or one of {}, not '
                         '{!r}'.format(sorted(names), raw_data_type))
    return names[raw_data_type]


class _EncodedBlob:
    """One BlobProto, laid out as protobuf serializes it: legacy dims
    (fields 1-4), packed data (5), shape (7), then, in place of packed data,
    raw_data_type (10) and raw_data (12) when ``raw_type`` is given."""

    def __init__(self, blob: BlobLike, legacy: bool, where: str,
                 raw_type: Optional[int] = None) -> None:
        self.blob = blob
        shape = tuple(blob.shape)
        self.prefix = self.suffix = b''
        if legacy:
            self.prefix = b''.join(
                field_key(number, VARINT) + encode_varint(d)
                for number, d in zip(BLOB_LEGACY_DIMS,
                                     legacy_dims(shape, where)))
        elif shape:   # Blob::ToProto adds no shape for a 0-axis blob.
            encoded = caffe_pb2.BlobShape(dim=shape).SerializeToString()
            self.suffix = len_prefix(BLOB_SHAPE, len(encoded)) + encoded
        count = int(numpy.prod(shape, dtype=numpy.int64))
        self.raw_header = b''
        if raw_type is None:
            self.dtype = numpy.dtype('<f4')
            self.nbytes = 4 * count
            self.data_header = len_prefix(BLOB_DATA, self.nbytes) \
                if self.nbytes else b''
        else:
            self.dtype = numpy.dtype(RAW_DATA_DTYPES[raw_type])
            self.nbytes = self.dtype.itemsize * count
            self.data_header = b''
            self.raw_header = (field_key(BLOB_RAW_DATA_TYPE, VARINT) +
                               encode_varint(raw_type) +
                               len_prefix(BLOB_RAW_DATA, self.nbytes))
        self.length = (len(self.prefix) + len(self.data_header) +
                       self.nbytes + len(self.suffix) + len(self.raw_header))

    def write(self, f: BinaryIO) -> None:
        f.write(self.prefix)
        if self.raw_header:
            f.write(self.suffix)
            f.write(self.raw_header)
            self._write_values(f)
        else:
            f.write(self.data_header)
            self._write_values(f)
            f.write(self.suffix)

    def _write_values(self, f: BinaryIO) -> None:
        if isinstance(self.blob, RandomBlob):
            for chunk in self.blob.chunks():
                f.write(_little_endian(chunk, self.dtype).data)
        elif self.nbytes:
            f.write(_little_endian(self.blob, self.dtype).data)


def _little_endian(array: numpy.ndarray,
                   dtype: Union[str, numpy.dtype] = '<f4') -> numpy.ndarray:
    # The float32 values are what the net holds: a narrower type is rounded
    # from them (to nearest even, as NVIDIA Caffe's and OpenCV's float16
    # conversions round), not from the caller's float64.
    values = numpy.ascontiguousarray(array, dtype='<f4').reshape(-1)
    return values if values.dtype == dtype else values.astype(dtype)


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


_V1_HANDLED = {'name', 'type', 'bottom', 'top', 'loss_weight', 'include',
               'exclude', 'param', 'blobs'}


def to_v1_layer(layer: caffe_pb2.LayerParameter) -> caffe_pb2.V1LayerParameter:
    """The V1 form of a V2 layer description (without blobs).

    Raises:
        CaffeModelError: for a type without a V1 code (BatchNorm, Scale,
            Bias, ELU, PReLU, Input, Reshape, ...) or a field V1 lacks.
    """
    code = V1_TYPE_CODES.get(layer.type)
    if code is None:
        raise CaffeModelError(
            'layer {!r}: type {!r} has no V1 (`layers`) code; write the net '
            'as V2'.format(layer.name, layer.type))
    v1 = caffe_pb2.V1LayerParameter()
    copy_shared_layer_fields(layer, v1)
    v1.type = caffe_pb2.V1LayerParameter.LayerType.Value(code)
    for spec_field, v1_list in V1_PARAM_SPEC_LISTS:
        if any(s.HasField(spec_field) for s in layer.param):
            getattr(v1, v1_list).extend(getattr(s, spec_field)
                                        for s in layer.param)
    v1_fields = caffe_pb2.V1LayerParameter.DESCRIPTOR.fields_by_name
    for field, value in layer.ListFields():
        if field.name in _V1_HANDLED:
            continue
        if field.name not in v1_fields or not field.name.endswith('_param'):
            raise CaffeModelError('layer {!r}: field {!r} has no V1 '
                                  'form'.format(layer.name, field.name))
        getattr(v1, field.name).CopyFrom(value)
    return v1


class NetWriter:
    """Builds a Caffe net description with weights and writes it.

    Declare the inputs with :meth:`input`, add layers in order with
    :meth:`layer`, then write with :meth:`write_caffemodel` (weights) and
    :meth:`write_prototxt` (the description alone).

    Args:
        name: The net's ``name``.

    Attributes:
        name: The net's ``name``.
        input_shapes: The declared input blobs and their shapes.
    """

    def __init__(self, name: str = 'net') -> None:
        self.name = name
        # V2 descriptions without blobs, and the blobs of each; the V1
        # form is derived when writing.
        self._layers: List[caffe_pb2.LayerParameter] = []
        self._blobs: List[List[BlobLike]] = []
        # Net-level inputs: (name, shape, form) for forms input_dim and
        # input_shape.
        self._net_inputs: List[Tuple[str, Tuple[int, ...], str]] = []
        self.input_shapes: Dict[str, Tuple[int, ...]] = {}

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

        Raises:
            ValueError: for an unknown form, an ``input_dim`` shape that is
                not 4-D, or mixed net-level forms.
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
              loss_weight: Union[float, Sequence[float], None] = None,
              copy_blobs: bool = True) -> caffe_pb2.LayerParameter:
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
            copy_blobs: Copy the arrays (default). False keeps float32
                C-order arrays as they are, for a net written at once
                (an exporter's): the arrays must not change until then.

        Raises:
            CaffeModelError: for a second layer of the same name, or a name
                in ``params`` (or the other dicts) that is not a field.
        """
        if any(layer.name == name for layer in self._layers):
            raise CaffeModelError('two layers named {!r}'.format(name))
        layer = caffe_pb2.LayerParameter(name=name, type=type)
        layer.bottom.extend(_as_list(bottoms, str))
        layer.top.extend(_as_list(name if tops is None else tops, str))
        if loss_weight is not None:
            layer.loss_weight.extend(_as_list(loss_weight, (int, float)))
        specs = {'param': list(param_specs), 'include': include,
                 'exclude': exclude}
        try:
            fill_message(layer, {k: v for k, v in specs.items()
                                 if v is not None})
            fill_message(layer, params or {})
        except ValueError as e:
            raise CaffeModelError('layer {!r}: {}'.format(name, e)) from None
        self._layers.append(layer)
        self._blobs.append([_as_blob(b, copy_blobs) for b in blobs])
        return layer

    @property
    def layers(self) -> List[caffe_pb2.LayerParameter]:
        """The V2 layer descriptions (without blobs), in order."""
        return list(self._layers)

    def get_layer(self, name: str) -> caffe_pb2.LayerParameter:
        """The description of layer ``name`` (editable in place)."""
        return self._layers[self._index(name)]

    def blobs(self, name: str) -> List[BlobLike]:
        """The blobs of layer ``name`` as given (arrays or RandomBlobs)."""
        return list(self._blobs[self._index(name)])

    def blob_arrays(self, name: str) -> List[numpy.ndarray]:
        """The blobs of layer ``name`` as float32 arrays."""
        return [blob_array(b) for b in self._blobs[self._index(name)]]

    def set_blobs(self, name: str, blobs: Iterable[Any]) -> None:
        """Replaces the blobs of layer ``name`` (arrays or RandomBlobs)."""
        self._blobs[self._index(name)] = [_as_blob(b) for b in blobs]

    def remove_layer(self, name: str) -> None:
        """Removes layer ``name`` with its blobs (and, for an ``Input``
        layer, its input shapes)."""
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
            self._layer_messages(1)
        except CaffeModelError:
            return False
        return True

    def _layer_messages(self, version: int) -> List[pb_message.Message]:
        """The layer descriptions in ``version``'s form (checks the net
        header for it too)."""
        check_format_version(version)
        if version == 2:
            return list(self._layers)
        if any(layer.type == 'Input' for layer in self._layers):
            raise CaffeModelError(
                "an Input layer has no V1 form; declare inputs with "
                "form='input_dim' or 'input_shape'")
        return [to_v1_layer(layer) for layer in self._layers]

    def _net_header(self) -> caffe_pb2.NetParameter:
        net = caffe_pb2.NetParameter(name=self.name)
        for name, shape, form in self._net_inputs:
            net.input.append(name)
            if form == 'input_dim':
                net.input_dim.extend(shape)
            else:
                net.input_shape.add().dim.extend(shape)
        return net

    def net_parameter(self, version: int = 2, with_blobs: bool = True,
                      legacy: Optional[bool] = None,
                      raw_data_type: Optional[str] = None
                      ) -> caffe_pb2.NetParameter:
        """The whole net as one protobuf message.

        Args:
            version: 2 (``layer``) or 1 (``layers``).
            with_blobs: Include the weights (materializing RandomBlobs:
                meant for small nets).
            legacy: Write blob shapes as legacy 4-D dims (default: for V1).
            raw_data_type: As :meth:`write_caffemodel`.

        Raises:
            CaffeModelError: as :meth:`write_caffemodel`.
            ValueError: as :meth:`write_caffemodel`.
        """
        raw_type = check_raw_data_type(raw_data_type)
        legacy = version == 1 if legacy is None else legacy
        layers = self._layer_messages(version)
        net = self._net_header()
        container = net.layer if version == 2 else net.layers
        for i, layer in enumerate(layers):
            msg = container.add()
            msg.CopyFrom(layer)
            for j, blob in enumerate(self._blobs[i] if with_blobs else ()):
                encoded = io.BytesIO()
                _EncodedBlob(blob, legacy, self._where(i, j),
                             raw_type).write(encoded)
                msg.blobs.add().ParseFromString(encoded.getvalue())
        return net

    def _where(self, index: int, blob: int) -> str:
        return 'layer {!r} blob {}'.format(self._layers[index].name, blob)

    def write_caffemodel(self, path: PathLike, version: int = 2,
                         legacy: Optional[bool] = None,
                         raw_data_type: Optional[str] = None) -> int:
        """Writes the binary caffemodel, streaming blob data to the file.

        Args:
            path: Output file.
            version: 2 (``layer``, blob ``shape``) or 1 (``layers`` with V1
                type codes, legacy 4-D blob dims).
            legacy: Legacy 4-D blob dims in a V2 file too (as Caffe wrote
                them in 2014-2015); default: only for V1.
            raw_data_type: None to store each blob's values as packed
                float32 ``data`` (as BVLC Caffe does); ``'FLOAT16'``,
                ``'FLOAT'`` or ``'DOUBLE'`` to store them as NVIDIA Caffe's
                ``raw_data`` bytes of that type, with ``raw_data_type`` set
                (``'FLOAT16'`` rounds the float32 values to half precision,
                as an FP16 model file holds them).

        Returns:
            int: The number of bytes written.

        Raises:
            CaffeModelError: V1 requested for a net with a type, field or
                ``Input`` layer that V1 lacks, or legacy dims for a blob of
                more than 4 axes; the message names the layer.
            ValueError: a version other than 1 or 2, or an unknown
                ``raw_data_type``.
        """
        raw_type = check_raw_data_type(raw_data_type)
        legacy = version == 1 if legacy is None else legacy
        layer_field = NET_LAYER if version == 2 else NET_LAYERS
        blobs_field = LAYER_BLOBS if version == 2 else V1_LAYER_BLOBS
        layers = []
        for i, layer in enumerate(self._layer_messages(version)):
            head, tail = _split_serialize(layer, blobs_field)
            encoded = [_EncodedBlob(b, legacy, self._where(i, j), raw_type)
                       for j, b in enumerate(self._blobs[i])]
            layers.append((head, encoded, tail))
        net_head, net_tail = _split_serialize(self._net_header(),
                                              layer_field)
        with atomic_output(path, overwrite=True) as tmp, \
                open(tmp, 'wb') as f:
            f.write(net_head)
            for head, encoded, tail in layers:
                length = len(head) + len(tail) + sum(
                    len(len_prefix(blobs_field, e.length)) + e.length
                    for e in encoded)
                f.write(len_prefix(layer_field, length))
                f.write(head)
                for e in encoded:
                    f.write(len_prefix(blobs_field, e.length))
                    e.write(f)
                f.write(tail)
            f.write(net_tail)
            return f.tell()

    def write_prototxt(self, path: PathLike, version: int = 2) -> None:
        """Writes the text net description (no weights).

        Args:
            path: Output file.
            version: 2 (``layer``) or 1 (``layers``, ``input_dim``...).

        Raises:
            CaffeModelError: V1 requested for a net V1 cannot express.
        """
        text = text_format.MessageToString(
            self.net_parameter(version, with_blobs=False))
        with atomic_output(path, overwrite=True) as tmp, \
                open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)


def write_binaryproto(path: PathLike, array: numpy.ndarray,
                      legacy: bool = True) -> None:
    """Writes a ``.binaryproto`` BlobProto, e.g. a mean image.

    Args:
        path: Output file.
        array: The values; a mean image ``(C, H, W)`` is written as Caffe's
            ``compute_image_mean`` does, with legacy dims ``(1, C, H, W)``.
        legacy: Legacy 4-D dims (else a ``shape``).

    Raises:
        CaffeModelError: legacy dims asked for an array of more than 4 axes.
    """
    encoded = _EncodedBlob(numpy.asarray(array, dtype=numpy.float32),
                           legacy, os.fspath(path))
    with atomic_output(path, overwrite=True) as tmp, open(tmp, 'wb') as f:
        encoded.write(f)
