"""The fast inference path of a :class:`~chainer_finetune.CaffeNet`.

Where a stretch of layers needs no graph (``chainer.no_backprop_mode()``,
or frozen links fed with inputs that need no gradient) and its BatchNorm
uses the stored statistics (``chainer.using_config('train', False)``,
``use_global_stats`` or a frozen link), :meth:`CaffeNet.forward
<chainer_finetune.CaffeNet.forward>` runs it as one *group* here instead of
layer by layer:

* ``Convolution [-> BatchNorm] [-> Scale] [-> ReLU]``: one convolution
  with the BatchNorm and Scale folded into its weights
  (:mod:`~chainer_finetune.caffe.folding`, cached while the parameters are
  unchanged), computed by :mod:`~chainer_finetune.caffe.fast_conv`, the
  ReLU in place on its fresh output;
* ``BatchNorm [-> Scale] [-> ReLU]`` or ``Scale [-> ReLU]`` without a
  convolution before: one per-channel multiply-add;
* ``Eltwise`` (SUM) ``[-> ReLU]``: the sum, the ReLU in place;
* ``Pooling`` on the CPU (MAX; AVE without padding): the maximum or the
  mean of strided views, without Chainer's im2col copy and argmax.

A layer joins a group only where the blob it reads has no other reader
and is not asked for, and only while it has no layer wrapper other than a
frozen link's (one that answers ``hold(net)``, as
:func:`~chainer_finetune.freeze` installs). Anything else (a layer that
needs a gradient, BatchNorm in training mode, other dtypes) runs Chainer's
own functions exactly as without the fast path. ``net.fast_path = False``
turns it off for one net.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import chainer
from chainer import backend
import chainer.links as L
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe import fast_conv
from chainer_finetune.caffe import folding

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Group:
    """Consecutive layers run as one step (Caffe layer names; None where
    the group has no layer of that role)."""

    kind: str                 # 'conv', 'affine', 'eltwise' or 'pool'
    indices: Tuple[int, ...]  # positions in net.layers
    bottoms: Tuple[str, ...]
    top: str
    conv: Optional[str] = None
    bn: Optional[str] = None
    scale: Optional[str] = None
    relu: Optional[str] = None
    eltwise: Optional[str] = None
    pool: Optional[str] = None

    @property
    def members(self) -> List[str]:
        return [n for n in (self.conv, self.bn, self.scale, self.eltwise,
                            self.pool, self.relu) if n is not None]


class _State:
    """What the fast path keeps per net (never pickled or copied)."""

    def __init__(self, net) -> None:
        self.names = tuple(name for name, _, _ in net.layers)
        self.types = {layer.name: layer.type for layer in net.caffe_layers}
        self.plans: Dict[Any, Dict[int, Group]] = {}
        self.folds = folding.FoldCache()
        self.groups_run = 0


_STATES: 'weakref.WeakKeyDictionary[Any, _State]' = \
    weakref.WeakKeyDictionary()


def _state(net) -> _State:
    state = _STATES.get(net)
    names = tuple(name for name, _, _ in net.layers)
    if state is None or state.names != names:
        state = _STATES[net] = _State(net)
    return state


def fold_cache(net) -> folding.FoldCache:
    """The net's cache of folded convolution weights."""
    return _state(net).folds


def groups_run(net) -> int:
    """How many groups the fast path has run for ``net`` (for tests and
    benchmarks: 0 means every layer ran Chainer's own function)."""
    return _state(net).groups_run


def _only_reader(layers, order: Sequence[int], pos: int, blob: str,
                 outputs: Sequence[str]) -> bool:
    """Whether ``order[pos + 1]`` is the only layer that reads the value of
    ``blob`` written at ``order[pos]``, and the caller does not ask for it.
    """
    for k, index in enumerate(order[pos + 1:]):
        _, bottoms, tops = layers[index]
        if blob in bottoms and k > 0:
            return False
        if blob in tops:
            return True
    return blob not in outputs


def _follows(net, state: _State, order, pos, blob, outputs, kind) -> bool:
    """Whether the layer after ``order[pos]`` is of type ``kind``, reads
    ``blob`` alone and may fuse with it."""
    if pos + 1 >= len(order):
        return False
    name, bottoms, tops = net.layers[order[pos + 1]]
    return (state.types.get(name) == kind and list(bottoms) == [blob] and
            len(tops) == 1 and
            _only_reader(net.layers, order, pos, blob, outputs))


def _extend(net, state, order, pos, blob, outputs, roles) -> Tuple[dict,
                                                                   int]:
    """Adds the following layers of ``roles`` (type, role) that fuse."""
    members: Dict[str, str] = {}
    for kind, role in roles:
        if _follows(net, state, order, pos, blob, outputs, kind):
            pos += 1
            name, _, tops = net.layers[order[pos]]
            members[role] = name
            blob = tops[0]
    return members, pos


_AFTER_CONV = (('BatchNorm', 'bn'), ('Scale', 'scale'), ('ReLU', 'relu'))


def _group_at(net, state: _State, order, pos, outputs
              ) -> Tuple[Optional[Group], int]:
    """The group starting at ``order[pos]`` and the position after it."""
    name, bottoms, tops = net.layers[order[pos]]
    kind = state.types.get(name)
    if len(tops) != 1:
        return None, pos + 1
    start = pos
    if kind == 'Convolution' and len(bottoms) == 1:
        members, pos = _extend(net, state, order, pos, tops[0], outputs,
                               _AFTER_CONV)
        members['conv'] = name
        group_kind = 'conv'
    elif kind in ('BatchNorm', 'Scale') and len(bottoms) == 1:
        members, pos = _extend(net, state, order, pos, tops[0], outputs,
                               _AFTER_CONV[1 if kind == 'BatchNorm' else 2:])
        members['bn' if kind == 'BatchNorm' else 'scale'] = name
        group_kind = 'affine'
    elif kind == 'Eltwise':
        members, pos = _extend(net, state, order, pos, tops[0], outputs,
                               _AFTER_CONV[2:])
        members['eltwise'] = name
        group_kind = 'eltwise'
    elif kind == 'Pooling' and len(bottoms) == 1:
        members = {'pool': name}
        group_kind = 'pool'
    else:
        return None, pos + 1
    indices = tuple(order[start:pos + 1])
    top = net.layers[indices[-1]][2][0]
    return Group(group_kind, indices, tuple(bottoms), top, **members), \
        pos + 1


def plan(net, order: Sequence[int], outputs: Sequence[str]
         ) -> Dict[int, Group]:
    """The groups among the layers ``order`` (positions in ``net.layers``,
    in execution order) by their first layer's position."""
    state = _state(net)
    key = (tuple(order), tuple(outputs))
    groups = state.plans.get(key)
    if groups is not None:
        return groups
    groups = {}
    pos = 0
    while pos < len(order):
        group, pos = _group_at(net, state, order, pos, outputs)
        if group is not None:
            groups[group.indices[0]] = group
    if len(state.plans) > 32:     # many different output lists: start over
        state.plans.clear()
    state.plans[key] = groups
    return groups


def _frozen(net, name: str) -> Optional[bool]:
    """True: the layer's only wrappers hold its link frozen (their
    ``hold(net)``, which also disables update rules as their call would);
    False: no wrapper (or a stale freeze wrapper); None: another wrapper,
    which the fast path cannot run."""
    wrappers = net.layer_wrappers(name)
    holds = [getattr(w, 'hold', None) for w in wrappers.values()]
    if any(h is None for h in holds):
        return None
    return any(h(net) for h in holds)


def _runnable(net, group: Group, xs: Sequence[chainer.Variable]) -> bool:
    """Whether the group may run fast now (see the module's docstring)."""
    frozen = {}
    for name in group.members:
        frozen[name] = _frozen(net, name)
        if frozen[name] is None:
            return False
    if any(x.dtype != numpy.float32 for x in xs):
        return False
    if chainer.config.enable_backprop:
        if any(x.requires_grad for x in xs):
            return False
        linked = [n for n in (group.conv, group.bn, group.scale)
                  if n is not None]
        if not all(frozen[n] for n in linked):
            return False
    if group.bn is not None and chainer.config.train and \
            not frozen[group.bn] and \
            not net.layer_function(group.bn).global_stats:
        return False
    if group.scale is not None:
        function = net.layer_function(group.scale)
        link = net[group.scale]
        if function.axis not in (1, 1 - xs[0].ndim) or link.W.ndim != 1:
            return False
    if group.eltwise is not None and (
            net.layer_function(group.eltwise).operation !=
            caffe_pb2.EltwiseParameter.SUM or
            any(x.shape != xs[0].shape for x in xs)):
        return False
    if group.relu is not None and \
            net.layer_function(group.relu).name not in ('relu', 'leaky_relu'):
        return False
    if group.pool is not None:
        return _pooling_runnable(net, group, xs[0])
    if group.conv is not None:
        link = net[group.conv]
        if type(link) is not L.Convolution2D or link.W.array is None or \
                xs[0].ndim != 4 or \
                link.W.shape[1] * fast_conv.Geometry.of(link)[3] != \
                xs[0].shape[1]:
            return False
    return _channels_match(net, group, xs[0])


def _channels_match(net, group: Group, x: chainer.Variable) -> bool:
    """Whether the BatchNorm and Scale have one value per channel of the
    group's (convolved) input: else Chainer's own functions say why."""
    channels = net[group.conv].W.shape[0] if group.conv is not None \
        else (x.shape[1] if x.ndim > 1 else None)
    if group.bn is not None and net[group.bn].avg_mean.shape != (channels,):
        return False
    return group.scale is None or net[group.scale].W.shape == (channels,)


def _pool_geometry(net, group: Group, x: Any):
    function = net.layer_function(group.pool)
    return (function.is_max,) + tuple(function.geometry(*x.shape[2:]))


def _pooling_runnable(net, group: Group, x: chainer.Variable) -> bool:
    # On CuPy, Chainer's pooling (cuDNN) is the fast one.
    if x.ndim != 4 or not isinstance(x.array, numpy.ndarray):
        return False
    is_max, kernel, stride, pad, out = _pool_geometry(net, group, x)
    return fast_conv.pooling_fits(is_max, x.shape, kernel, stride, pad, out)


def _affine(net, group: Group) -> Optional[folding.Affine]:
    """The BatchNorm and Scale of the group as one map (None: neither)."""
    affine = None
    if group.bn is not None:
        link = net[group.bn]
        affine = folding.batch_norm_affine(link.avg_mean, link.avg_var,
                                           link.eps)
    if group.scale is not None:
        link = net[group.scale]
        beta = link.b.array if getattr(link, 'b', None) is not None and \
            net.layer_function(group.scale).has_bias else None
        if affine is None:
            xp = backend.get_array_module(link.W.array)
            ones = xp.ones(link.W.shape, numpy.float64)
            affine = folding.Affine(ones, xp.zeros_like(ones))
        affine = folding.then(affine, link.W.array, beta)
    return affine


def _folded_sources(net, group: Group) -> List[Any]:
    arrays: List[Any] = []
    conv = net[group.conv]
    arrays += [conv.W.array, None if conv.b is None else conv.b.array]
    if group.bn is not None:
        bn = net[group.bn]
        arrays += [bn.avg_mean, bn.avg_var]
    if group.scale is not None:
        scale = net[group.scale]
        arrays += [scale.W.array, getattr(getattr(scale, 'b', None),
                                          'array', None)]
    return arrays


def _convolution(net, state: _State, group: Group, x: Any) -> Any:
    conv = net[group.conv]
    W = conv.W.array
    b = None if conv.b is None else conv.b.array
    if group.bn is not None or group.scale is not None:
        settings = (
            group.bn is not None and float(net[group.bn].eps),
            group.scale is not None and
            net.layer_function(group.scale).has_bias)
        W, b = state.folds.get(
            group.conv, _folded_sources(net, group), settings,
            lambda: folding.fold_into_convolution(W, b, _affine(net, group)))
    return fast_conv.convolution(x, W, b, fast_conv.Geometry.of(conv))


def _compute(net, state: _State, group: Group, xs: Sequence[Any]) -> Any:
    if group.kind == 'conv':
        y = _convolution(net, state, group, xs[0])
    elif group.kind == 'affine':
        scale, shift = folding.as_float32(_affine(net, group))
        y = fast_conv.affine(xs[0], scale, shift)
    elif group.kind == 'pool':
        y = fast_conv.pooling(xs[0], *_pool_geometry(net, group, xs[0]))
    else:
        function = net.layer_function(group.eltwise)
        coeffs = function.coeffs or [1.0] * len(xs)
        y = xs[0] * numpy.float32(coeffs[0])
        for c, x in zip(coeffs[1:], xs[1:]):
            y += x if c == 1 else x * numpy.float32(c)
    if group.relu is not None:
        fast_conv.relu_(y, net.layer_function(group.relu).kwargs.get(
            'slope', 0.0))
    return y


def run(net, group: Group, variables: Mapping[str, chainer.Variable]
        ) -> Optional[chainer.Variable]:
    """The group's top, computed fast; None where it cannot run fast now
    (the caller then runs its layers one by one)."""
    xs = [variables[b] for b in group.bottoms]
    if not _runnable(net, group, xs):
        return None
    state = _state(net)
    y = _compute(net, state, group, [x.array for x in xs])
    state.groups_run += 1
    return chainer.Variable(y, requires_grad=False)


def handed_out(y: chainer.Variable) -> chainer.Variable:
    """An output blob as the caller gets it: a channel-major result of the
    fast path (a transposed view) as a C-contiguous array, so that what
    the caller computes from it does not depend on the path taken."""
    array = y.array
    if y.creator is None and not y.requires_grad and \
            isinstance(array, numpy.ndarray) and \
            not array.flags.c_contiguous:
        return chainer.Variable(numpy.ascontiguousarray(array),
                                requires_grad=False)
    return y
