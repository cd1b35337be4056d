"""The layer-type registry: one :class:`LayerType` per Caffe type, which
the loader, ``save_weights``, ``lr_mults_from_prototxt`` and
``replace_head`` ask instead of keeping tables of their own."""

from __future__ import annotations

import dataclasses
from typing import (Callable, Dict, Iterable, Iterator, List, Optional,
                    Tuple)

from google.protobuf import message

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.layers import base
from chainer_finetune.errors import UnsupportedLayerError

Builder = Callable[[base.BuildContext], base.Built]


@dataclasses.dataclass(frozen=True)
class LayerType:
    """Everything the library knows about one Caffe layer type.

    Attributes:
        names: The Caffe type names (``layer.type``) of this entry; several
            only where they convert the same way (the data-input types).
        build: Makes the link and the function of one layer.
        invert: The layer's Caffe blobs computed back from its link (for
            ``save_weights``); None for a type without blobs.
        param_names: The Chainer names of the blobs an optimizer trains,
            in blob order, for a layer description (they depend on e.g.
            ``bias_term`` or the number of bottoms); None for a type
            without learnable blobs.
        output_field: The ``LayerParameter`` field, a message with
            ``num_output`` and ``bias_term``, that sets the output count;
            None where the input decides it.
        stateful: Whether the type holds blobs no optimizer trains
            (BatchNorm's running statistics).
    """

    names: Tuple[str, ...]
    build: Builder
    invert: Optional[base.Inverter] = None
    param_names: Optional[base.BlobNames] = None
    output_field: Optional[str] = None
    stateful: bool = False

    @property
    def holds_blobs(self) -> bool:
        """Whether a layer of this type may store blobs."""
        return self.param_names is not None or self.stateful

    def learnable_names(self, layer: caffe_pb2.LayerParameter
                        ) -> Optional[List[str]]:
        """``param_names`` of ``layer``; None for a type without them."""
        return None if self.param_names is None else \
            self.param_names(layer)

    def output_param(self, layer: caffe_pb2.LayerParameter
                     ) -> Optional[message.Message]:
        """The part of ``layer`` holding ``num_output`` and ``bias_term``."""
        return None if self.output_field is None else \
            getattr(layer, self.output_field)


_REGISTRY: Dict[str, LayerType] = {}


def register(*names: str, **declaration) -> Callable[[Builder], Builder]:
    """Declares a layer type whose builder the decorated function is.

    Args:
        names: The Caffe type names it converts.
        declaration: The other :class:`LayerType` fields.

    Raises:
        ValueError: a name already has an entry.
    """
    def add(build: Builder) -> Builder:
        taken = [name for name in names if name in _REGISTRY]
        if taken:
            raise ValueError('layer types {} are registered twice'.format(
                taken))
        entry = LayerType(tuple(names), build, **declaration)
        _REGISTRY.update(dict.fromkeys(names, entry))
        return build
    return add


def find_layer_type(type_name: str) -> Optional[LayerType]:
    """The entry of a Caffe type name, or None for an unsupported one."""
    return _REGISTRY.get(type_name)


def supported_types() -> List[str]:
    """The Caffe layer types the loader converts."""
    return sorted(_REGISTRY)


def layer_type(type_name: str, where: str = '') -> LayerType:
    """The entry of a Caffe type name.

    Args:
        type_name: ``layer.type``.
        where: What the error message names first (the layer).

    Raises:
        UnsupportedLayerError: for a type the library does not convert.
    """
    entry = _REGISTRY.get(type_name)
    if entry is None:
        raise UnsupportedLayerError(
            '{}layer type {!r} is not supported; supported types: {}. Use '
            'stop_at= to load only the layers before it.'.format(
                where + ': ' if where else '', type_name,
                ', '.join(supported_types())))
    return entry


def check_supported(layers: Iterable[caffe_pb2.LayerParameter],
                    source: str) -> None:
    """Checks that the library converts the type of every layer given.

    Called with the layers a load keeps (after ``stop_at``), so a layer
    nobody needs never stops a load.

    Args:
        layers: The layers to build.
        source: The file(s) they come from, for the message.

    Raises:
        UnsupportedLayerError: naming every layer of an unsupported type
            (name and type) at once, with the supported types and the hint
            to use ``stop_at``.
    """
    unsupported = [(layer.name, layer.type) for layer in layers
                   if layer.type not in _REGISTRY]
    if not unsupported:
        return
    listed = ', '.join('layer {!r} (type {!r})'.format(name, type_name)
                       for name, type_name in unsupported)
    raise UnsupportedLayerError(
        '{}: {} of a type that is not supported: {}; supported types: {}. '
        'Use stop_at= to load only the layers before {}.'.format(
            source, '1 layer is' if len(unsupported) == 1 else
            '{} layers are'.format(len(unsupported)), listed,
            ', '.join(supported_types()),
            'it' if len(unsupported) == 1 else 'them'))


def registered_types() -> Iterator[LayerType]:
    """Every entry once, in the order of their first type name."""
    by_id = {id(_REGISTRY[name]): _REGISTRY[name]
             for name in supported_types()}
    return iter(by_id.values())


def learnable_blob_names(layer: caffe_pb2.LayerParameter
                         ) -> Optional[List[str]]:
    """The Chainer names of a layer's learnable blobs, in blob order.

    None for a type without learnable blobs or not supported.
    """
    entry = _REGISTRY.get(layer.type)
    return None if entry is None else entry.learnable_names(layer)


def output_param(layer: caffe_pb2.LayerParameter
                 ) -> Optional[message.Message]:
    """The part of ``layer`` holding ``num_output`` and ``bias_term``.

    None for a type whose output count its input decides, or not supported.
    """
    entry = _REGISTRY.get(layer.type)
    return None if entry is None else entry.output_param(layer)


def build(ctx: base.BuildContext) -> base.Built:
    """Builds one layer.

    Raises:
        UnsupportedLayerError: for a type or option without a faithful
            conversion.
        CaffeModelError: for missing or mis-shaped blobs, invalid options.
    """
    return layer_type(ctx.layer.type, ctx.where).build(ctx)
