"""A Chainer model as Caffe layers, from the graph of one forward pass.

:func:`trace_writer` runs the model once in inference mode on a zero input
and walks the computational graph from the outputs back. Each function
node becomes Caffe layers by a handler of its class (:data:`HANDLERS`);
what has no Caffe equivalent is an :class:`~chainer_finetune.errors.
ExportError` naming the function, its index in the graph and the named
layers around it. Where Chainer's own exporter (``chainer.exporters.caffe``)
goes wrong, this one does not:

* kernel, stride and pad are written ``(h, w)`` as ``kernel_h``,
  ``kernel_w`` (a square one as ``kernel_size``);
* pooling gets Caffe's output size equal to Chainer's: Caffe rounds up; a
  Chainer pooling that rounds down (``cover_all=False``, average pooling)
  where the two differ slices the input first (no padding) or asks for
  ``round_mode: FLOOR`` (padding; BVLC Caffe reads it, OpenCV does not:
  warned), and a size Caffe cannot give is an error;
* layers are named after their links (``conv1``, ``fc8``; a nested link
  ``block1/conv``), parameter-free layers after the layer before them and
  their kind (``conv1/relu``, ``conv1/pool``);
* weights are written as arrays, never value by value;
* the batch is free: the ``Input`` layer declares batch 1 and no layer
  holds the traced batch (a reshape must keep axis 0).
"""

from __future__ import annotations

import logging
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

import chainer
import numpy

from chainer_finetune.caffe.layers import caffe_pooled_size
from chainer_finetune.caffe.layers import float32_array
from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.errors import ExportError

logger = logging.getLogger(__name__)

#: The input blob of a traced net.
INPUT = 'data'


class _Param:
    """A parameter of the model: the link owning it and its Caffe name."""

    def __init__(self, name: str, link: chainer.Link, attr: str) -> None:
        self.name = name
        self.link = link
        self.attr = attr


def _parameters(model: chainer.Link) -> Dict[int, _Param]:
    """id(parameter's VariableNode) -> where it lives."""
    found = {}
    for path, link in model.namedlinks():
        name = path.strip('/') or type(model).__name__.lower()
        for attr, param in link.namedparams():
            if attr.count('/') == 1:   # the link's own, not a child's
                found[id(param.node)] = _Param(name, link, attr[1:])
    return found


def _topological(outputs: Sequence[chainer.Variable]
                 ) -> List[chainer.FunctionNode]:
    """The function nodes the outputs depend on, each after its inputs'."""
    order, seen = [], set()
    stack = [(v.node.creator_node, False) for v in reversed(outputs)
             if v.node.creator_node is not None]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for x in reversed(node.inputs):
            if x.creator_node is not None and id(x.creator_node) not in seen:
                stack.append((x.creator_node, False))
    return order


class TraceContext:
    """What the handlers write through: blob names of the graph's
    variables, parameters by variable, unique layer names.

    Attributes:
        writer: The net being written.
        node: The function node being converted.
    """

    def __init__(self, writer: NetWriter, params: Dict[int, _Param],
                 nodes: List[chainer.FunctionNode]) -> None:
        self.writer = writer
        self.params = params
        self.nodes = nodes
        self.index = 0
        self.node: Optional[chainer.FunctionNode] = None
        self.blobs: Dict[int, str] = {}      # id(VariableNode) -> blob
        self.owner: Dict[str, str] = {}      # blob -> naming layer
        self.names: set = set()
        self.consumers: Dict[int, List[chainer.FunctionNode]] = {}
        for node in nodes:
            for x in node.inputs:
                self.consumers.setdefault(id(x), []).append(node)

    # -- where we are, for messages --------------------------------------

    def _named_after(self) -> Optional[str]:
        """The first parameter layer reached from the current node's
        outputs."""
        frontier = [o() for o in self.node.outputs]
        seen = set()
        while frontier:
            v = frontier.pop(0)
            if v is None or id(v) in seen:
                continue
            seen.add(id(v))
            for f in self.consumers.get(id(v), ()):
                named = [self.params[id(x)].name for x in f.inputs
                         if id(x) in self.params]
                if named:
                    return named[0]
                frontier.extend(o() for o in f.outputs)
        return None

    def error(self, what: str) -> ExportError:
        """An error naming the current function and its place."""
        place = []
        before = [self.blobs.get(id(x)) for x in self.node.inputs]
        before = [self.owner.get(b, b) for b in before if b]
        if before:
            place.append('after {}'.format(before[0]))
        after = self._named_after()
        if after:
            place.append('input of {}'.format(after))
        return ExportError('cannot export {} at node {} of {}{} to Caffe: '
                           '{}'.format(type(self.node).__name__,
                                       self.index + 1, len(self.nodes),
                                       ' ({})'.format(', '.join(place))
                                       if place else '', what))

    # -- blobs and parameters --------------------------------------------

    def bottom(self, i: int) -> str:
        """The blob of the current node's input ``i``."""
        x = self.node.inputs[i]
        if id(x) not in self.blobs:
            raise self.error('its input {} is neither the model\'s input, '
                             'a parameter nor computed from them (a '
                             'constant array)'.format(i))
        return self.blobs[id(x)]

    def param(self, i: int) -> Optional[_Param]:
        """The parameter fed as input ``i``, or None (no such input)."""
        if i >= len(self.node.inputs):
            return None
        param = self.params.get(id(self.node.inputs[i]))
        if param is None:
            raise self.error('its input {} is not a parameter of a '
                             'link'.format(i))
        return param

    def in_shape(self, i: int = 0) -> Tuple[int, ...]:
        return tuple(self.node.inputs[i].shape)

    def out_shape(self) -> Tuple[int, ...]:
        return tuple(self.node.outputs[0]().shape)

    def alias(self, blob: str) -> None:
        """The current node's output is ``blob`` itself (no layer)."""
        self.blobs[id(self.node.outputs[0]())] = blob

    def unique(self, name: str) -> str:
        unique, i = name, 1
        while unique in self.names:
            i += 1
            unique = '{}_{}'.format(name, i)
        self.names.add(unique)
        return unique

    def add(self, kind: str, type: str, bottoms: Sequence[str],
            params: Optional[Dict[str, Any]] = None,
            blobs: Sequence[numpy.ndarray] = (),
            name: Optional[str] = None, tops: int = 1) -> List[str]:
        """Writes one layer; its (first) top becomes the node's output.

        Args:
            kind: For an unnamed layer: its name after the layer before it
                (``conv1/relu``).
            name: The layer's name (a link's); else from ``kind``.
            tops: How many tops (the first is the node's output).

        Returns:
            The top blob names.
        """
        base = self.owner.get(bottoms[0], bottoms[0]) if bottoms else ''
        owner = None if name is None else self.unique(name)
        name = owner or self.unique('{}/{}'.format(base, kind))
        top_names = [name] + ['{}/{}'.format(name, i)
                              for i in range(1, tops)]
        self.writer.layer(name, type, list(bottoms), top_names,
                          params=params, blobs=blobs)
        # Unnamed layers take their names from the named one before them.
        self.owner[name] = owner or base
        self.blobs[id(self.node.outputs[0]())] = name
        return top_names


Handler = Callable[[TraceContext], None]


def _pairs(**values: Tuple[int, int]) -> Dict[str, Any]:
    """Caffe's square form (``kernel_size``) or ``_h``/``_w`` fields."""
    out = {}
    for field, (h, w) in values.items():
        if field == 'pad' and h == w == 0:
            continue   # Caffe's default
        if h == w:
            out[field if field != 'kernel' else 'kernel_size'] = h
        else:
            out[field + '_h'], out[field + '_w'] = h, w
    return out


def _convolution(ctx: TraceContext) -> None:
    n = ctx.node
    W, b = ctx.param(1), ctx.param(2)
    weights = float32_array(W.link.W if W.attr == 'W' else
                            getattr(W.link, W.attr))
    kh, kw = weights.shape[2:]
    if n.cover_all:
        h, w = ctx.in_shape()[2:]
        floor = tuple((s + 2 * p - ((k - 1) * d + 1)) // st + 1
                      for s, p, k, d, st in zip(
                          (h, w), (n.ph, n.pw), (kh, kw), (n.dy, n.dx),
                          (n.sy, n.sx)))
        if floor != ctx.out_shape()[2:]:
            raise ctx.error('cover_all=True gives {}; Caffe\'s convolution '
                            'gives {}'.format(ctx.out_shape()[2:], floor))
    p = {'num_output': int(weights.shape[0]), 'bias_term': b is not None}
    p.update(_pairs(kernel=(kh, kw), stride=(n.sy, n.sx), pad=(n.ph, n.pw)))
    if (n.dy, n.dx) != (1, 1):
        p['dilation'] = [n.dy] if n.dy == n.dx else [n.dy, n.dx]
    if n.groups != 1:
        p['group'] = int(n.groups)
    blobs = [weights] + ([float32_array(getattr(b.link, b.attr))]
                         if b is not None else [])
    ctx.add('conv', 'Convolution', [ctx.bottom(0)],
            {'convolution_param': p}, blobs, name=W.name)


def _linear(ctx: TraceContext) -> None:
    W, b = ctx.param(1), ctx.param(2)
    weights = float32_array(getattr(W.link, W.attr))
    blobs = [weights] + ([float32_array(getattr(b.link, b.attr))]
                         if b is not None else [])
    ctx.add('fc', 'InnerProduct', [ctx.bottom(0)],
            {'inner_product_param': {'num_output': int(weights.shape[0]),
                                     'bias_term': b is not None}},
            blobs, name=W.name)


def _pool_geometry(n) -> Tuple[Tuple[int, int], ...]:
    """(kernel, stride, pad) of MaxPooling2D/ND or AveragePooling2D."""
    if hasattr(n, 'kh'):
        return (n.kh, n.kw), (n.sy, n.sx), (n.ph, n.pw)
    return tuple(n.ksize), tuple(n.stride), tuple(n.pad)


def _pooling(ctx: TraceContext, method: str) -> None:
    n = ctx.node
    if getattr(n, 'ndim', 2) != 2:
        raise ctx.error('{}-D pooling; Caffe pools 2-D'.format(n.ndim))
    kernel, stride, pad = _pool_geometry(n)
    size, target = ctx.in_shape()[2:], ctx.out_shape()[2:]
    padded = any(pad)

    def caffe(sizes, ceil=True):
        return tuple(caffe_pooled_size(s, k, st, p, ceil, padded) for
                     s, k, st, p in zip(sizes, kernel, stride, pad))

    p = {'pool': method}
    p.update(_pairs(kernel=kernel, stride=stride, pad=pad))
    bottom = ctx.bottom(0)
    if caffe(size) != target:
        if caffe(size, ceil=False) != target:
            raise ctx.error(
                'Chainer\'s output is {}, Caffe gives {} (rounding up) or '
                '{} (down) for input {}, kernel {}, stride {}, pad '
                '{}'.format(target, caffe(size), caffe(size, False), size,
                            kernel, stride, pad))
        if padded:
            p['round_mode'] = 'FLOOR'
            logger.warning(
                '%s: written with round_mode FLOOR (Chainer rounds the '
                'output size down here); BVLC Caffe reads it, OpenCV\'s '
                'importer does not', ctx.node.label)
        else:
            bottom = _slice_to_floor(ctx, bottom, size, kernel, stride)
    ctx.add('pool', 'Pooling', [bottom], {'pooling_param': p})


def _slice_to_floor(ctx: TraceContext, bottom: str, size, kernel,
                    stride) -> str:
    """Drops the rows/columns no window of a rounded-down pooling reads,
    so that Caffe's rounding up gives the same windows (no padding)."""
    for axis, (s, k, st) in enumerate(zip(size, kernel, stride), start=2):
        keep = s - (s - k) % st
        if keep == s:
            continue
        tops = ctx.add('crop', 'Slice', [bottom],
                       {'slice_param': {'axis': axis, 'slice_point': keep}},
                       tops=2)
        # The dropped part goes nowhere: Silence keeps it from being an
        # output of the net.
        ctx.writer.layer(ctx.unique(tops[0] + '/drop'), 'Silence', tops[1],
                         [])
        bottom = tops[0]
    return bottom


def _lrn(ctx: TraceContext) -> None:
    n = ctx.node
    # Chainer sums over n // 2 channels each side (2 * (n // 2) + 1 in
    # all) and does not divide alpha by the window; Caffe does.
    size = 2 * (int(n.n) // 2) + 1
    ctx.add('lrn', 'LRN', [ctx.bottom(0)],
            {'lrn_param': {'local_size': size,
                           'alpha': float(n.alpha) * size,
                           'beta': float(n.beta), 'k': float(n.k)}})


def _batch_norm(ctx: TraceContext) -> None:
    n = ctx.node
    if tuple(n.key_axis) != (1,):
        raise ctx.error('normalizes per axes {}; Caffe\'s BatchNorm '
                        'per axis 1'.format(tuple(n.key_axis)))
    owner = next((ctx.params[id(x)] for x in n.inputs[1:3]
                  if id(x) in ctx.params), None)
    if owner is None:
        raise ctx.error('neither gamma nor beta is a parameter of a '
                        'BatchNormalization link')
    link = owner.link
    mean = float32_array(link.avg_mean)

    def vector(attr, default):
        value = getattr(link, attr, None)
        return numpy.full(mean.shape, default, numpy.float32) \
            if value is None else float32_array(value)
    top, = ctx.add('bn', 'BatchNorm', [ctx.bottom(0)],
                   {'batch_norm_param': {'use_global_stats': True,
                                         'eps': float(n.eps)}},
                   [mean, float32_array(link.avg_var),
                    numpy.ones(1, numpy.float32)], name=owner.name)
    ctx.add('scale', 'Scale', [top], {'scale_param': {'bias_term': True}},
            [vector('gamma', 1.0), vector('beta', 0.0)])


def _reshape(ctx: TraceContext) -> None:
    shape_in, shape_out = ctx.in_shape(), ctx.out_shape()
    consumers = ctx.consumers.get(id(ctx.node.outputs[0]()), [])
    flatten = len(shape_out) == 2 and len(shape_in) > 2 and \
        shape_out[0] == shape_in[0]
    if flatten and consumers and all(
            type(f).__name__ == 'LinearFunction' for f in consumers):
        # F.linear's own flattening: InnerProduct flattens from axis 1.
        ctx.alias(ctx.bottom(0))
        return
    if not shape_in or not shape_out or shape_out[0] != shape_in[0]:
        raise ctx.error('reshapes {} to {}: the batch axis must stay '
                        'axis 0 (a Caffe net runs at any batch)'.format(
                            shape_in, shape_out))
    if flatten:
        ctx.add('flatten', 'Flatten', [ctx.bottom(0)])
        return
    ctx.add('reshape', 'Reshape', [ctx.bottom(0)],
            {'reshape_param': {'shape': {'dim': [0] + list(shape_out[1:])}}})


def _mean(ctx: TraceContext) -> None:
    n = ctx.node
    ndim = len(ctx.in_shape())
    axes = tuple(sorted(a % ndim for a in n.axis)) if n.axis is not None \
        else None
    if ndim != 4 or axes != (2, 3):
        raise ctx.error('a mean over axes {} of a {}-D blob; Caffe has '
                        'global pooling over H and W of a 4-D one'.format(
                            axes, ndim))
    top, = ctx.add('mean', 'Pooling', [ctx.bottom(0)],
                   {'pooling_param': {'pool': 'AVE', 'global_pooling': True}})
    if not n.keepdims:
        ctx.add('flatten', 'Flatten', [top])


def _eltwise(operation: str, coeff: Sequence[float] = ()) -> Handler:
    def handle(ctx: TraceContext) -> None:
        shapes = {ctx.in_shape(i) for i in range(len(ctx.node.inputs))}
        if len(shapes) != 1:
            raise ctx.error('inputs of shapes {}; Caffe\'s Eltwise needs '
                            'equal ones'.format(sorted(shapes)))
        p = {'operation': operation}
        if coeff:
            p['coeff'] = list(coeff)
        ctx.add(operation.lower(), 'Eltwise',
                [ctx.bottom(i) for i in range(len(ctx.node.inputs))],
                {'eltwise_param': p})
    return handle


def _power(field: str) -> Handler:
    def handle(ctx: TraceContext) -> None:
        value = numpy.asarray(chainer.backend.CpuDevice().send(
            ctx.node.value))
        if value.size != 1:
            raise ctx.error('an array constant; Caffe\'s Power layer takes '
                            'one number')
        ctx.add(field, 'Power', [ctx.bottom(0)],
                {'power_param': {field: float(value.reshape(()))}})
    return handle


def _simple(kind: str, type: str,
            params: Callable[[Any], Optional[Dict[str, Any]]] = None
            ) -> Handler:
    def handle(ctx: TraceContext) -> None:
        ctx.add(kind, type, [ctx.bottom(0)],
                None if params is None else params(ctx.node))
    return handle


def _concat(ctx: TraceContext) -> None:
    if ctx.node.axis % len(ctx.in_shape()) == 0:
        raise ctx.error('concatenates along the batch axis')
    ctx.add('concat', 'Concat',
            [ctx.bottom(i) for i in range(len(ctx.node.inputs))],
            {'concat_param': {'axis': int(ctx.node.axis)}})


#: Chainer function node class name -> handler.
HANDLERS: Dict[str, Handler] = {
    'Convolution2DFunction': _convolution,
    'LinearFunction': _linear,
    'MaxPooling2D': lambda ctx: _pooling(ctx, 'MAX'),
    'MaxPoolingND': lambda ctx: _pooling(ctx, 'MAX'),
    'AveragePooling2D': lambda ctx: _pooling(ctx, 'AVE'),
    'LocalResponseNormalization': _lrn,
    'FixedBatchNormalization': _batch_norm,
    'Reshape': _reshape,
    'Mean': _mean,
    'Concat': _concat,
    'Add': _eltwise('SUM'),
    'Sub': _eltwise('SUM', (1.0, -1.0)),
    'Mul': _eltwise('PROD'),
    'AddConstant': _power('shift'),
    'MulConstant': _power('scale'),
    'ReLU': _simple('relu', 'ReLU'),
    'LeakyReLU': _simple('relu', 'ReLU', lambda n: {
        'relu_param': {'negative_slope': float(n.slope)}}),
    'Sigmoid': _simple('sigmoid', 'Sigmoid'),
    'Tanh': _simple('tanh', 'TanH'),
    'ELU': _simple('elu', 'ELU', lambda n: {
        'elu_param': {'alpha': float(n.alpha)}}),
    'Softmax': _simple('softmax', 'Softmax', lambda n: {
        'softmax_param': {'axis': int(n.axis)}}),
}


def _outputs(y: Any) -> List[chainer.Variable]:
    ys = list(y) if isinstance(y, (tuple, list)) else [y]
    if not ys or not all(isinstance(v, chainer.Variable) for v in ys):
        raise ExportError('the model returned {}; tracing needs a Variable '
                          'or a tuple of them'.format(type(y).__name__))
    return ys


def _run(model: chainer.Link, input_shape: Sequence[int]
         ) -> Tuple[chainer.Variable, List[chainer.Variable]]:
    x = chainer.Variable(model.device.send(
        numpy.zeros(tuple(input_shape), numpy.float32)))
    with chainer.using_config('train', False), \
            chainer.force_backprop_mode():
        return x, _outputs(model(x))


def trace_writer(model: chainer.Link, input_shape: Sequence[int],
                 name: Optional[str] = None) -> NetWriter:
    """A Chain as a Caffe net, by tracing one forward pass.

    Args:
        model: The model, called as ``model(x)`` on one input; it returns a
            Variable or a tuple of them (the net's outputs).
        input_shape: The input's shape ``(N, C, H, W)`` (the net is traced
            with it; the written ``Input`` layer declares batch 1).
        name: The net's name (default: the model's class name).

    Returns:
        NetWriter: The net, input blob ``data``.

    Raises:
        ExportError: a function without a Caffe equivalent (named, with its
            place in the graph), a reshape of the batch axis, an output
            that is the input itself.
    """
    params = _parameters(model)
    x, ys = _run(model, input_shape)
    nodes = _topological(ys)
    writer = NetWriter(name or type(model).__name__)
    writer.input(INPUT, (1,) + tuple(input_shape[1:]))
    ctx = TraceContext(writer, params, nodes)
    ctx.blobs[id(x.node)] = INPUT
    for index, node in enumerate(nodes):
        ctx.index, ctx.node = index, node
        handler = HANDLERS.get(type(node).__name__)
        if handler is None:
            raise ctx.error('Caffe has no layer for it')
        handler(ctx)
    missing = [i for i, y in enumerate(ys) if id(y.node) not in ctx.blobs or
               ctx.blobs[id(y.node)] == INPUT]
    if missing:
        raise ExportError('output {} of the model is not computed from its '
                          'input'.format(missing[0]))
    logger.debug('traced %s: %d functions, %d layers', writer.name,
                 len(nodes), len(writer.layers))
    return writer


def output_blobs(writer: NetWriter) -> Iterator[str]:
    """The blobs of a written net that no layer consumes (its outputs)."""
    consumed = {b for layer in writer.layers for b in layer.bottom}
    for layer in writer.layers:
        for top in layer.top:
            if top not in consumed and layer.type != 'Silence':
                yield top
