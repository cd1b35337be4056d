"""Freezing parts of a model while fine-tuning.

Two tools, both naming links by path or glob (see
:mod:`chainer_finetune.paths`: ``conv1`` never names ``conv10`` or
``conv1_1``; ``conv*`` names them all):

* :class:`DelGradient`, an optimizer hook: the classic recipe, made
  airtight. The full backward pass still runs; the hook zeroes the
  gradients of the targeted parameters in place and disables their update
  rules, so that nothing (momentum, weight decay, Adam's decoupled weight
  decay) moves them.
* :func:`freeze` / :func:`unfreeze`, on the model: the update rules are
  disabled, BatchNormalization links in the frozen part use their stored
  statistics (Caffe's ``use_global_stats``) and leave them alone, and a
  frozen link whose inputs need no gradient runs without building a graph,
  so the backward pass stops at the end of a frozen prefix (that is where
  fine-tuning gets its speed; see ``benchmarks/finetune_step.py``).

Usage::

    optimizer = chainer.optimizers.MomentumSGD(lr=0.01).setup(net)
    freeze(net, ['conv*'])                  # or:
    optimizer.add_hook(DelGradient(['conv*']))

See ``docs/freezing.rst`` for how the two compare and for the pitfalls.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, List, Optional, Tuple

import chainer
import chainer.links as L

from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.paths import Patterns
from chainer_finetune.paths import as_list
from chainer_finetune.paths import link_paths
from chainer_finetune.paths import match_links
from chainer_finetune.paths import params_under

logger = logging.getLogger(__name__)

# Links whose forward in training mode updates running statistics.
_STATISTICS_LINKS = (L.BatchNormalization, L.DecorrelatedBatchNormalization)

# The name freeze() wraps CaffeNet layer functions under.
_LAYER_WRAPPER = 'freeze'


def _disable_rules(params) -> List[chainer.Parameter]:
    """Disables the update rules of ``params``; returns those it changed."""
    changed = []
    for param in params:
        rule = param.update_rule
        if rule is not None and rule.enabled:
            rule.enabled = False
            changed.append(param)
    return changed


def _enable_rules(params) -> None:
    for param in params:
        rule = param.update_rule
        if rule is not None:
            rule.enabled = True


# --------------------------------------------------------------------------
# DelGradient
# --------------------------------------------------------------------------

class DelGradient(object):

    """Optimizer hook function that keeps the targeted parameters still.

    The hook is the optimizer-hook form of freezing layers: backward runs
    through the whole model as usual, and before each update this hook
    zeroes the gradients of every parameter under the target links, *in
    place* (a hook that rebinds ``grad = 0`` to a local name freezes
    nothing), on NumPy and CuPy arrays alike. ``None`` gradients are left
    as they are.

    Zeroed gradients alone do not freeze a parameter: MomentumSGD keeps
    moving it while its velocity is non-zero, a ``WeightDecay`` hook added
    before this one adds ``rate * param`` back, and Adam's
    ``weight_decay_rate`` shrinks parameters whatever their gradient. So the
    hook also sets ``update_rule.enabled = False`` for the targeted
    parameters (re-asserted on every call, so ``link.enable_update()``
    elsewhere does not thaw them): a disabled rule returns before momentum,
    decay, per-parameter hooks or the update, whatever order hooks were
    added in. Their gradients are still zeroed, so that code reading them
    (a ``GradientClipping`` hook added after this one, logging) sees zeros.

    Disabled rules do not step: their ``t`` and state (momentum, Adam's
    moments) stay as they were until :meth:`release`.

    Targets are resolved against ``optimizer.target`` on the first call (or
    at construction, if ``model`` is given, or by :meth:`resolve`); a
    target that names no link raises
    :class:`~chainer_finetune.errors.LinkNotFoundError` then.

    Args:
        targets (str or list of str): Link paths or glob patterns (see
            :func:`chainer_finetune.paths.match_links`): every parameter
            of the matched links and their descendants is held.
        model (~chainer.Link): Optional; resolve the targets against it
            now, so that a typo raises here rather than at the first
            update.
        name (str): The name the hook registers under (default
            ``'DelGradient'``); give each hook its own name to add several
            to one optimizer.

    Attributes:
        targets (list of str): The target patterns.
        name (str): Name of the hook.
        timing (str): ``'pre'``: called before any update.
        call_for_each_param (bool): ``False``: called once per update
            with the optimizer.
    """

    name = 'DelGradient'
    call_for_each_param = False
    timing = 'pre'

    def __init__(self, targets: Patterns,
                 model: Optional[chainer.Link] = None,
                 name: Optional[str] = None) -> None:
        self.targets = as_list(targets)
        if name is not None:
            self.name = name
        self._target: Optional[chainer.Link] = None
        self._params: List[Tuple[str, chainer.Parameter]] = []
        self._disabled: List[chainer.Parameter] = []
        if model is not None:
            self._resolve(model)

    def _resolve(self, model: chainer.Link
                 ) -> List[Tuple[str, chainer.Parameter]]:
        if self._target is not model:
            self._params = params_under(match_links(model, self.targets))
            self._target = model
            logger.debug('DelGradient %r holds %d parameters: %s',
                         self.targets, len(self._params),
                         [path for path, _ in self._params])
        return self._params

    @property
    def params(self) -> List[Tuple[str, chainer.Parameter]]:
        """``(path, parameter)`` held by the hook (empty until resolved)."""
        return list(self._params)

    def resolve(self, optimizer: chainer.Optimizer) -> None:
        """Resolves the targets and disables their update rules now.

        The first call does this anyway; call it yourself when the rules
        must be disabled before the first update, e.g. before loading a
        snapshot taken while the parameters were held (their rules have no
        state in it, which Chainer accepts only for disabled rules).

        Args:
            optimizer (~chainer.Optimizer): The optimizer, set up.
        """
        params = self._resolve(optimizer.target)
        self._disabled.extend(_disable_rules(p for _, p in params))

    def __call__(self, optimizer: chainer.Optimizer) -> None:
        params = self._resolve(optimizer.target)
        self._disabled.extend(_disable_rules(p for _, p in params))
        for _, param in params:
            grad = param.grad
            if grad is None:
                continue
            # fill() is in place on NumPy, CuPy and ChainerX arrays; the
            # device context makes CuPy launch on the array's own GPU.
            with chainer.using_device(param.device):
                grad.fill(0)

    def release(self, optimizer: chainer.Optimizer,
                name: Optional[str] = None) -> None:
        """Removes the hook from ``optimizer`` and lets the parameters move.

        Re-enables the update rules that this hook disabled. Their
        optimizer state is what it was when the hook first ran (momentum
        built up before then resumes); rules that never stepped create their
        state at the next update.

        Args:
            optimizer (~chainer.Optimizer): The optimizer the hook was added
                to.
            name (str): The name it was added under, if not :attr:`name`.
        """
        try:
            optimizer.remove_hook(self.name if name is None else name)
        except KeyError:
            logger.debug('DelGradient %r was not registered in the '
                         'optimizer', self.name)
        _enable_rules(self._disabled)
        self._disabled = []
        self._target = None
        self._params = []


# --------------------------------------------------------------------------
# freeze / unfreeze
# --------------------------------------------------------------------------

def _direct_params(link: chainer.Link) -> List[chainer.Parameter]:
    """The link's own parameters, not its descendants'."""
    # namedparams() gives '/W' for the link's own, '/child/W' for others.
    return [param for path, param in link.namedparams()
            if path.count('/') == 1]


def _is_frozen(link: chainer.Link) -> bool:
    return isinstance(link.__dict__.get('forward'), _FrozenForward)


def _needs_grad(value: Any) -> bool:
    if isinstance(value, chainer.Variable):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        return any(_needs_grad(v) for v in value)
    if isinstance(value, dict):
        return any(_needs_grad(v) for v in value.values())
    return False


def _without_graph(value: Any) -> Any:
    # A Variable made under no_backprop_mode has no creator but still
    # requires_grad when a parameter does; the next function (a ReLU,
    # pooling) would then build a graph and the next frozen link would have
    # to backpropagate. requires_grad=False ends that.
    if isinstance(value, chainer.Variable):
        return chainer.Variable(value.array, requires_grad=False)
    if isinstance(value, tuple):
        values = [_without_graph(v) for v in value]
        if hasattr(value, '_fields'):    # a namedtuple
            return type(value)(*values)
        return tuple(values)
    if isinstance(value, list):
        return [_without_graph(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_graph(v) for k, v in value.items()}
    return value


class _FrozenForward(object):
    """The ``forward`` of a frozen link (an instance attribute, picklable).

    ``Link.__call__`` looks ``forward`` up on the instance, so this object
    takes the place of the class's method for this link only.
    """

    def __init__(self, link: chainer.Link) -> None:
        self.link = link

    def __call__(self, *args, **kwargs):
        link = self.link
        # Rules created by an optimizer.setup after freeze() start enabled.
        _disable_rules(_direct_params(link))
        cut = (not _needs_grad(args) and not _needs_grad(kwargs) and
               all(_is_frozen(child) for child in link.links(skipself=True)))
        with contextlib.ExitStack() as stack:
            if isinstance(link, _STATISTICS_LINKS):
                stack.enter_context(chainer.using_config('train', False))
            if cut:
                stack.enter_context(chainer.no_backprop_mode())
            out = type(link).forward(link, *args, **kwargs)
        return _without_graph(out) if cut else out


class _FrozenCopy(object):
    """The ``copy`` of a frozen link: gives the copy its own wrappers.

    ``Link.copy(mode='share')`` is a shallow copy, whose instance
    attributes would still call the original link's forward.
    """

    def __init__(self, link: chainer.Link) -> None:
        self.link = link

    def __call__(self, mode: str = 'share') -> chainer.Link:
        link = self.link
        copied = type(link).copy(link, mode)
        _wrap(copied)
        return copied


class _FrozenLayer(object):
    """Wraps a CaffeNet layer whose link is frozen (picklable).

    Scale, Bias and PReLU layers read their link's parameters without
    calling the link, so the link's frozen forward alone would not cut the
    graph there (their ``W`` requires a gradient). This applies the same
    rules around the whole layer; see
    :meth:`~chainer_finetune.CaffeNet.wrap_layer_function`.
    """

    def __init__(self, layer_name: str) -> None:
        self.layer_name = layer_name

    def __call__(self, function, net: CaffeNet, *xs):
        link = net[self.layer_name]
        if not _is_frozen(link):     # a stale wrapper: behave as unwrapped
            return function(net, *xs)
        # The link itself may never be called (Scale): disable here too.
        _disable_rules(link.params())
        cut = not _needs_grad(xs)
        with contextlib.ExitStack() as stack:
            if isinstance(link, _STATISTICS_LINKS):
                stack.enter_context(chainer.using_config('train', False))
            if cut:
                stack.enter_context(chainer.no_backprop_mode())
            ys = function(net, *xs)
        return _without_graph(ys) if cut else ys


def _sync_caffe_layers(model: chainer.Link) -> None:
    """Wraps the layers of frozen links of every CaffeNet, unwraps others."""
    for net in model.links():
        if not isinstance(net, CaffeNet):
            continue
        for layer_name in net.link_names:
            wrapped = _LAYER_WRAPPER in net.layer_wrappers(layer_name)
            frozen = _is_frozen(net[layer_name])
            if frozen and not wrapped:
                net.wrap_layer_function(layer_name, _LAYER_WRAPPER,
                                        _FrozenLayer(layer_name))
            elif wrapped and not frozen:
                net.unwrap_layer_function(layer_name, _LAYER_WRAPPER)


def _calls_forward(link: chainer.Link) -> bool:
    """Whether calling ``link`` goes through ``Link.__call__`` to forward."""
    # A subclass's own __call__ (Chainer < 5 style) never reaches forward;
    # Link.__call__ prefers a mixin's __call__ to it.
    return (type(link).__call__ is chainer.Link.__call__ and
            getattr(super(chainer.Link, link), '__call__', None) is None)


def _wrap(link: chainer.Link) -> None:
    link.__dict__['forward'] = _FrozenForward(link)
    link.__dict__['copy'] = _FrozenCopy(link)


def _unwrap(link: chainer.Link) -> None:
    if _is_frozen(link):
        del link.__dict__['forward']
    if isinstance(link.__dict__.get('copy'), _FrozenCopy):
        del link.__dict__['copy']


def _freeze_link(link: chainer.Link) -> Tuple[bool, int]:
    """Freezes one link (not its children).

    Returns:
        Whether its forward was newly replaced, and how many of its own
        parameters have no update rule yet.
    """
    newly_wrapped = False
    if not _calls_forward(link):
        logger.warning('%s defines __call__ instead of forward: its update '
                       'rules are disabled, but its batch normalization and '
                       'graph are not frozen', type(link).__name__)
    elif not _is_frozen(link):
        _wrap(link)
        newly_wrapped = True
    without_rule = sum(1 for param in _direct_params(link)
                       if param.update_rule is None)
    link.disable_update()
    return newly_wrapped, without_rule


def _unfreeze_link(link: chainer.Link) -> None:
    """Undoes :func:`_freeze_link` for one link (not its children)."""
    _unwrap(link)
    link.enable_update()


def _set_frozen(model: chainer.Link, patterns: Patterns,
                frozen: bool) -> List[str]:
    """The body of :func:`freeze` (``frozen=True``) and :func:`unfreeze`."""
    matched = match_links(model, patterns)
    n_links = 0
    unset = 0
    for _, top in matched:
        for link in top.links():
            if frozen:
                newly_wrapped, without_rule = _freeze_link(link)
                n_links += newly_wrapped
                unset += without_rule
            else:
                _unfreeze_link(link)
    if unset:
        logger.debug('%d frozen parameters have no update rule yet; those '
                     'created by optimizer.setup are disabled at their '
                     'first forward', unset)
    _sync_caffe_layers(model)
    paths = [path for path, _ in matched]
    if frozen:
        logger.debug('froze %s (%d links newly wrapped)', paths, n_links)
    else:
        logger.debug('unfroze %s', paths)
    return paths


def freeze(model: chainer.Link, patterns: Patterns) -> List[str]:
    """Freezes the matched links and everything under them.

    Three things, for every link under a matched one:

    * its parameters' update rules are disabled
      (:meth:`chainer.Link.disable_update`), so that no optimizer moves
      them, whatever its momentum, weight decay or hooks. Rules created
      later by ``optimizer.setup`` are disabled when the link (or its
      CaffeNet layer) next runs forward; freeze after ``setup`` to cover a
      link whose parameters its parent reads without calling it;
    * a :class:`~chainer.links.BatchNormalization` (or
      ``DecorrelatedBatchNormalization``) normalizes with its stored
      statistics and does not update them, even with
      ``chainer.config.train`` on (Caffe's ``use_global_stats: true``);
    * if none of its inputs needs a gradient (arrays, Variables with
      ``requires_grad=False``, outputs of other such links), it runs under
      :func:`chainer.no_backprop_mode` and returns Variables with
      ``requires_grad=False``: no graph is built, and the backward pass of
      the trainable part stops where the frozen prefix ends. A frozen link
      after a trainable one still passes gradients through to it. (A
      ``chainer.Variable(x)`` input asks for its own gradient, so the
      frozen links it flows into are backpropagated; pass arrays.)

    The links' ``forward`` (and ``copy``, so that ``Link.copy()`` works)
    are replaced per instance; a frozen model pickles, deep-copies and
    copies. Freezing a frozen link again changes nothing.

    Args:
        model (~chainer.Link): The model.
        patterns (str or list of str): Link paths or glob patterns (see
            :func:`chainer_finetune.paths.match_links`).

    Returns:
        list of str: The paths of the matched links.

    Raises:
        LinkNotFoundError: if a pattern names no link.
    """
    return _set_frozen(model, patterns, True)


def unfreeze(model: chainer.Link, patterns: Patterns) -> List[str]:
    """Undoes :func:`freeze` for the matched links and everything under them.

    Their forward is the class's again and their update rules are enabled.
    A parameter frozen since before ``optimizer.setup`` has no optimizer
    state; Chainer creates it at the next update. One frozen since after
    keeps the state it had (MomentumSGD's velocity resumes).

    A frozen link *above* a matched one keeps its own parameters frozen but
    no longer cuts the graph, so the matched links get their gradients.

    Args:
        model (~chainer.Link): The model.
        patterns (str or list of str): Link paths or glob patterns.

    Returns:
        list of str: The paths of the matched links.

    Raises:
        LinkNotFoundError: if a pattern names no link.
    """
    return _set_frozen(model, patterns, False)


def frozen_paths(model: chainer.Link) -> List[str]:
    """The paths of the links of ``model`` that :func:`freeze` froze."""
    return [path for path, link in link_paths(model) if _is_frozen(link)]
