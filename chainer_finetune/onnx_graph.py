"""Rewrites of an ONNX graph as onnx-chainer exports it.

onnx-chainer traces one forward pass at one batch size and writes what it
saw: shape constants that hold that batch size (a ``Reshape`` to
``(N, -1)``, an ``Expand`` to ``(N, C, H, W)`` for every Caffe ``Scale``),
small constants as ``Constant`` nodes, parameters listed as graph inputs.
The rewrites here turn that into a graph whose batch dimension is free
(declared as the symbol ``batch``), whose constants are initializers, and
where a frozen BatchNorm and Scale after a convolution are folded into the
convolution's weights. They need onnx and NumPy only (no Chainer); see
:func:`chainer_finetune.onnx_export.export_onnx` and :doc:`/deploy`.
"""

from __future__ import annotations

import collections
import logging
from typing import Dict, List, Optional, Tuple

import numpy
import onnx
from onnx import helper
from onnx import numpy_helper
from onnx import shape_inference

from chainer_finetune.errors import OnnxExportError

logger = logging.getLogger(__name__)

#: The name of the free batch dimension of inputs and outputs.
BATCH = 'batch'

# Elementwise ops with NumPy-style broadcasting (opset >= 7): an Expand
# that only feeds them can be left to their broadcasting.
_BROADCASTING = frozenset({'Add', 'Sub', 'Mul', 'Div'})


def op_counts(model: onnx.ModelProto) -> Dict[str, int]:
    """Nodes of the main graph by op type, most frequent first."""
    return dict(collections.Counter(
        n.op_type for n in model.graph.node).most_common())


def _arrays(graph: onnx.GraphProto) -> Dict[str, numpy.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _consumers(graph: onnx.GraphProto) -> Dict[str, List[onnx.NodeProto]]:
    found: Dict[str, List[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            found[name].append(node)
    return found


def _replace_nodes(graph: onnx.GraphProto,
                   nodes: List[onnx.NodeProto]) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


def _set_initializer(graph: onnx.GraphProto, name: str,
                     array: numpy.ndarray) -> None:
    for i, tensor in enumerate(graph.initializer):
        if tensor.name == name:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
            return
    graph.initializer.append(numpy_helper.from_array(array, name))


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Moves tensor ``Constant`` nodes into the initializers, and takes the
    initializers out of the graph inputs (IR >= 4 allows it; a runtime then
    knows they cannot be overridden and may fold them)."""
    graph = model.graph
    kept = []
    for node in graph.node:
        if (node.op_type == 'Constant' and len(node.attribute) == 1 and
                node.attribute[0].name == 'value'):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    _replace_nodes(graph, kept)
    names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)


def _onnx_reshape(array: numpy.ndarray, shape: numpy.ndarray) -> numpy.ndarray:
    # ONNX Reshape (opset 5-13): 0 copies the input's dimension, -1 is
    # inferred.
    target = [array.shape[i] if d == 0 else int(d)
              for i, d in enumerate(shape.tolist())]
    return array.reshape(target)


def fold_constant_reshapes(model: onnx.ModelProto) -> None:
    """Replaces ``Reshape`` nodes of an initializer by the reshaped
    initializer (a Scale's ``(C,)`` weights become ``(1, C, 1, 1)``)."""
    graph = model.graph
    arrays = _arrays(graph)
    kept = []
    for node in graph.node:
        if node.op_type == 'Reshape' and all(i in arrays for i in node.input):
            folded = _onnx_reshape(arrays[node.input[0]],
                                   arrays[node.input[1]])
            arrays[node.output[0]] = folded
            _set_initializer(graph, node.output[0], folded)
        else:
            kept.append(node)
    _replace_nodes(graph, kept)


def _static_shapes(model: onnx.ModelProto
                   ) -> Dict[str, Tuple[Optional[int], ...]]:
    """Every value's shape at the traced batch size (None: unknown)."""
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    graph = inferred.graph
    for info in list(graph.input) + list(graph.value_info) + list(
            graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = tuple(d.dim_value if d.HasField('dim_value')
                                  else None for d in dims)
    for name, array in _arrays(graph).items():
        shapes[name] = array.shape
    return shapes


def _broadcast(*shapes: Tuple[Optional[int], ...]) -> Optional[tuple]:
    if any(s is None or None in s for s in shapes):
        return None
    try:
        return tuple(numpy.broadcast_shapes(*shapes))
    except ValueError:
        return None


def drop_redundant_expands(model: onnx.ModelProto) -> int:
    """Removes ``Expand`` nodes whose every consumer is a broadcasting
    elementwise op that would broadcast to the same shape anyway.

    Chainer's ``broadcast_to(v, x.shape)`` before ``x * v`` becomes an
    ``Expand`` to a shape that holds the batch size; ``x * v`` broadcasts
    by itself, at any batch size.

    Returns:
        The number of nodes removed.
    """
    graph = model.graph
    shapes = _static_shapes(model)
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    arrays = _arrays(graph)
    removed = {}
    for node in graph.node:
        if node.op_type != 'Expand' or node.input[1] not in arrays:
            continue
        source, target = node.input[0], tuple(arrays[node.input[1]].tolist())
        users = consumers.get(node.output[0], [])
        if node.output[0] in outputs or not users:
            continue
        if all(u.op_type in _BROADCASTING and len(u.input) == 2 and
               _expand_is_redundant(u, node.output[0], source, target, shapes)
               for u in users):
            removed[node.output[0]] = source
    kept = []
    for node in graph.node:
        if node.op_type == 'Expand' and node.output[0] in removed:
            continue
        for i, name in enumerate(node.input):
            if name in removed:
                node.input[i] = removed[name]
        kept.append(node)
    _replace_nodes(graph, kept)
    return len(removed)


def _expand_is_redundant(user: onnx.NodeProto, expanded: str, source: str,
                         target: tuple, shapes: dict) -> bool:
    other = user.input[1] if user.input[0] == expanded else user.input[0]
    if other == expanded or other not in shapes or source not in shapes:
        return False
    without = _broadcast(shapes[other], shapes[source])
    return without is not None and without == _broadcast(
        shapes[other], shapes[source], target)


def prune_initializers(model: onnx.ModelProto) -> None:
    """Drops initializers that no node and no output uses."""
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    used.update(o.name for o in graph.output)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def free_batch_dimension(model: onnx.ModelProto, batch: int) -> None:
    """Makes the graph run at any batch size.

    A ``Reshape`` target or ``Expand`` shape whose first entry is the
    traced ``batch`` gets 0 (Reshape: copy the input's first dimension) or
    1 (Expand: keep the input's) where its input starts with the batch, and
    otherwise the batch size read from the graph input at run time
    (``Shape``, ``Slice``, ``Concat``). The first dimension of every graph
    input and output becomes the symbol :data:`BATCH`; symbolic shape
    inference then has to carry it to every output.

    Raises:
        OnnxExportError: an output whose first dimension is not the batch.
    """
    graph = model.graph
    shapes = _static_shapes(model)
    arrays = _arrays(graph)
    nodes: List[onnx.NodeProto] = []
    runtime_batch: List[str] = []
    for node in graph.node:
        if node.op_type in ('Reshape', 'Expand') and \
                node.input[1] in arrays and node.input[0] not in arrays:
            target = arrays[node.input[1]].copy()
            if target.ndim == 1 and target.size and \
                    _starts_with_batch(node, target, shapes, batch):
                source = shapes.get(node.input[0])
                name = node.input[1] + '_free_batch'
                if node.op_type == 'Reshape' and source and None not in source:
                    _set_initializer(graph, name, _free_reshape_target(
                        source, target, batch))
                elif source and source[0] == batch:
                    target[0] = 1   # Expand: keep the input's batch
                    _set_initializer(graph, name, target)
                else:
                    if not runtime_batch:
                        runtime_batch.append(_batch_size_nodes(
                            model, nodes))
                    _set_initializer(graph, name + '_tail', target[1:])
                    nodes.append(helper.make_node(
                        'Concat', [runtime_batch[0], name + '_tail'],
                        [name], name=name, axis=0))
                node.input[1] = name
        nodes.append(node)
    _replace_nodes(graph, nodes)
    for value in list(graph.input) + list(graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH
    del graph.value_info[:]
    _check_batch_reaches_outputs(model)


def _resolved(source: tuple, target: numpy.ndarray) -> List[int]:
    # A Reshape target with 0 and -1 replaced by the sizes they stand for.
    dims = [source[i] if d == 0 else int(d)
            for i, d in enumerate(target.tolist())]
    if -1 in dims:
        known = int(numpy.prod([d for d in dims if d != -1]))
        dims[dims.index(-1)] = int(numpy.prod(source)) // max(known, 1)
    return dims


def _starts_with_batch(node: onnx.NodeProto, target: numpy.ndarray,
                       shapes: dict, batch: int) -> bool:
    if node.op_type == 'Expand':
        return int(target[0]) == batch
    source = shapes.get(node.input[0])
    if not source or None in source:
        return int(target[0]) == batch
    first = _resolved(source, target)[0]
    return first > 0 and first % batch == 0


def _free_reshape_target(source: tuple, target: numpy.ndarray,
                         batch: int) -> numpy.ndarray:
    """0 (copy the batch) where the input starts with the batch and so does
    the result; else -1 first and the other sizes as traced (an
    ``(N * 3, 4)`` value reshaped to ``(N, 3, 4)``)."""
    dims = _resolved(source, target)
    if source[0] == batch and dims[0] == batch:
        dims[0] = 0
    else:
        dims[0] = -1
    return numpy.array(dims, dtype=target.dtype)


def _batch_size_nodes(model: onnx.ModelProto,
                      nodes: List[onnx.NodeProto]) -> str:
    """Appends nodes computing the graph input's batch size as a 1-D int64
    tensor; returns its name."""
    graph = model.graph
    opset = next(o.version for o in model.opset_import
                 if o.domain in ('', 'ai.onnx'))
    shape, size = 'free_batch_input_shape', 'free_batch_size'
    nodes.append(helper.make_node('Shape', [graph.input[0].name], [shape],
                                  name=shape))
    if opset >= 10:   # Slice takes starts/ends/axes as inputs since 10
        for part, value in (('starts', 0), ('ends', 1), ('axes', 0)):
            _set_initializer(graph, size + '_' + part,
                             numpy.array([value], numpy.int64))
        nodes.append(helper.make_node(
            'Slice', [shape] + [size + '_' + p for p in
                                ('starts', 'ends', 'axes')], [size],
            name=size))
    else:
        nodes.append(helper.make_node('Slice', [shape], [size], name=size,
                                      starts=[0], ends=[1], axes=[0]))
    return size


def _check_batch_reaches_outputs(model: onnx.ModelProto) -> None:
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    declared = {o.name: o for o in model.graph.output}
    for output in inferred.graph.output:
        dims = output.type.tensor_type.shape.dim
        if not dims or dims[0].HasField('dim_value'):
            raise OnnxExportError(
                'output {!r}: its first dimension is {} whatever the batch '
                'size; export with a fixed batch instead'.format(
                    output.name, dims[0].dim_value if dims else 'missing'))
        # Declare the inferred shape on the output, its first dimension
        # the batch symbol.
        declared[output.name].type.CopyFrom(output.type)
        first = declared[output.name].type.tensor_type.shape.dim[0]
        first.Clear()
        first.dim_param = BATCH


def fold_batch_norm(model: onnx.ModelProto) -> int:
    """Folds BatchNormalization, Mul and Add by per-channel constants that
    directly follow a ``Conv`` into its weights and bias.

    Caffe's BatchNorm (statistics) and Scale (learned scale and bias) are
    an affine map per channel in inference mode: ``y = a * conv(x) + c``
    equals a convolution with weights ``a * W`` and bias ``a * b + c``.
    Computed in float64 from the stored float32 values, then cast back.
    Only nodes whose output feeds nothing but the next node of the chain
    are folded.

    Returns:
        The number of nodes folded away.
    """
    graph = model.graph
    arrays = _arrays(graph)
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    dropped = set()
    for node in graph.node:
        if node.op_type != 'Conv' or not all(i in arrays for i in
                                             node.input[1:]):
            continue
        chain = _affine_chain(node, arrays, consumers, outputs)
        if not chain:
            continue
        _fold_into_conv(graph, node, chain, arrays)
        dropped.update(id(n) for n in chain)
    _replace_nodes(graph, [n for n in graph.node if id(n) not in dropped])
    return len(dropped)


def _channel_vector(array: numpy.ndarray, channels: int
                    ) -> Optional[numpy.ndarray]:
    # A constant that broadcasts along axis 1 of an (N, C, H, W) value only.
    if array.ndim > 4:
        return None
    if _broadcast(array.shape, (1, channels, 1, 1)) != (1, channels, 1, 1):
        return None
    return numpy.broadcast_to(array.astype(numpy.float64),
                              (1, channels, 1, 1)).reshape(channels)


def _affine_chain(conv: onnx.NodeProto, arrays: dict, consumers: dict,
                  outputs: set) -> List[onnx.NodeProto]:
    channels = arrays[conv.input[1]].shape[0]
    chain = []
    current = conv
    while current.output[0] not in outputs:
        users = consumers.get(current.output[0], [])
        if len(users) != 1:
            break
        user = users[0]
        if user.op_type == 'BatchNormalization':
            if len(user.output) != 1 or not all(
                    i in arrays for i in user.input[1:]):
                break
        elif user.op_type in ('Mul', 'Add') and len(user.input) == 2:
            other = [i for i in user.input if i != current.output[0]]
            if len(other) != 1 or other[0] not in arrays or \
                    _channel_vector(arrays[other[0]], channels) is None:
                break
        else:
            break
        chain.append(user)
        current = user
    return chain


def _fold_into_conv(graph: onnx.GraphProto, conv: onnx.NodeProto,
                    chain: List[onnx.NodeProto], arrays: dict) -> None:
    weights = arrays[conv.input[1]]
    channels = weights.shape[0]
    scale = numpy.ones(channels)
    shift = numpy.zeros(channels)
    for node in chain:
        if node.op_type == 'BatchNormalization':
            gamma, beta, mean, var = (arrays[i].astype(numpy.float64)
                                      for i in node.input[1:5])
            eps = next((a.f for a in node.attribute if a.name == 'epsilon'),
                       1e-5)
            factor = gamma / numpy.sqrt(var + numpy.float64(
                numpy.float32(eps)))
            scale, shift = scale * factor, (shift - mean) * factor + beta
        else:
            other = [i for i in node.input if i in arrays and
                     _channel_vector(arrays[i], channels) is not None][-1]
            value = _channel_vector(arrays[other], channels)
            if node.op_type == 'Mul':
                scale, shift = scale * value, shift * value
            else:
                shift = shift + value
    bias = (arrays[conv.input[2]].astype(numpy.float64)
            if len(conv.input) > 2 else numpy.zeros(channels))
    new_w = weights.astype(numpy.float64) * scale.reshape(
        (channels,) + (1,) * (weights.ndim - 1))
    data, base = conv.input[0], conv.output[0]
    _set_initializer(graph, base + '_folded_W', new_w.astype(weights.dtype))
    _set_initializer(graph, base + '_folded_b',
                     (bias * scale + shift).astype(weights.dtype))
    del conv.input[:]
    conv.input.extend([data, base + '_folded_W', base + '_folded_b'])
    conv.output[0] = chain[-1].output[0]
