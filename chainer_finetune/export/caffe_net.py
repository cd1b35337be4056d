"""A loaded :class:`~chainer_finetune.CaffeNet` as a deploy net: its own
layer descriptions and its current weights, in a
:class:`~chainer_finetune.caffe.writer.NetWriter`.

A CaffeNet keeps the description of every layer it was built from (updated
by :func:`~chainer_finetune.replace_head`), and each layer type's registry
entry computes the Caffe blobs back from the link
(:func:`~chainer_finetune.caffe.weight_files.net_weights`, which also checks
that they rebuild the same link). So the written net is the one that runs
in Chainer, with the weights it has now (fine-tuned, replaced head).

What a deploy net leaves out: data layers (replaced by ``Input`` layers of
batch 1: Caffe and OpenCV reshape to the batch fed), and every layer that
needs an input without a known shape (a training net's ``label``: its loss
and accuracy layers). ``stop_at`` at load time, or ``outputs`` here, keeps
only the layers the wanted blobs need.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set

import chainer
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.caffe.verify import DATA_LAYER_TYPES
from chainer_finetune.caffe.verify import resolve_input_shapes
from chainer_finetune.caffe.weight_files import net_weights
from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.errors import ExportError
from chainer_finetune.errors import OpenCVComparisonError

logger = logging.getLogger(__name__)

#: A shape for the net's (first) input, or shapes by input blob name.
InputShapes = Optional[object]


def input_shapes(net: CaffeNet, input_shape: InputShapes = None
                 ) -> Dict[str, tuple]:
    """The shape of each input the deploy net is fed, batch set to 1.

    Args:
        net: The net.
        input_shape: One shape (for the net's first input) or a mapping by
            input blob name; default: the shapes the net declares.

    Raises:
        ExportError: no input has a known shape, or a name that is not an
            input of the net.
    """
    try:
        shapes = resolve_input_shapes(net, input_shape)
    except OpenCVComparisonError as e:
        raise ExportError('cannot export net {!r}: {}'.format(
            net.name, e)) from None
    # The batch size is not part of a Caffe net: the Input layer declares
    # 1, and Caffe and OpenCV reshape to the batch they are given.
    return {name: (1,) + tuple(shape[1:]) if shape else shape
            for name, shape in shapes.items()}


def _needed(layers: Sequence[caffe_pb2.LayerParameter],
            outputs: Iterable[str]) -> Set[str]:
    """Names of the layers the blobs ``outputs`` depend on."""
    wanted = set(outputs)
    needed = set()
    for layer in reversed(layers):
        made = wanted.intersection(layer.top)
        if made:
            needed.add(layer.name)
            wanted.difference_update(made)
            wanted.update(layer.bottom)
    return needed


def deploy_layers(net: CaffeNet, available: Iterable[str],
                  outputs: Optional[Sequence[str]] = None
                  ) -> List[caffe_pb2.LayerParameter]:
    """The layers of ``net`` a deploy net keeps, in order.

    Args:
        net: The net.
        available: The input blobs that will be fed.
        outputs: The blobs the net must compute; None: all it can.

    Raises:
        ExportError: an output the kept layers do not compute.
    """
    available = set(available)
    kept = []
    for layer in net.caffe_layers:
        if layer.type in DATA_LAYER_TYPES or \
                any(b not in available for b in layer.bottom):
            continue
        kept.append(layer)
        available.update(layer.top)
    if outputs is None:
        return kept
    missing = [o for o in outputs if o not in available]
    if missing:
        raise ExportError(
            'cannot export net {!r}: no layer computes {} from the inputs '
            'fed'.format(net.name, ', '.join(repr(o) for o in missing)))
    needed = _needed(kept, outputs)
    return [layer for layer in kept if layer.name in needed]


def deploy_description(layer: caffe_pb2.LayerParameter
                       ) -> caffe_pb2.LayerParameter:
    """A layer's description as a deploy net states it: no phase rules,
    and BatchNorm with its stored statistics (``use_global_stats``, what
    the net computes under ``train=False``)."""
    out = caffe_pb2.LayerParameter()
    out.CopyFrom(layer)
    del out.blobs[:]
    for field in ('phase', 'include', 'exclude'):
        out.ClearField(field)
    if out.type == 'BatchNorm':
        out.batch_norm_param.use_global_stats = True
    return out


def add_layer(writer: NetWriter, layer: caffe_pb2.LayerParameter,
              blobs: Sequence[numpy.ndarray] = ()) -> None:
    """Appends a whole layer description, with its blobs (not copied:
    the net is written before the model changes), to ``writer``."""
    written = writer.layer(layer.name, layer.type, list(layer.bottom),
                           list(layer.top), blobs=blobs, copy_blobs=False)
    written.CopyFrom(layer)


def caffe_net_writer(net: CaffeNet, input_shape: InputShapes = None,
                     outputs: Optional[Sequence[str]] = None) -> NetWriter:
    """The deploy net of a :class:`~chainer_finetune.CaffeNet`, with its
    weights as they are now.

    Args:
        net: A net made by :func:`~chainer_finetune.load_caffe` (cut with
            ``stop_at``, its head replaced, fine-tuned: any).
        input_shape: One shape, or shapes by input name, for inputs the net
            declares none for (a training net's); the batch is written
            as 1 whatever is given.
        outputs: The blobs the deploy net must compute (default: every blob
            the net computes from the inputs fed).

    Returns:
        NetWriter: The net, ready for ``write_prototxt`` and
        ``write_caffemodel``.

    Raises:
        ExportError: no input with a known shape, an output not computed.
        CaffeModelError: a link whose weights its layer description cannot
            hold (:func:`~chainer_finetune.caffe.weight_files.net_weights`).
    """
    shapes = input_shapes(net, input_shape)
    layers = deploy_layers(net, shapes, outputs)
    if not layers:
        raise ExportError('cannot export net {!r}: no layer runs on the '
                          'inputs {}'.format(net.name, sorted(shapes)))
    used = {b for layer in layers for b in layer.bottom}
    weights = {w.name: w.blobs for w in net_weights(net)}
    writer = NetWriter(net.name or 'net')
    for name, shape in shapes.items():
        if name in used:
            writer.input(name, shape)
    for layer in layers:
        add_layer(writer, deploy_description(layer),
                  weights.get(layer.name, ()))
    logger.debug('net %r: %d of %d layers in the deploy net', net.name,
                 len(layers), len(net.layers))
    return writer


def blob_shapes(net: CaffeNet, shapes: Mapping[str, tuple],
                outputs: Sequence[str]) -> Dict[str, tuple]:
    """The shapes of ``outputs`` for inputs of ``shapes`` (one forward
    pass of zeros in inference mode)."""
    inputs = {name: net.device.send(numpy.zeros(shape, numpy.float32))
              for name, shape in shapes.items()}
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        ys = net(inputs=inputs, outputs=list(outputs))
    return {name: tuple(y.shape) for name, y in zip(outputs, ys)}
