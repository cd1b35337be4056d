"""What every layer type's code shares: the build context and result, the
layer function's base class, and the pieces of an inverse (link -> blobs)."""

from __future__ import annotations

import dataclasses
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import chainer
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.reader import Blob
from chainer_finetune.errors import CaffeModelError
from chainer_finetune.errors import UnsupportedLayerError

Shape = Tuple[Optional[int], ...]


@dataclasses.dataclass
class BuildContext:
    """What a builder sees: one layer, its blobs, where they came from."""

    layer: caffe_pb2.LayerParameter
    blobs: List[Blob]
    source: str

    @property
    def where(self) -> str:
        return '{}: layer {!r} ({})'.format(self.source, self.layer.name,
                                           self.layer.type)

    def error(self, what: str) -> CaffeModelError:
        return CaffeModelError('{}: {}'.format(self.where, what))

    def unsupported(self, what: str) -> UnsupportedLayerError:
        return UnsupportedLayerError('{}: {}'.format(self.where, what))

    def expect_bottoms(self, *counts: int) -> int:
        """The number of bottoms, checked to be one of ``counts``."""
        n = len(self.layer.bottom)
        if n not in counts:
            raise self.error('expects {} bottom(s), has {}'.format(
                ' or '.join(map(str, counts)), n))
        return n

    def expect_blobs(self, names: Sequence[str]) -> None:
        """Checks that exactly ``len(names)`` blobs are stored."""
        if len(self.blobs) != len(names):
            raise self.error('expects {} blob(s) ({}) but the weights hold '
                             '{}'.format(len(names), ', '.join(names) or
                                         'none', len(self.blobs) or
                                         'none for a layer of this name'))

    def blob(self, index: int, expected: Shape, what: str) -> numpy.ndarray:
        """Blob ``index`` as an array of shape ``expected``.

        ``None`` entries of ``expected`` match any size. A blob stored with
        legacy 4-D dims matches when they equal ``expected`` left-padded
        with ones, as Caffe's ``Blob::ShapeEquals`` allows; it is then
        reshaped.
        """
        if index >= len(self.blobs):
            raise self.error('blob {} ({}) is missing'.format(index, what))
        blob = self.blobs[index]
        actual = candidate = blob.array.shape
        padding = 4 - len(expected)
        if blob.legacy and padding >= 0 and actual[:padding] == (1,) * padding:
            candidate = actual[padding:]
        if len(candidate) == len(expected) and all(
                e is None or e == a for e, a in zip(expected, candidate)):
            return blob.array.reshape(candidate)
        shown = tuple('*' if e is None else e for e in expected)
        raise self.error('blob {} ({}) has shape {} in the weights, expected '
                         '{} from the layer description'.format(
                             index, what, actual, shown).replace("'*'", '*'))


class LayerFunction:
    """Computes one layer's tops from its bottoms (picklable).

    Subclasses implement :meth:`__call__`; those with parameters find their
    link on the owning net by ``link_name``.
    """

    link_name: Optional[str] = None

    def __call__(self, net: chainer.Chain, *xs: chainer.Variable
                 ) -> Tuple[chainer.Variable, ...]:
        raise NotImplementedError

    def link(self, net: chainer.Chain) -> chainer.Link:
        return getattr(net, self.link_name)


@dataclasses.dataclass(eq=False)
class LinkedFunction(LayerFunction):
    """A layer function whose parameters live in the link ``link_name``
    (None where the layer has none, e.g. a Scale with a second bottom)."""

    # A field without a default: LayerFunction's None is not one.
    link_name: Optional[str] = dataclasses.field()


class Built(NamedTuple):
    """A builder's result. ``function`` None marks an input layer."""

    function: Optional[LayerFunction]
    link: Optional[chainer.Link]


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's ``CanonicalAxisIndex``: a negative axis counts from the end."""
    return axis if axis >= 0 else axis + ndim


def set_params(link: chainer.Link, **arrays: numpy.ndarray) -> None:
    """Registers each array as a float32 parameter of ``link``."""
    with link.init_scope():
        for name, array in arrays.items():
            # Not ascontiguousarray: it turns a 0-axis array (a Scale/Bias
            # scalar) into shape (1,).
            setattr(link, name, chainer.Parameter(
                numpy.asarray(array, dtype=numpy.float32, order='C')))


def channel_vector_link(ctx: BuildContext, shared: bool, what: str
                        ) -> chainer.Link:
    """A link holding the layer's one blob as its parameter ``W``.

    For the types with one learned value per channel, or one for all
    channels (PReLU's slopes, Normalize's scale): shape ``(1,)`` when
    ``shared`` (also read from a 0-axis blob), else ``(channels,)``.
    """
    ctx.expect_blobs([what])
    link = chainer.Link()
    set_params(link, W=ctx.blob(0, (1,) if shared else (None,), what))
    return link


def weight_blob(layer: caffe_pb2.LayerParameter) -> List[str]:
    """``param_names`` of a type whose one blob is the learned ``W``."""
    return ['W']


class InvertedBlob(NamedTuple):
    """One Caffe blob computed back from a link.

    Attributes:
        attr: The link attribute the blob restores (None for a blob with no
            attribute of its own, such as BatchNorm's scale factor).
        array: The blob, float32, in Caffe's shape.
        role: What it holds, as written in the exported file.
    """

    attr: Optional[str]
    array: numpy.ndarray
    role: str


BlobNames = Callable[[caffe_pb2.LayerParameter], List[str]]
Inverter = Callable[[caffe_pb2.LayerParameter, chainer.Link],
                    List[InvertedBlob]]


def host_array(value) -> numpy.ndarray:
    """A parameter, variable or array as a NumPy array on the CPU.

    Raises:
        CaffeModelError: for an uninitialized parameter.
    """
    if isinstance(value, chainer.Variable):
        value = value.array
    if value is None:
        raise CaffeModelError('uninitialized parameter')
    return numpy.asarray(chainer.backend.CpuDevice().send(value))


def float32_array(value) -> numpy.ndarray:
    """:func:`host_array` as a contiguous float32 array."""
    return numpy.ascontiguousarray(host_array(value), dtype=numpy.float32)


def link_blob(link: chainer.Link, name: str) -> InvertedBlob:
    """The link attribute ``name`` stored as it is."""
    return InvertedBlob(name, float32_array(getattr(link, name)), name)


def named_blobs(names: BlobNames) -> Inverter:
    """An inverter storing the link's attributes ``names(layer)`` as they
    are: for types whose Chainer layout is Caffe's."""
    def invert(layer: caffe_pb2.LayerParameter, link: chainer.Link
               ) -> List[InvertedBlob]:
        return [link_blob(link, name) for name in names(layer)]
    return invert
