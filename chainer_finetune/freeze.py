"""Freezing parts of a model while fine-tuning.

:func:`freeze` / :func:`unfreeze` act on the model (update rules disabled,
BatchNormalization on its stored statistics, no graph built over a frozen
prefix); :class:`DelGradient` is the optimizer-hook recipe, made airtight.
Both name links as :mod:`chainer_finetune.paths` does. How the two compare,
and the pitfalls: ``docs/freezing.rst``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, List, Optional, Tuple

import chainer
import chainer.links as L
# Part of the chainer distribution (mpi4py is imported only when a
# communicator is made).
import chainermn.links

from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.paths import Patterns
from chainer_finetune.paths import as_list
from chainer_finetune.paths import link_paths
from chainer_finetune.paths import match_links
from chainer_finetune.paths import params_under

logger = logging.getLogger(__name__)

# Links whose forward in training mode updates running statistics (the
# multi-node one also all-reduces the batch's).
_STATISTICS_LINKS = (L.BatchNormalization, L.DecorrelatedBatchNormalization,
                     chainermn.links.MultiNodeBatchNormalization)

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


class DelGradient(object):

    """Optimizer hook function that keeps the targeted parameters still.

    Backward runs through the whole model as usual; before each update the
    hook zeroes, in place, the gradients of every parameter under the
    target links (``None`` gradients stay ``None``), so that later hooks
    and logging see zeros, and disables their update rules, again on every
    call (so ``link.enable_update()`` elsewhere does not thaw them): zeroed
    gradients alone leave momentum and weight decay moving the parameters
    (see :doc:`freezing`).

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
        self.resolve(optimizer)
        for _, param in self._params:
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
        for param in self._disabled:
            if param.update_rule is not None:
                param.update_rule.enabled = True
        self._disabled = []
        self._target = None
        self._params = []


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


def _run_frozen(link: chainer.Link, cut: bool, run: Callable[[], Any]
                ) -> Any:
    """Runs ``run()`` with the frozen ``link``'s rules: statistics as
    stored, and, if ``cut``, no graph."""
    with contextlib.ExitStack() as stack:
        if isinstance(link, _STATISTICS_LINKS):
            stack.enter_context(chainer.using_config('train', False))
        if cut:
            stack.enter_context(chainer.no_backprop_mode())
        out = run()
    return _without_graph(out) if cut else out


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
        return _run_frozen(
            link, cut, lambda: type(link).forward(link, *args, **kwargs))


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

    def hold(self, net: CaffeNet) -> bool:
        """For a caller that runs the layer without calling the wrapper
        (the fast inference path): whether the layer's link is frozen now,
        and if so, its update rules disabled as a call would."""
        link = net[self.layer_name]
        if not _is_frozen(link):
            return False
        _disable_rules(link.params())
        return True

    def __call__(self, function, net: CaffeNet, *xs):
        link = net[self.layer_name]
        if not _is_frozen(link):     # a stale wrapper: behave as unwrapped
            return function(net, *xs)
        # The link itself may never be called (Scale): disable here too.
        _disable_rules(link.params())
        return _run_frozen(link, not _needs_grad(xs),
                           lambda: function(net, *xs))


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


def _set_frozen(model: chainer.Link, patterns: Patterns,
                frozen: bool) -> List[str]:
    """The body of :func:`freeze` (``frozen=True``) and :func:`unfreeze`."""
    matched = match_links(model, patterns)
    n_links = 0
    unset = 0
    for _, top in matched:
        for link in top.links():
            if not frozen:
                _unwrap(link)
                link.enable_update()
                continue
            if not _calls_forward(link):
                logger.warning('%s defines __call__ instead of forward: its '
                               'update rules are disabled, but its batch '
                               'normalization and graph are not frozen',
                               type(link).__name__)
            elif not _is_frozen(link):
                _wrap(link)
                n_links += 1
            unset += sum(1 for param in _direct_params(link)
                         if param.update_rule is None)
            link.disable_update()
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

    For every link under a matched one:

    * its parameters' update rules are disabled, so that no optimizer
      moves them; rules that a later ``optimizer.setup`` creates are
      disabled when the link (or its CaffeNet layer) next runs forward, so
      freeze after ``setup`` to cover a link whose parameters its parent
      reads without calling it;
    * a BatchNormalization (or DecorrelatedBatchNormalization, or
      ChainerMN's MultiNodeBatchNormalization, which then all-reduces
      nothing) normalizes with its stored statistics and leaves them
      alone, even in training mode (Caffe's ``use_global_stats: true``);
    * if none of its inputs needs a gradient, it runs without building a
      graph, so backward stops where the frozen prefix ends (pass arrays:
      a ``chainer.Variable(x)`` input asks for its own gradient).

    The links' ``forward`` and ``copy`` are replaced per instance; a frozen
    model pickles and copies. Freezing twice changes nothing. See
    :doc:`freezing`.

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
