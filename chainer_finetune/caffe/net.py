"""The converted network: a ``CaffeFunction`` built from a NetDescription."""

from __future__ import annotations

import copy as copy_module
import functools
import keyword
import logging
import re
from typing import (Callable, Dict, Iterable, List, Mapping, Optional,
                    Sequence, Set, Tuple, Union)

import chainer
from chainer.links.caffe import CaffeFunction

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe import fast_path as fast_path_module
from chainer_finetune.caffe import layers as layer_builders
from chainer_finetune.caffe.upgrade import NetDescription
from chainer_finetune.errors import CaffeModelError

logger = logging.getLogger(__name__)

_ILLEGAL = re.compile(r'[^0-9A-Za-z_]')


def link_name_for(caffe_name: str) -> str:
    """The attribute-safe name a Caffe layer's link gets (before collisions):
    ``conv1/7x7_s2`` -> ``conv1_7x7_s2`` (see :doc:`/loading`)."""
    name = _ILLEGAL.sub('_', caffe_name) or '_'
    if name[0].isdigit():
        name = '_' + name
    if keyword.iskeyword(name):
        name += '_'
    return name


#: A layer wrapper, called as ``wrapper(function, net, *bottoms)`` in place
#: of ``function(net, *bottoms)``; see :meth:`CaffeNet.wrap_layer_function`.
LayerWrapper = Callable[..., Tuple[chainer.Variable, ...]]


class _WrappedLayer:
    """A layer function run through named wrappers, innermost first."""

    def __init__(self, function: layer_builders.LayerFunction,
                 wrappers: Tuple[Tuple[str, LayerWrapper], ...]) -> None:
        self.function = function
        self.wrappers = wrappers

    def __call__(self, net: 'CaffeNet', *xs: chainer.Variable
                 ) -> Tuple[chainer.Variable, ...]:
        call = self.function
        for _, wrapper in self.wrappers:
            call = functools.partial(wrapper, call)
        return call(net, *xs)


def _without_blobs(layer: caffe_pb2.LayerParameter) -> bytes:
    """``layer`` serialized without its blobs."""
    stored = caffe_pb2.LayerParameter()
    stored.CopyFrom(layer)
    del stored.blobs[:]
    return stored.SerializeToString()


def _needed_layers(layers: Sequence[Tuple[str, List[str], List[str]]],
                   targets: Iterable[str], end: int) -> Set[int]:
    """Indices of ``layers[:end]`` that compute the blobs ``targets``."""
    needed_blobs = set(targets)
    needed = set()
    for index in range(end - 1, -1, -1):
        _, bottoms, tops = layers[index]
        produced = needed_blobs.intersection(tops)
        if produced:
            needed.add(index)
            needed_blobs.difference_update(produced)
            needed_blobs.update(bottoms)
    return needed


class CaffeNet(CaffeFunction):
    """A Caffe network converted to Chainer; made by :func:`load_caffe`.

    Called as a :class:`chainer.links.caffe.CaffeFunction`:
    ``y, = net(inputs={'data': x}, outputs=['prob'])`` (see
    :doc:`/loading`). Layers with parameters are child links, named by
    :func:`link_name_for` (clashes get ``_2``, ``_3``...):
    ``net.link_names`` maps Caffe names to link names and
    ``net.caffe_names`` the other way; ``net[caffe_name]`` finds a link by
    either name.

    Attributes:
        layers: ``(name, bottoms, tops)`` per layer in execution order, as
            in CaffeFunction (Caffe names).
        forwards: Layer name to a callable of the bottoms, as in
            CaffeFunction (the layer functions as they were when the net
            was built or copied).
        inputs: Blob names the caller must supply, with the shape the net
            declares for each (``None`` where a data layer declares none).
        caffe_layers: The V2 description of each layer (without blobs).
    """

    #: Whether :meth:`forward` runs the layers that need no graph through
    #: the fast inference path (:mod:`chainer_finetune.caffe.fast_path`):
    #: BatchNorm and Scale folded into convolutions, 1x1 convolutions as
    #: matrix products, in-place ReLU. Set it to False on a net to run
    #: Chainer's own function for every layer.
    fast_path = True

    def __init__(self, description: NetDescription) -> None:
        # CaffeFunction.__init__ parses a file with Chainer's own schema;
        # this class is built from a NetDescription instead.
        chainer.Chain.__init__(self)
        self.forwards = {}
        self.split_map = {}
        self.layers = []
        self.name = description.name
        self.link_names: Dict[str, str] = {}
        self.caffe_names: Dict[str, str] = {}
        self.inputs: Dict[str, Optional[Tuple[int, ...]]] = {}
        self._functions = {}
        self._caffe_layers_bytes: List[bytes] = []
        # Every unsupported type at once, before building anything.
        layer_builders.check_supported(description.layers,
                                       description.source)
        for layer in description.layers:
            self._add(layer, description)
        self._check_bottoms(description)

    def _check_bottoms(self, description: NetDescription) -> None:
        """Refuses a bottom that no earlier layer produces, as Caffe does
        ("Unknown bottom blob"): a typo, a cycle or a self-loop. A top of a
        layer the phase filter dropped (a training net's TRAIN-only data
        layer) becomes an input without a declared shape instead."""
        produced = set()
        for layer in description.layers:
            for bottom in layer.bottom:
                if bottom in produced:
                    continue
                if bottom not in description.phase_dropped_tops:
                    raise CaffeModelError(
                        '{}: layer {!r} ({}): unknown bottom blob {!r}: no '
                        'earlier layer or input produces it'.format(
                            description.source, layer.name, layer.type,
                            bottom))
                self.inputs.setdefault(bottom, None)
                produced.add(bottom)
            produced.update(layer.top)

    # The layer descriptions are kept serialized: small, and picklable
    # under every protobuf backend.
    @property
    def caffe_layers(self) -> List[caffe_pb2.LayerParameter]:
        return [caffe_pb2.LayerParameter.FromString(b)
                for b in self._caffe_layers_bytes]

    def update_caffe_layer(self, layer: caffe_pb2.LayerParameter) -> None:
        """Replaces the stored description of the layer named ``layer.name``
        (after a change to its link, e.g. by ``replace_head``).

        Raises:
            KeyError: if the net has no layer of that name.
        """
        for i, raw in enumerate(self._caffe_layers_bytes):
            if caffe_pb2.LayerParameter.FromString(raw).name == layer.name:
                self._caffe_layers_bytes[i] = _without_blobs(layer)
                return
        raise KeyError('no layer named {!r}'.format(layer.name))

    def copy(self, mode: str = 'share') -> 'CaffeNet':
        """Copies the net as :meth:`chainer.Link.copy` does.

        The layer functions (which hold settings such as BatchNorm's
        ``global_stats``), the name maps and the layer descriptions are
        copied too, and ``forwards`` is bound to the copy.
        """
        ret = super().copy(mode)
        ret.layers = list(self.layers)
        ret.inputs = dict(self.inputs)
        ret.link_names = dict(self.link_names)
        ret.caffe_names = dict(self.caffe_names)
        ret.split_map = dict(self.split_map)
        ret._caffe_layers_bytes = list(self._caffe_layers_bytes)
        ret._functions = {name: copy_module.deepcopy(function)
                          for name, function in self._functions.items()}
        ret.forwards = {name: functools.partial(function, ret)
                        for name, function in ret._functions.items()}
        return ret

    def layer_function(self, layer: str) -> layer_builders.LayerFunction:
        """The function that computes a layer, as built (without wrappers):
        ``function(net, *bottoms)`` returns a tuple of tops.

        Args:
            layer (str): The Caffe layer name.

        Raises:
            KeyError: if the net has no such layer, or it is an input layer.
        """
        function = self._functions[layer]
        if isinstance(function, _WrappedLayer):
            return function.function
        return function

    def layer_wrappers(self, layer: str) -> Dict[str, LayerWrapper]:
        """The wrappers of a layer by name, innermost first (a new dict).

        Raises:
            KeyError: if the net has no such layer, or it is an input layer.
        """
        function = self._functions[layer]
        if isinstance(function, _WrappedLayer):
            return dict(function.wrappers)
        return {}

    def wrap_layer_function(self, layer: str, name: str,
                            wrapper: LayerWrapper) -> None:
        """Runs a layer through ``wrapper``, outside its other wrappers.

        :meth:`forward` then calls ``wrapper(function, net, *bottoms)``,
        where ``function`` is the layer's function with the earlier
        wrappers (call it to run the layer). :func:`chainer_finetune.freeze`
        wraps the layers of frozen links so that they build no graph.
        :meth:`copy` deep-copies wrappers and pickling the net pickles
        them: make a wrapper picklable (module-level) and let it find what
        it needs through ``net``. :attr:`forwards` runs no wrappers.

        .. admonition:: Example

            >>> def doubled(function, net, *xs):
            ...     return tuple(2 * y for y in function(net, *xs))
            >>> net.wrap_layer_function('fc8', 'double', doubled)
            >>> y, = net(inputs={'data': x}, outputs=['fc8'])  # doubled
            >>> net.unwrap_layer_function('fc8', 'double') is doubled
            True

        Args:
            layer (str): The Caffe layer name.
            name (str): The wrapper's name, to find or remove it by.
            wrapper: A callable ``wrapper(function, net, *bottoms)`` that
                returns the tops as a tuple.

        Raises:
            KeyError: if the net has no such layer, it is an input layer,
                or the layer already has a wrapper of that name.
        """
        wrappers = self.layer_wrappers(layer)
        if name in wrappers:
            raise KeyError('layer {!r} already has a wrapper named '
                           '{!r}'.format(layer, name))
        wrappers[name] = wrapper
        self._set_wrappers(layer, wrappers)

    def unwrap_layer_function(self, layer: str, name: str) -> LayerWrapper:
        """Removes a wrapper that :meth:`wrap_layer_function` added.

        Args:
            layer (str): The Caffe layer name.
            name (str): The wrapper's name.

        Returns:
            The wrapper removed.

        Raises:
            KeyError: if the layer has no wrapper of that name.
        """
        wrappers = self.layer_wrappers(layer)
        if name not in wrappers:
            raise KeyError('layer {!r} has no wrapper named {!r}'.format(
                layer, name))
        wrapper = wrappers.pop(name)
        self._set_wrappers(layer, wrappers)
        return wrapper

    def _set_wrappers(self, layer: str,
                      wrappers: Dict[str, LayerWrapper]) -> None:
        function = self.layer_function(layer)
        functions = dict(self._functions)
        # Without wrappers the bare function is stored, as at build time.
        functions[layer] = _WrappedLayer(function, tuple(wrappers.items())) \
            if wrappers else function
        # A new dict: a shallow copy of the net keeps the old one.
        self._functions = functions

    def _batchnorm_functions(self):
        """(description, forward function) of every BatchNorm layer."""
        for layer in self.caffe_layers:
            if layer.type == 'BatchNorm':
                yield layer, self.layer_function(layer.name)

    def set_global_stats(self, value: Optional[bool]) -> None:
        """Sets how every BatchNorm layer normalizes in training mode.

        Args:
            value: True: always with the stored statistics (Caffe's
                ``use_global_stats: true``); False: with the batch's in
                training (and the stored ones otherwise); None: as the
                model file says.
        """
        for layer, function in self._batchnorm_functions():
            p = layer.batch_norm_param
            function.global_stats = (
                p.HasField('use_global_stats') and p.use_global_stats
                if value is None else bool(value))

    def set_moving_average_fraction(self, value: Optional[float]) -> None:
        """Sets Caffe's ``moving_average_fraction`` of every BatchNorm layer.

        The stored statistics average the batches' with weights decaying by
        this fraction per step (0.999 by default in Caffe: over about the
        last thousand steps). A short run from scratch needs a smaller one
        (0.9), or its statistics remember the first, meaningless steps.

        Args:
            value: The fraction, in [0, 1]; None: as the model file says.
        """
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError('moving_average_fraction must be in [0, 1], got '
                             '{!r}'.format(value))
        for layer, function in self._batchnorm_functions():
            function.moving_average_fraction = (
                layer.batch_norm_param.moving_average_fraction
                if value is None else float(value))

    def _unique_link_name(self, caffe_name: str) -> str:
        base = link_name_for(caffe_name)
        name, i = base, 1
        while (name in self.caffe_names or hasattr(type(self), name) or
               name in self.__dict__):
            i += 1
            name = '{}_{}'.format(base, i)
        return name

    def _add(self, layer: caffe_pb2.LayerParameter,
             description: NetDescription) -> None:
        if any(name == layer.name for name, _, _ in self.layers):
            raise CaffeModelError('{}: two layers are named {!r}'.format(
                description.source, layer.name))
        blobs = description.weights.get(layer.name, [])
        ctx = layer_builders.BuildContext(layer, blobs, description.source)
        built = layer_builders.build(ctx)
        self._caffe_layers_bytes.append(_without_blobs(layer))
        self.layers.append((layer.name, list(layer.bottom), list(layer.top)))
        if built.function is None:   # an input layer
            shapes = [tuple(s.dim) for s in layer.input_param.shape]
            if len(shapes) == 1:   # one shape for every top
                shapes *= len(layer.top)
            for i, top in enumerate(layer.top):
                self.inputs[top] = shapes[i] if i < len(shapes) else None
            return
        function = built.function
        if built.link is not None:
            link_name = self._unique_link_name(layer.name)
            self.add_link(link_name, built.link)
            self.link_names[layer.name] = link_name
            self.caffe_names[link_name] = layer.name
            function.link_name = link_name
        self._functions[layer.name] = function
        self.forwards[layer.name] = functools.partial(function, self)

    def __getitem__(self, name: str) -> chainer.Link:
        """The link of a layer, by Caffe name or link name."""
        link_name = self.link_names.get(name, name)
        if link_name not in self.caffe_names:
            raise KeyError('no layer with parameters named {!r}'.format(name))
        return getattr(self, link_name)

    def forward(self, inputs: Mapping[str, object],
                outputs: Sequence[str], disable: Iterable[str] = (),
                **kwargs) -> Tuple[chainer.Variable, ...]:
        """forward(inputs, outputs, disable=())

        Computes the blobs ``outputs`` from the blobs ``inputs``.

        Only the layers the outputs depend on run (CaffeFunction runs every
        layer it can). Layers whose bottoms are not all available, such as a
        loss head without its ``label``, are skipped; asking for an output
        that then cannot be computed is an error.

        Args:
            inputs (dict): Blob name to :class:`~chainer.Variable` or array.
            outputs (Iterable of str): Blob names to return.
            disable (Iterable of str): Layer names to skip.

        Returns:
            tuple: One :class:`~chainer.Variable` per name in ``outputs``.
        """
        if kwargs:
            raise TypeError('unexpected arguments {}; use '
                            'chainer.using_config for train/test'.format(
                                sorted(kwargs)))
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        disable = set(disable)
        variables = {
            name: value if isinstance(value, chainer.Variable)
            else chainer.Variable(value, requires_grad=False)
            for name, value in inputs.items()}
        needed = _needed_layers(self.layers, outputs, len(self.layers))
        order = [index for index, (name, _, _) in enumerate(self.layers)
                 if index in needed and name not in disable and
                 name in self._functions]
        groups = fast_path_module.plan(self, order, outputs) \
            if self.fast_path else {}
        done: Set[int] = set()
        for index in order:
            name, bottoms, tops = self.layers[index]
            if index in done or any(b not in variables for b in bottoms):
                continue
            group = groups.get(index)
            if group is not None:
                y = fast_path_module.run(self, group, variables)
                if y is not None:
                    variables[group.top] = y
                    done.update(group.indices)
                    continue
            ys = self._functions[name](self, *(variables[b] for b in bottoms))
            for top, y in zip(tops, ys):
                variables[top] = y
        self.variables = variables
        missing = [o for o in outputs if o not in variables]
        if missing:
            tops_of = {name: tops for name, _, tops in self.layers}
            blobs = set(self.inputs).union(*tops_of.values())
            unknown = [o for o in missing if o not in blobs]
            if unknown:
                # Outputs are blobs, as in CaffeFunction; a layer name is a
                # common slip (in-place layers such as ReLU have no blob of
                # their own).
                hints = ['{!r} is a layer; its output blob is {}'.format(
                    o, ', '.join(repr(t) for t in tops_of[o]))
                    for o in unknown if o in tops_of]
                raise CaffeModelError(
                    'the net has no blob named {}{}'.format(
                        ', '.join(repr(o) for o in unknown),
                        ' ({})'.format('; '.join(hints)) if hints else ''))
            raise CaffeModelError(
                'cannot compute {} from the given inputs {}; the net needs '
                '{}'.format(missing, sorted(inputs), sorted(self.inputs)))
        return tuple(fast_path_module.handed_out(variables[o])
                     for o in outputs)


def select_layers(description: NetDescription,
                  stop_at: Union[str, Sequence[str], None]
                  ) -> NetDescription:
    """Keeps only the layers needed to compute ``stop_at``.

    Args:
        description: The full net.
        stop_at: A layer name (keep everything that layer needs, up to and
            including it) or a list of layer or blob names.

    Raises:
        CaffeModelError: if a name is neither a layer nor a blob of the net.
    """
    if stop_at is None:
        return description
    wanted = [stop_at] if isinstance(stop_at, str) else list(stop_at)
    entries = [(layer.name, list(layer.bottom), list(layer.top))
               for layer in description.layers]
    layer_index = {name: i for i, (name, _, _) in enumerate(entries)}
    keep: Set[int] = set()
    for target in wanted:
        if target in layer_index:
            end = layer_index[target] + 1
            blobs = entries[end - 1][2]
        else:
            producers = [i for i, (_, _, tops) in enumerate(entries)
                         if target in tops]
            if not producers:
                raise CaffeModelError(
                    '{}: stop_at {!r} is neither a layer nor a blob of the '
                    'net'.format(description.source, target))
            end = producers[-1] + 1
            blobs = [target]
        keep |= _needed_layers(entries, blobs, end)
    layers = [layer for i, layer in enumerate(description.layers)
              if i in keep]
    dropped = len(description.layers) - len(layers)
    logger.debug('stop_at=%r keeps %d layers, drops %d', stop_at,
                 len(layers), dropped)
    return description._replace(layers=layers)
