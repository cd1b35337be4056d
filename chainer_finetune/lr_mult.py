"""Per-parameter learning-rate and weight-decay multipliers, as in Caffe.

:func:`set_lr_mult` gives parameters Caffe's per-blob ``lr_mult`` and
``decay_mult`` (after ``optimizer.setup``, and again after every
``setup``: a snapshot does not hold them), :func:`lr_mults_from_prototxt`
reads them from a recipe, and :class:`WeightDecayMult` honours
``decay_mult``. Which hyperparameter is scaled (``lr``, Adam's ``alpha``)
and how schedules keep applying: ``docs/training.rst``.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from typing import (Any, Dict, List, Mapping, NamedTuple,
                    Optional, Tuple, Union)

import chainer
from chainer import optimizer as optimizer_module
from chainer.backends import cuda
import numpy

from chainer_finetune.caffe import caffe_pb2
from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.caffe.layers import find_layer_type
from chainer_finetune.caffe.layers import learnable_blob_names
from chainer_finetune.caffe.reader import read_prototxt
from chainer_finetune.caffe.upgrade import to_v2_layers
from chainer_finetune.errors import CaffeModelError
from chainer_finetune.errors import OptimizerNotSetUpError
from chainer_finetune.errors import UnsupportedOptimizerError
from chainer_finetune.errors import LinkNotFoundError
from chainer_finetune.paths import match_links
from chainer_finetune.paths import params_under
from chainer_finetune.paths import path_matches

logger = logging.getLogger(__name__)

PathLike = Union[str, 'os.PathLike[str]']


class ParamMults(NamedTuple):
    """The multipliers of one parameter (Caffe's ``ParamSpec``).

    Attributes:
        lr_mult: Multiplier of the optimizer's learning rate.
        decay_mult: Multiplier of the weight decay rate.
    """

    lr_mult: float = 1.0
    decay_mult: float = 1.0


# What :func:`set_lr_mult` accepts per key: one multiplier for every
# parameter of the matched links, or one per parameter name.
MultValue = Union[float, ParamMults, Mapping[str, Union[float, ParamMults]]]

# Hyperparameters scaled by decay_mult.
_DECAY_NAMES = ('weight_decay_rate',)


class MultipliedHyperparameter(optimizer_module.Hyperparameter):
    """A parameter's hyperparameter: its parent's values, some multiplied.

    Reads of the learning-rate entry (``lr`` or ``alpha``) return the
    parent's *current* value times :attr:`lr_mult`; reads of
    ``weight_decay_rate`` the parent's times :attr:`decay_mult` (0 when
    ``lr_mult`` is 0). Everything else comes from the parent unchanged. As
    with any :class:`~chainer.optimizer.Hyperparameter`, setting an entry
    on this object overrides it (unscaled).

    Args:
        parent (~chainer.optimizer.Hyperparameter): The update rule's
            previous hyperparameter.
        lr_name (str): The entry that ``lr_mult`` scales.
        lr_mult (float): Learning-rate multiplier.
        decay_mult (float): Weight-decay multiplier.
    """

    def __init__(self, parent: optimizer_module.Hyperparameter,
                 lr_name: str, lr_mult: float = 1.0,
                 decay_mult: float = 1.0) -> None:
        super().__init__(parent)
        self._lr_name = lr_name
        self._lr_mult = float(lr_mult)
        self._decay_mult = float(decay_mult)

    @property
    def lr_name(self) -> str:
        """The entry that :attr:`lr_mult` scales (``'lr'`` or ``'alpha'``)."""
        return self._lr_name

    @property
    def lr_mult(self) -> float:
        """Learning-rate multiplier."""
        return self._lr_mult

    @property
    def decay_mult(self) -> float:
        """Weight-decay multiplier (read by :class:`WeightDecayMult`)."""
        return self._decay_mult

    def _scale(self, name: str) -> Optional[float]:
        if name == self._lr_name:
            return self._lr_mult
        if name in _DECAY_NAMES:
            # Caffe: a blob with lr_mult 0 does not change, decay included.
            return self._decay_mult if self._lr_mult else 0.0
        return None

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        # Unpickling and copy.copy look up attributes before __dict__ is
        # filled; they must see a plain AttributeError.
        if '_parent' not in d or '_lr_name' not in d:
            raise AttributeError(name)
        value = getattr(d['_parent'], name)
        scale = self._scale(name)
        return value if scale is None else value * scale

    def get_dict(self) -> Dict[str, Any]:
        d = self._parent.get_dict() if self._parent is not None else {}
        for name in list(d):
            scale = self._scale(name)
            if scale is not None:
                d[name] = d[name] * scale
        d['lr_mult'] = self._lr_mult
        d['decay_mult'] = self._decay_mult
        for name, value in self.__dict__.items():
            if not name.startswith('_'):
                d[name] = value
        return d


class WeightDecayMult(chainer.optimizer_hooks.WeightDecay):
    """Weight decay with Caffe's per-parameter ``decay_mult``.

    Chainer's :class:`~chainer.optimizer_hooks.WeightDecay` adds
    ``rate * param`` to every gradient; this hook adds
    ``rate * decay_mult * param``, reading ``decay_mult`` from the
    parameter's hyperparameter (set by :func:`set_lr_mult`; 1 where none was
    set). A parameter with ``decay_mult`` 0 is left exactly undecayed. As
    in Caffe, the decay joins the gradient before the update, so the
    parameter's learning rate (with its ``lr_mult``) applies to it.

    It is registered under the name ``WeightDecay``, so it cannot be added
    next to Chainer's hook by mistake (that would decay twice).

    Args:
        rate (float): Coefficient for the weight decay (Caffe's
            ``weight_decay``).
    """

    name = 'WeightDecay'
    call_for_each_param = True
    timing = 'pre'

    def __call__(self, rule, param) -> None:
        mult = 1.0 if rule is None else \
            getattr(rule.hyperparam, 'decay_mult', 1.0)
        p, g = param.data, param.grad
        if not mult or p is None or g is None:
            return
        with chainer.using_device(param.device):
            rate = self.rate * mult
            if param._loss_scale is not None:
                rate *= param._loss_scale
            if param.device.xp is cuda.cupy:
                kernel = cuda.elementwise(
                    'T p, T decay', 'T g', 'g += decay * p', 'weight_decay')
                kernel(p, rate, g)
            else:
                g += rate * p


def _check_mult(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError('{} must be a number, got {!r}'.format(what, value))
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError('{} must be finite and >= 0, got {}'.format(
            what, value))
    return value


def _params_of_key(model: chainer.Link, key: str
                   ) -> List[Tuple[str, chainer.Link, str, chainer.Parameter]]:
    """(link path, link, param path, param) for a key: a link pattern, or
    a link pattern plus a parameter name (``fc8/b``)."""
    try:
        links = match_links(model, key)
    except LinkNotFoundError:
        head, sep, tail = key.rstrip('/').rpartition('/')
        if not sep or not head.strip('/'):
            raise
        try:
            links = match_links(model, head)
        except LinkNotFoundError:
            raise LinkNotFoundError(
                '{!r} names no link, nor a parameter of one'.format(key)) \
                from None
        # namedparams() names are '/W', '/conv/b'.
        found = [(path, link, path + name, param)
                 for path, link in links
                 for name, param in link.namedparams()
                 if path_matches(tail, name.lstrip('/'))]
        if not found:
            raise LinkNotFoundError(
                '{!r}: no link {!r} has a parameter {!r}'.format(
                    key, head, tail)) from None
        return found
    return [(path, link, path + name, param) for path, link in links
            for name, param in link.namedparams()]


def _expand(model: chainer.Link, mults: Mapping[str, Any], kind: str
            ) -> Dict[int, Tuple[str, chainer.Parameter, Any]]:
    """Param id -> (path, param, value) for one mapping; later keys win."""
    if not isinstance(mults, Mapping):
        raise TypeError('{} must be a mapping of link patterns to '
                        'multipliers, got {!r}'.format(kind, mults))
    result: Dict[int, Tuple[str, chainer.Parameter, Any]] = {}
    for key, value in mults.items():
        if not isinstance(key, str):
            raise TypeError('{} keys must be link patterns (str), got '
                            '{!r}'.format(kind, key))
        found = _params_of_key(model, key)
        if isinstance(value, Mapping):
            hit = set()
            for name, sub in value.items():
                if not isinstance(name, str):
                    raise TypeError('{}[{!r}]: parameter names must be '
                                    'str, got {!r}'.format(kind, key, name))
                for link_path, _, path, param in found:
                    relative = path[len(link_path):].strip('/')
                    if path_matches(name, relative):
                        result[id(param)] = (path, param, sub)
                        hit.add(name)
            missing = [name for name in value if name not in hit]
            if missing:
                raise LinkNotFoundError(
                    '{}[{!r}]: the links {!r} names have no parameter {}; '
                    'they have {}'.format(
                        kind, key, key, ', '.join(map(repr, missing)),
                        ', '.join(sorted({p[len(lp):].strip('/')
                                          for lp, _, p, _ in found}))))
        else:
            for _, _, path, param in found:
                result[id(param)] = (path, param, value)
    return result


def _lr_name(rule: optimizer_module.UpdateRule, path: str) -> str:
    hyperparam = rule.hyperparam
    if isinstance(hyperparam, MultipliedHyperparameter):
        return hyperparam.lr_name
    # Adam's learning rate is `alpha`; RMSprop's `alpha` is the decay of
    # its moving average, so a name alone does not say which is which.
    if isinstance(rule, chainer.optimizers.adam.AdamRule):
        return 'alpha'
    if 'lr' in hyperparam.get_dict():
        return 'lr'
    raise UnsupportedOptimizerError(
        '{}: the update rule {} has no learning rate (lr, or alpha of Adam) '
        'to multiply'.format(path, type(rule).__name__))


def set_lr_mult(model: chainer.Link, lr_mults: Mapping[str, MultValue],
                decay_mults: Optional[Mapping[str, Any]] = None
                ) -> Dict[str, ParamMults]:
    """Sets learning-rate (and weight-decay) multipliers of parameters.

    Call it after ``optimizer.setup(model)``: the multipliers are kept in
    the parameters' update rules (see :doc:`training`). Parameters not
    named keep theirs (1 unless set before).

    Args:
        model (~chainer.Link): The model the optimizer was set up with.
        lr_mults (dict): Link pattern (as for
            :func:`~chainer_finetune.paths.match_links`: ``conv1``,
            ``conv*``, ``features/0``; Caffe layer names on a
            :class:`~chainer_finetune.CaffeNet`) to the learning-rate
            multiplier of all parameters under the links, or to a dict of
            parameter name (or glob) to multiplier (``{'fc8': {'W': 10,
            'b': 20}}``). A key may also end with a parameter name
            (``'fc8/b'``). A parameter name is matched like the last
            components of a pattern: ``b`` names every bias under the
            links, ``conv/b`` one child's. A value may be a
            :class:`ParamMults`, setting
            ``decay_mult`` too, so the result of
            :func:`lr_mults_from_prototxt` can be passed as is. Keys are
            applied in order; a later key overrides an earlier one for the
            parameters both name.
        decay_mults (dict): Weight-decay multipliers, keyed the same way
            (values: numbers or dicts of numbers); applied after
            ``lr_mults``.

    Returns:
        dict: Parameter path (``fc8/b``) to its :class:`ParamMults`, for
        every parameter set.

    Raises:
        LinkNotFoundError: a key or parameter name matches nothing.
        OptimizerNotSetUpError: a parameter has no update rule yet.
        UnsupportedOptimizerError: the optimizer has no ``lr`` or
            ``alpha`` (AdaDelta).
        ValueError: a negative or non-finite multiplier.
    """
    # param id -> [path, param, lr_mult or None, decay_mult or None]
    pending: Dict[int, List[Any]] = {}
    for pid, (path, param, value) in _expand(model, lr_mults,
                                             'lr_mults').items():
        if isinstance(value, ParamMults):
            lr = _check_mult(value.lr_mult, '{} lr_mult'.format(path))
            decay = _check_mult(value.decay_mult,
                                '{} decay_mult'.format(path))
        else:
            lr, decay = _check_mult(value, '{} lr_mult'.format(path)), None
        pending[pid] = [path, param, lr, decay]
    if decay_mults is not None:
        for pid, (path, param, value) in _expand(model, decay_mults,
                                                 'decay_mults').items():
            decay = _check_mult(value, '{} decay_mult'.format(path))
            entry = pending.setdefault(pid, [path, param, None, None])
            entry[3] = decay
    # Check everything before changing anything.
    for path, param, _, _ in pending.values():
        if param.update_rule is None:
            raise OptimizerNotSetUpError(
                '{} has no update rule: call set_lr_mult after '
                'optimizer.setup(model) (and again after every setup)'.format(
                    path))
        _lr_name(param.update_rule, path)
    applied: Dict[str, ParamMults] = {}
    order = {id(p): i for i, p in enumerate(model.params())}
    for path, param, lr, decay in sorted(pending.values(),
                                         key=lambda e: order[id(e[1])]):
        rule = param.update_rule
        hyperparam = rule.hyperparam
        if not isinstance(hyperparam, MultipliedHyperparameter):
            hyperparam = MultipliedHyperparameter(
                hyperparam, _lr_name(rule, path))
            rule.hyperparam = hyperparam
        if lr is not None:
            hyperparam._lr_mult = lr
        if decay is not None:
            hyperparam._decay_mult = decay
        applied[path] = ParamMults(hyperparam.lr_mult, hyperparam.decay_mult)
        logger.debug('%s: lr_mult %g, decay_mult %g', path,
                     hyperparam.lr_mult, hyperparam.decay_mult)
    logger.info('set multipliers of %d parameters', len(applied))
    return applied


def get_lr_mults(model: chainer.Link) -> Dict[str, ParamMults]:
    """The multipliers of the model's parameters, by parameter path.

    Parameters without multipliers (or without an update rule) are left
    out: they learn at the optimizer's rates.
    """
    result = {}
    for path, param in params_under([('', model)]):
        hyperparam = getattr(param.update_rule, 'hyperparam', None)
        if isinstance(hyperparam, MultipliedHyperparameter):
            result[path.lstrip('/')] = ParamMults(hyperparam.lr_mult,
                                                  hyperparam.decay_mult)
    return result


def caffe_param_names(layer: caffe_pb2.LayerParameter) -> Optional[List[str]]:
    """The Chainer parameter names of a Caffe layer's blobs, in blob order.

    Convolution, Deconvolution and InnerProduct: ``W``, ``b``; Scale:
    ``W``, ``b`` (only ``b`` with a second bottom); Bias: ``b`` (none with
    a second bottom); PReLU: ``W``. ``None`` for every other type:
    BatchNorm's blobs are running statistics, which no Chainer optimizer
    changes, and the remaining supported types have no blobs. Each type's
    entry in the layer-type registry declares them
    (:attr:`~chainer_finetune.caffe.layers.LayerType.param_names`).

    Args:
        layer: A V2 layer description.
    """
    return learnable_blob_names(layer)


def _caffe_layers(source: Any, phase: str
                  ) -> Tuple[List[caffe_pb2.LayerParameter], str]:
    if isinstance(source, CaffeNet):
        return source.caffe_layers, 'net {!r}'.format(source.name)
    if isinstance(source, caffe_pb2.NetParameter):
        net, where = source, 'NetParameter {!r}'.format(source.name)
    elif isinstance(source, (str, os.PathLike)):
        net, where = read_prototxt(source), os.fspath(source)
    else:
        raise TypeError('expected a prototxt path, a NetParameter or a '
                        'CaffeNet, got {}'.format(type(source).__name__))
    if net.layer and net.layers:
        raise CaffeModelError('{}: mixes V1 (`layers`) and V2 (`layer`) '
                              'layers'.format(where))
    if phase not in ('TRAIN', 'TEST'):
        raise ValueError("phase must be 'TRAIN' or 'TEST', got {!r}".format(
            phase))
    version = 2 if net.layer else 1
    layers = to_v2_layers(net, net.layer if version == 2 else net.layers,
                          version, where, phase=caffe_pb2.Phase.Value(phase))
    return layers, where


def _as_written(value: float) -> float:
    # ParamSpec holds float32: 0.1 reads back as 0.10000000149011612.
    # The shortest decimal that is the same float32 is what the file says.
    return float(str(numpy.float32(value)))


def lr_mults_from_prototxt(source: Union[PathLike, caffe_pb2.NetParameter,
                                         CaffeNet],
                           phase: str = 'TRAIN'
                           ) -> Dict[str, Dict[str, ParamMults]]:
    """Reads Caffe's per-blob ``lr_mult`` and ``decay_mult``.

    V2 ``param { lr_mult decay_mult }`` and V1 ``blobs_lr`` /
    ``weight_decay`` are both read; blob 0 is ``W`` and blob 1 ``b`` (see
    :func:`caffe_param_names`). Every layer with learnable blobs is listed,
    blobs without a spec at Caffe's default (1, 1), so applying the result
    with :func:`set_lr_mult` reproduces the whole recipe. Shared blobs
    (``param { name }``) are not modelled: each layer gets its own values.

    Args:
        source: A ``.prototxt`` path (V1 or V2, typically the recipe's
            ``train_val.prototxt``), a ``NetParameter``, or a
            :class:`~chainer_finetune.CaffeNet` (the specs of the file it
            was built from; only layers and parameters it has).
        phase: The phase whose layers are read from a prototxt
            (``include``/``exclude`` rules): ``'TRAIN'`` or ``'TEST'``.

    Returns:
        dict: Caffe layer name to ``{param name: ParamMults}``, e.g.
        ``{'fc8': {'W': ParamMults(10.0, 1.0), 'b': ParamMults(20.0,
        0.0)}}``.

    Raises:
        CaffeModelError: an unreadable prototxt, or a layer with more
            ``param`` specs than learnable blobs (Caffe refuses it too).
    """
    layers, where = _caffe_layers(source, phase)
    link_names = source.link_names if isinstance(source, CaffeNet) else None
    result: Dict[str, Dict[str, ParamMults]] = {}
    for layer in layers:
        names = caffe_param_names(layer)
        if names is None:
            entry = find_layer_type(layer.type)
            if layer.param and not (entry is not None and entry.stateful):
                logger.warning('%s: layer %r (%s) has no learnable blobs '
                               'in Chainer; its param specs are ignored',
                               where, layer.name, layer.type)
            continue
        specs = list(layer.param)
        if len(specs) > len(names):
            raise CaffeModelError(
                '{}: layer {!r} ({}) has {} param specs for {} learnable '
                'blob(s)'.format(where, layer.name, layer.type, len(specs),
                                 len(names)))
        if link_names is not None:
            if layer.name not in link_names:
                continue
            link = getattr(source, link_names[layer.name])
            have = {name.lstrip('/') for name, _ in link.namedparams()}
            names = [n if n in have else None for n in names]
        # Missing specs, and unset fields, read as ParamSpec's defaults:
        # lr_mult 1 and decay_mult 1.
        specs += [caffe_pb2.ParamSpec()] * (len(names) - len(specs))
        entry = {name: ParamMults(_as_written(spec.lr_mult),
                                  _as_written(spec.decay_mult))
                 for name, spec in zip(names, specs) if name is not None}
        if entry:
            result[layer.name] = entry
    logger.debug('%s: multipliers of %d layers', where, len(result))
    return result
