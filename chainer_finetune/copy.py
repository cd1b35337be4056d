"""Copying pretrained values into a model of another shape: :func:`copy_model`.

Every parameter and persistent value that two models have in common, by
link path and name, is copied (never shared), and a :class:`CopyReport`
says what was copied or skipped and why. The matching rules and the faults
of the old ``copy_model`` recipe are told in ``docs/copy_model.rst``.
"""

from __future__ import annotations

import logging
import numbers
from typing import (Any, Callable, Dict, Iterator, List, Mapping, NamedTuple,
                    Optional, Sequence, Set, Tuple, Union)

import chainer
from chainer import backend
import chainer.links as L
# Part of the chainer distribution (mpi4py is imported only when a
# communicator is made).
import chainermn.links
import numpy

from chainer_finetune.errors import CopyMismatchError
from chainer_finetune.paths import caffe_link_names
from chainer_finetune.paths import join_path
from chainer_finetune.paths import link_paths

logger = logging.getLogger(__name__)

__all__ = ['CopyEntry', 'CopyMismatchError', 'CopyReport', 'copy_model']

Shape = Tuple[Optional[int], ...]
PathMapping = Union[Mapping[str, Optional[str]],
                    Callable[[str], Optional[str]], None]

COPIED = 'copied'
SKIPPED = 'skipped'

# Reason codes of skipped entries (CopyEntry.code).
MISSING_IN_DST = 'missing_in_dst'
MISSING_IN_SRC = 'missing_in_src'
SHAPE_MISMATCH = 'shape_mismatch'
TYPE_MISMATCH = 'type_mismatch'
UNINITIALIZED_IN_BOTH = 'uninitialized_in_both'
UNINITIALIZED_IN_SRC = 'uninitialized_in_src'
UNINITIALIZED_IN_DST = 'uninitialized_in_dst'
UNSUPPORTED = 'unsupported'
DROPPED = 'dropped'
DUPLICATE = 'duplicate'
HELD_BACK = 'held_back'

# Causes that keep the other values of a link pair from being copied.
_BLOCKING = frozenset([SHAPE_MISMATCH, TYPE_MISMATCH, UNINITIALIZED_IN_SRC,
                       UNINITIALIZED_IN_DST])
# Skipped on purpose or as a consequence of another entry: not mismatches.
_NOT_MISMATCHES = frozenset([DROPPED, HELD_BACK])

_PARAM = 'param'
_PERSISTENT = 'persistent'
# Link classes that hold the same values under the same names: a model
# trained data-parallel has ChainerMN's BatchNormalization where one trained
# in one process has Chainer's (chainer_finetune.distributed).
_SAME_KINDS = ((L.BatchNormalization,
                chainermn.links.MultiNodeBatchNormalization),)


class CopyEntry(NamedTuple):
    """What :func:`copy_model` did with one parameter or persistent value.

    Attributes:
        src: Path of the source link (``''`` for the root), or ``None``
            where only the destination has the link.
        dst: Path of the destination link (after ``mapping``), or ``None``
            where a source link has no destination (dropped by the mapping).
        name: The parameter's or persistent's name in its link (``W``,
            ``avg_mean``).
        kind: ``'param'`` or ``'persistent'`` (the source's, else the
            destination's).
        status: ``'copied'`` or ``'skipped'``.
        reason: Why it was skipped, for people (``'shape (1000, 4096) !=
            (10, 4096)'``); ``''`` when copied.
        code: Why it was skipped, for programs: one of ``missing_in_dst``,
            ``missing_in_src``, ``shape_mismatch``, ``type_mismatch``,
            ``uninitialized_in_both``, ``uninitialized_in_src``,
            ``uninitialized_in_dst``, ``unsupported`` (a persistent that is
            neither an array nor a scalar), ``dropped`` (by the mapping),
            ``duplicate`` (a second source link mapped onto the same
            destination), ``held_back`` (another value of the link pair
            could not be copied); ``''`` when copied.
        src_shape: Shape of the source value (``None`` when it is not an
            array or absent).
        dst_shape: Shape of the destination value (for an uninitialized
            parameter the shape its link declares, ``None`` for the
            dimensions it leaves open).
    """

    src: Optional[str]
    dst: Optional[str]
    name: str
    kind: str
    status: str
    reason: str = ''
    code: str = ''
    src_shape: Optional[Shape] = None
    dst_shape: Optional[Shape] = None

    @property
    def copied(self) -> bool:
        """Whether the value was copied."""
        return self.status == COPIED

    @property
    def src_path(self) -> Optional[str]:
        """The value's path in the source (``conv1/W``)."""
        return None if self.src is None else join_path(self.src, self.name)

    @property
    def dst_path(self) -> Optional[str]:
        """The value's path in the destination."""
        return None if self.dst is None else join_path(self.dst, self.name)

    @property
    def link(self) -> str:
        """The link as messages name it (``src``, ``src -> dst``, ``dst``)."""
        return _pair_label(self.src, self.dst)


class CopyReport:
    """The outcome of :func:`copy_model`: one :class:`CopyEntry` per value.

    Every parameter and persistent value of both models has an entry: those
    copied, those of the source that were not (with the reason) and those
    of the destination that received nothing (``missing in src``).
    ``str(report)`` is a table of them.

    ``len(report)`` is the number of entries and iterating gives them in
    order (source links first, in ``namedlinks`` order). ``bool(report)``
    is whether *anything* was copied, so ``if not report:`` catches a copy
    that matched nothing (the recipe's classic silent failure); it is not
    ``len(report) > 0``. For "everything was copied" test
    ``not report.mismatches``.

    Attributes:
        entries (list of CopyEntry): All entries, in order.
        unused_mapping_keys (list of str): Keys of a dict ``mapping`` that
            named no source link (typos, most likely).
    """

    def __init__(self, entries: Sequence[CopyEntry],
                 unused_mapping_keys: Sequence[str] = ()) -> None:
        self.entries: List[CopyEntry] = list(entries)
        self.unused_mapping_keys: List[str] = list(unused_mapping_keys)

    @property
    def copied(self) -> List[CopyEntry]:
        """The entries of the values copied."""
        return [e for e in self.entries if e.status == COPIED]

    @property
    def skipped(self) -> List[CopyEntry]:
        """The entries of the values not copied, for whatever reason."""
        return [e for e in self.entries if e.status == SKIPPED]

    @property
    def mismatches(self) -> List[CopyEntry]:
        """Skipped entries other than those the mapping dropped on purpose
        and those held back by another mismatch of their link: what
        ``strict=True`` refuses."""
        return [e for e in self.entries
                if e.status == SKIPPED and e.code not in _NOT_MISMATCHES]

    @property
    def copied_links(self) -> List[str]:
        """Paths of the destination links that received values, in order."""
        return list(dict.fromkeys(e.dst for e in self.entries
                                  if e.status == COPIED))

    @property
    def skipped_links(self) -> List[str]:
        """Paths of the links whose values were not copied at all.

        A link is named by its source path, or by its destination path where
        only the destination has it. A link pair that had some values copied
        is in :attr:`copied_links` only.
        """
        copied_pairs = {(e.src, e.dst) for e in self.entries
                        if e.status == COPIED}
        return list(dict.fromkeys(e.src if e.src is not None else e.dst
                                  for e in self.entries
                                  if (e.src, e.dst) not in copied_pairs))

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[CopyEntry]:
        return iter(self.entries)

    def __bool__(self) -> bool:
        return any(e.status == COPIED for e in self.entries)

    def summary(self) -> str:
        """One line: how many values and links were copied and skipped."""
        return ('{} of {} values copied, {} skipped; links: {} copied, {} '
                'skipped'.format(len(self.copied), len(self.entries),
                                 len(self.skipped), len(self.copied_links),
                                 len(self.skipped_links)))

    def messages(self) -> List[str]:
        """The lines :func:`copy_model` logs: ``Copy conv1`` per link pair
        copied, ``Ignore fc8: W shape (1000, 4096) != (10, 4096)`` per value
        skipped."""
        lines = []
        announced: Set[Tuple[Optional[str], Optional[str]]] = set()
        copied_pairs = {(e.src, e.dst) for e in self.entries
                        if e.status == COPIED}
        for e in self.entries:
            pair = (e.src, e.dst)
            if pair in copied_pairs and pair not in announced:
                announced.add(pair)
                lines.append('Copy {}'.format(e.link))
            if e.status == SKIPPED:
                lines.append('Ignore {}: {} {}'.format(e.link, e.name,
                                                       e.reason))
        return lines

    def __str__(self) -> str:
        header = ('status', 'src', 'dst', 'shape', 'reason')
        rows = [header]
        for e in self.entries:
            shape = e.dst_shape if e.copied or e.src_shape is None \
                else e.src_shape
            rows.append((e.status, e.src_path or '-', e.dst_path or '-',
                         _format_shape(shape) if shape is not None
                         else '-', e.reason))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [self.summary()]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths)]
            lines.append('  '.join(cells + [row[4]]).rstrip())
        for key in self.unused_mapping_keys:
            lines.append('unused mapping key {!r}: no such link in src'.format(
                key))
        return '\n'.join(lines)

    def __repr__(self) -> str:
        return '<CopyReport: {}>'.format(self.summary())


def _label(path: Optional[str]) -> str:
    return '/' if path == '' else str(path)


def _pair_label(src: Optional[str], dst: Optional[str]) -> str:
    if src is None:
        return _label(dst)
    if dst is None or dst == src:
        return _label(src)
    return '{} -> {}'.format(_label(src), _label(dst))


def _format_shape(shape: Shape) -> str:
    # Open dimensions of a declared shape print as '*': (10, *).
    dims = ['*' if d is None else str(d) for d in shape]
    return '({})'.format(', '.join(dims) + (',' if len(dims) == 1 else ''))


def _is_array(value: Any) -> bool:
    return isinstance(value, chainer.get_array_types())


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (numbers.Number, numpy.generic))


def _describe(value: Any) -> str:
    if value is None:
        return 'None'
    if _is_array(value):
        return 'array'
    return type(value).__name__


def _own_values(link: chainer.Link) -> Dict[str, Tuple[str, Any]]:
    """name -> (kind, value) of the link's own parameters and persistents."""
    d = link.__dict__
    values = {name: (_PARAM, d[name]) for name in sorted(link._params)}
    values.update((name, (_PERSISTENT, d.get(name)))
                  for name in sorted(link._persistent))
    return values


def _links_with_values(model: chainer.Link
                       ) -> List[Tuple[str, chainer.Link]]:
    """(path, link) of every link that owns parameters or persistents."""
    return [(path, link) for path, link in link_paths(model, True)
            if link._params or link._persistent]


def _declared_shape(link: chainer.Link, name: str,
                    planned: Mapping[str, Shape]) -> Optional[Shape]:
    """The shape an uninitialized parameter of ``link`` will get, ``None``
    for the dimensions the input decides; ``None`` if unknown."""
    if name in planned:
        return planned[name]
    if isinstance(link, L.DepthwiseConvolution2D):
        if name == 'W':
            return (link.channel_multiplier, None) + _ksize(link.ksize)
        if name == 'b':
            W = link.W.array
            in_channels = W.shape[1] if W is not None else \
                (planned['W'][1] if 'W' in planned else None)
            if in_channels is None:
                return None
            return (link.channel_multiplier * in_channels,)
        return None
    if name != 'W':
        return None
    if isinstance(link, L.Linear):
        return (link.out_size, None)
    if isinstance(link, (L.Deconvolution2D, L.DeconvolutionND)):
        return (None, link.out_channels // link.groups) + _ksize(link.ksize)
    if isinstance(link, (L.Convolution2D, L.DilatedConvolution2D,
                         L.ConvolutionND)):
        return (link.out_channels, None) + _ksize(link.ksize)
    return None


def _ksize(x) -> Tuple[int, ...]:
    # 2D links keep ksize as given (an int or a pair), ND links a tuple.
    if hasattr(x, '__getitem__'):
        return tuple(int(k) for k in x)
    return int(x), int(x)


def _fits(shape: Tuple[int, ...], declared: Shape) -> bool:
    return len(shape) == len(declared) and all(
        d is None or d == s for s, d in zip(shape, declared))


def _shares_memory(xp, a, b) -> bool:
    if a is b:
        return True
    may_share = getattr(xp, 'may_share_memory', None)
    if may_share is None or type(a) is not type(b):
        return False
    return bool(may_share(a, b))


def _transfer(value, like, set_fresh: Callable[[Any], None]) -> None:
    """Writes ``value`` into the array ``like`` (its device and dtype).

    In place where the array module allows it (NumPy, CuPy); otherwise, or
    when ``like`` shares memory with ``value`` (arrays a recipe once
    aliased), ``set_fresh`` receives a new array.
    """
    device = backend.get_device_from_array(like)
    with chainer.using_device(device):
        moved = device.send(value)
        in_place = (isinstance(device, (backend.CpuDevice,
                                        backend.GpuDevice)) and
                    getattr(getattr(like, 'flags', None), 'writeable', True))
        if in_place and not _shares_memory(device.xp, like, moved):
            like[...] = moved          # casts to like's dtype
        else:
            set_fresh(moved.astype(like.dtype, copy=True))


def _copy_param(src_param: chainer.Parameter, dst_param: chainer.Parameter,
                shape: Optional[Tuple[int, ...]]) -> None:
    if shape is not None:   # lazily built: create it as the link would
        dst_param.initialize(shape)
    _transfer(src_param.array, dst_param.array,
              lambda fresh: setattr(dst_param, 'array', fresh))


def _copy_persistent(src_link: chainer.Link, dst_link: chainer.Link,
                     name: str) -> None:
    value = getattr(src_link, name)
    if _is_array(value):
        _transfer(value, getattr(dst_link, name),
                  lambda fresh: setattr(dst_link, name, fresh))
    else:   # a scalar: immutable, assigning copies
        setattr(dst_link, name,
                value.item() if isinstance(value, numpy.generic) else value)


class _Mapper:
    """Source link path -> destination link path (or None: dropped)."""

    def __init__(self, mapping: PathMapping, src: chainer.Link,
                 dst: chainer.Link) -> None:
        self._callable: Optional[Callable[[str], Optional[str]]] = None
        self._dict: Dict[str, Optional[str]] = {}
        self._spelling: Dict[str, str] = {}
        self._used: Set[str] = set()
        self._dst_names = caffe_link_names(dst)
        if mapping is None:
            return
        if isinstance(mapping, Mapping):
            src_names = caffe_link_names(src)
            for key, value in mapping.items():
                if not isinstance(key, str):
                    raise TypeError('mapping keys must be link paths (str), '
                                    'got {!r}'.format(key))
                path = src_names.get(key, key).strip('/')
                self._dict[path] = self._check(key, value)
                self._spelling[path] = key
        elif callable(mapping):
            self._callable = mapping
        else:
            raise TypeError('mapping must be a dict, a callable or None, got '
                            '{!r}'.format(type(mapping).__name__))

    def _check(self, key: Any, value: Any) -> Optional[str]:
        if value is None:
            return None
        if not isinstance(value, str):
            raise TypeError('mapping of {!r} must be a link path (str) or '
                            'None, got {!r}'.format(key, value))
        return self._dst_names.get(value, value).strip('/')

    def __call__(self, path: str) -> Tuple[Optional[str], bool]:
        """The destination path (None: dropped), and whether the mapping
        named it (rather than the path being kept as it is)."""
        if self._callable is not None:
            return self._check(path, self._callable(path)), True
        # The link itself, else its nearest mapped ancestor (the root
        # included: {'': 'backbone'} moves everything).
        parts = path.split('/') if path else []
        for n in range(len(parts), -1, -1):
            key = '/'.join(parts[:n])
            if key in self._dict:
                self._used.add(key)
                target = self._dict[key]
                if target is None:
                    return None, True
                return join_path(target, *parts[n:]), True
        return path, False

    def unused_keys(self) -> List[str]:
        return [self._spelling[k] for k in self._dict if k not in self._used]


class _Plan:
    """The entries of one link pair and the actions that copy its values."""

    def __init__(self, src: Optional[str], dst: Optional[str]) -> None:
        self.src = src
        self.dst = dst
        self.entries: List[CopyEntry] = []
        self.actions: List[Optional[Callable[[], None]]] = []
        self.prepare: List[Callable[[], None]] = []

    def add(self, name: str, kind: str, action=None, code: str = '',
            reason: str = '', src_shape=None, dst_shape=None) -> None:
        status = COPIED if action is not None else SKIPPED
        self.entries.append(CopyEntry(self.src, self.dst, name, kind, status,
                                      reason, code, src_shape, dst_shape))
        self.actions.append(action)

    def skip_all(self, names_kinds, code: str, reason: str) -> None:
        for name, kind in names_kinds:
            self.add(name, kind, code=code, reason=reason)

    def hold_back_if_blocked(self) -> None:
        blocking = [e.name for e in self.entries if e.code in _BLOCKING]
        if not blocking:
            return
        reason = 'held back ({} not copyable)'.format(', '.join(blocking))
        for i, e in enumerate(self.entries):
            if e.status == COPIED:
                self.entries[i] = e._replace(status=SKIPPED, code=HELD_BACK,
                                             reason=reason)
                self.actions[i] = None
        self.prepare = []

    def run(self) -> None:
        for step in self.prepare:
            step()
        for action in self.actions:
            if action is not None:
                action()


def _shape_of(value: Any) -> Optional[Tuple[int, ...]]:
    return tuple(value.shape) if _is_array(value) else None


def _related(slink: chainer.Link, dlink: chainer.Link) -> bool:
    """Whether the two links' values pair: one's class derives from the
    other's, or both are of one of :data:`_SAME_KINDS`."""
    if isinstance(dlink, type(slink)) or isinstance(slink, type(dlink)):
        return True
    return any(isinstance(slink, kind) and isinstance(dlink, kind)
               for kind in _SAME_KINDS)


def _plan_pair(slink: chainer.Link, dlink: chainer.Link, plan: _Plan) -> None:
    svals = _own_values(slink)
    dvals = _own_values(dlink)
    names = list(svals) + [n for n in dvals if n not in svals]
    if not _related(slink, dlink):
        reason = 'type mismatch: {} in src, {} in dst'.format(
            type(slink).__name__, type(dlink).__name__)
        plan.skip_all([(n, (svals.get(n) or dvals[n])[0]) for n in names],
                      TYPE_MISMATCH, reason)
        return

    planned: Dict[str, Shape] = {}
    # A BatchNormalization built without a size gets its statistics and
    # gamma/beta shape at the first call; the source's statistics say it.
    if (isinstance(dlink, L.BatchNormalization) and dlink.avg_mean is None
            and _is_array(getattr(slink, 'avg_mean', None))):
        shape = tuple(slink.avg_mean.shape)
        plan.prepare.append(lambda: dlink._initialize_params(shape))
        for n in ('avg_mean', 'avg_var', 'gamma', 'beta'):
            if n in dvals:
                planned[n] = shape

    for name in names:
        if name not in dvals:
            _add_one_side(plan, name, *svals[name], MISSING_IN_DST,
                          'missing in dst', 'src')
            continue
        if name not in svals:
            _add_one_side(plan, name, *dvals[name], MISSING_IN_SRC,
                          'missing in src', 'dst')
            continue
        skind, svalue = svals[name]
        dkind, dvalue = dvals[name]
        if skind != dkind:
            plan.add(name, skind, code=TYPE_MISMATCH,
                     reason='type mismatch: {} in src, {} in dst'.format(
                         _KIND_WORDS[skind], _KIND_WORDS[dkind]))
        elif skind == _PARAM:
            _plan_param(plan, dlink, name, svalue, dvalue, planned)
        else:
            _plan_persistent(plan, slink, dlink, name, svalue, dvalue,
                             planned)
    plan.hold_back_if_blocked()


_KIND_WORDS = {_PARAM: 'parameter', _PERSISTENT: 'persistent'}


def _plan_param(plan: _Plan, dlink: chainer.Link, name: str,
                sparam: chainer.Parameter, dparam: chainer.Parameter,
                planned: Dict[str, Shape]) -> None:
    sarray, darray = sparam.array, dparam.array
    if sarray is None:
        if darray is None:
            plan.add(name, _PARAM, code=UNINITIALIZED_IN_BOTH,
                     reason='uninitialized in both')
        else:
            plan.add(name, _PARAM, code=UNINITIALIZED_IN_SRC,
                     reason='uninitialized in src',
                     dst_shape=tuple(darray.shape))
        return
    sshape = tuple(sarray.shape)
    if darray is None:
        declared = _declared_shape(dlink, name, planned)
        if declared is None:
            plan.add(name, _PARAM, code=UNINITIALIZED_IN_DST,
                     reason='uninitialized in dst, shape unknown',
                     src_shape=sshape)
        elif not _fits(sshape, declared):
            plan.add(name, _PARAM, code=SHAPE_MISMATCH,
                     reason='shape {} != {} (declared by uninitialized '
                            'dst)'.format(_format_shape(sshape),
                                          _format_shape(declared)),
                     src_shape=sshape, dst_shape=declared)
        else:
            # Only the first initialization: a planned BatchNormalization
            # creates gamma/beta itself.
            init_shape = None if name in planned else sshape
            planned.setdefault(name, sshape)
            plan.add(name, _PARAM,
                     lambda: _copy_param(sparam, dparam, init_shape),
                     src_shape=sshape, dst_shape=sshape)
        return
    dshape = tuple(darray.shape)
    if sshape != dshape:
        plan.add(name, _PARAM, code=SHAPE_MISMATCH,
                 reason='shape {} != {}'.format(_format_shape(sshape),
                                                _format_shape(dshape)),
                 src_shape=sshape, dst_shape=dshape)
        return
    plan.add(name, _PARAM, lambda: _copy_param(sparam, dparam, None),
             src_shape=sshape, dst_shape=dshape)


def _plan_persistent(plan: _Plan, slink: chainer.Link, dlink: chainer.Link,
                     name: str, svalue: Any, dvalue: Any,
                     planned: Dict[str, Shape]) -> None:
    sshape = _shape_of(svalue)
    if dvalue is None and name in planned:
        dshape: Optional[Shape] = planned[name]
    else:
        dshape = _shape_of(dvalue)

    def add(action=None, code='', reason=''):
        plan.add(name, _PERSISTENT, action, code, reason, sshape, dshape)

    if svalue is None and dvalue is None:
        add(code=UNINITIALIZED_IN_BOTH, reason='uninitialized in both')
    elif svalue is None:
        add(code=UNINITIALIZED_IN_SRC, reason='uninitialized in src')
    elif _is_array(svalue):
        if dshape is None and dvalue is None:
            add(code=UNINITIALIZED_IN_DST,
                reason='uninitialized in dst, shape unknown')
        elif dshape is None:
            add(code=TYPE_MISMATCH, reason='type mismatch: array in src, {} '
                'in dst'.format(_describe(dvalue)))
        elif sshape != dshape:
            add(code=SHAPE_MISMATCH, reason='shape {} != {}'.format(
                _format_shape(sshape), _format_shape(dshape)))
        else:
            add(lambda: _copy_persistent(slink, dlink, name))
    elif _is_scalar(svalue):
        if _is_scalar(dvalue) or dvalue is None:
            add(lambda: _copy_persistent(slink, dlink, name))
        else:
            add(code=TYPE_MISMATCH, reason='type mismatch: {} in src, {} in '
                'dst'.format(_describe(svalue), _describe(dvalue)))
    else:
        add(code=UNSUPPORTED, reason='not an array or scalar ({})'.format(
            _describe(svalue)))


def _add_one_side(plan: _Plan, name: str, kind: str, value: Any, code: str,
                  reason: str, side: str) -> None:
    shape = _shape_of(value.array if kind == _PARAM else value)
    plan.add(name, kind, code=code, reason=reason,
             src_shape=shape if side == 'src' else None,
             dst_shape=shape if side == 'dst' else None)


def _plan_one_side(link: chainer.Link, plan: _Plan, code: str,
                   reason: str, side: str) -> None:
    for name, (kind, value) in _own_values(link).items():
        _add_one_side(plan, name, kind, value, code, reason, side)


def copy_model(src: chainer.Link, dst: chainer.Link,
               mapping: PathMapping = None,
               strict: bool = False) -> CopyReport:
    """Copies the parameters and persistent values ``src`` and ``dst`` share.

    Links are paired by their path relative to each root (``conv1``,
    ``features/conv1``, ``layers/0``), values within a pair by name and
    shape: parameters, and persistent values that are arrays or scalars
    (BatchNormalization's ``avg_mean``, ``avg_var``, ``N``). Arrays are
    written into ``dst``'s own (its device, its dtype), never shared. Links
    of unrelated types are not paired (Chainer's and ChainerMN's
    BatchNormalization count as one type), and a pair is copied whole or not at
    all: when a value both have cannot be copied, the pair's other values
    are *held back*. Uninitialized parameters of ``dst`` (``L.Linear(None,
    10)``) are created from the source's shape where it agrees with the
    shape the link declares, and skipped otherwise. The rules in full:
    :doc:`copy_model`.

    Args:
        src (~chainer.Link): The pretrained model (a
            :class:`~chainer_finetune.CaffeNet`, any Chain). Not modified.
        dst (~chainer.Link): The model to fill.
        mapping (dict or callable): Renames source link paths to
            destination link paths; ``None`` as a value drops the link (and
            the destination link of the same path, which is then reported as
            dropped rather than missing). A dict key also renames the links
            under it (``{'features': 'body'}`` sends ``features/conv1`` to
            ``body/conv1``); paths it does not cover keep their names. When
            ``src`` is a CaffeNet, keys may be Caffe layer names
            (``'conv1/7x7_s2'`` for the link ``conv1_7x7_s2``), and values
            may be Caffe names when ``dst`` is one. A callable receives each
            source link path (link names, not Caffe names) and returns the
            destination path or ``None``. A destination named by the
            mapping goes to that source link rather than to the one of the
            same path.
        strict (bool): Raise :class:`CopyMismatchError` listing every
            mismatch (:attr:`CopyReport.mismatches`: any value skipped
            other than by the mapping's ``None`` or held back by another
            value of its link; and any mapping key that names no link)
            instead of copying anything.

    Returns:
        CopyReport: An entry per value of either model, copied or skipped
        with the reason. The same lines are logged at INFO (``Copy conv1``,
        ``Ignore fc8: W shape (1000, 4096) != (10, 4096)``).

    Raises:
        CopyMismatchError: With ``strict=True``, when anything does not
            match; ``dst`` is then unchanged.
        TypeError: If ``src`` or ``dst`` is not a Link, or ``mapping`` is
            neither a dict nor a callable.

    .. admonition:: Example

        >>> report = copy_model(net, model, mapping={'fc8': None})
        >>> report.copied_links
        ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7']

    """
    for what, model in (('src', src), ('dst', dst)):
        if not isinstance(model, chainer.Link):
            raise TypeError('{} must be a chainer.Link, got {}'.format(
                what, type(model).__name__))
    mapper = _Mapper(mapping, src, dst)
    dst_links = dict(_links_with_values(dst))

    # Where each source link goes (None: dropped by the mapping).
    routes = [(path, link) + mapper(path)
              for path, link in _links_with_values(src)]
    # Who fills each dst link: what the mapping names first, then links
    # that keep their path ({'conv1': 'conv2'} beats conv2 itself).
    owner: Dict[str, str] = {}
    for explicit_pass in (True, False):
        for path, _, target, explicit in routes:
            if (explicit == explicit_pass and target in dst_links and
                    target not in owner):
                owner[target] = path
    # A dst link of the same path as a dropped one, that nothing fills, is
    # dropped along with it: {'fc8': None} means "not fc8".
    twins = {path for path, _, target, _ in routes
             if target is None and path in dst_links and path not in owner}

    plans: List[_Plan] = []
    for path, slink, target, _ in routes:
        twin = target is None and path in twins
        plan = _Plan(path, path if twin else target)
        plans.append(plan)
        if twin:
            names = dict((n, k) for n, (k, _) in
                         _own_values(dst_links[path]).items())
            names.update((n, k) for n, (k, _) in _own_values(slink).items())
            plan.skip_all(names.items(), DROPPED, 'dropped by mapping')
        elif target is None:
            _plan_one_side(slink, plan, DROPPED, 'dropped by mapping', 'src')
        elif owner.get(target) == path:
            _plan_pair(slink, dst_links[target], plan)
        elif target in dst_links:
            _plan_one_side(slink, plan, DUPLICATE,
                           'dst {} already filled from {}'.format(
                               _label(target), _label(owner[target])),
                           'src')
        else:
            _plan_one_side(slink, plan, MISSING_IN_DST, 'missing in dst',
                           'src')
    for path, dlink in dst_links.items():
        if path not in owner and path not in twins:
            plan = _Plan(None, path)
            _plan_one_side(dlink, plan, MISSING_IN_SRC, 'missing in src',
                           'dst')
            plans.append(plan)

    report = CopyReport([e for plan in plans for e in plan.entries],
                        mapper.unused_keys())
    if strict and (report.mismatches or report.unused_mapping_keys):
        lines = ['{}: {}'.format(e.src_path or e.dst_path, e.reason)
                 if e.src is None or e.dst is None or e.src == e.dst
                 else '{} -> {}: {}'.format(e.src_path, e.dst_path, e.reason)
                 for e in report.mismatches]
        lines += ['mapping key {!r}: no such link in src'.format(k)
                  for k in report.unused_mapping_keys]
        raise CopyMismatchError(
            'copy_model(strict=True): {} mismatch(es), nothing copied:\n  '
            '{}'.format(len(lines), '\n  '.join(lines)), report)

    for plan in plans:
        plan.run()
    for line in report.messages():
        logger.info(line)
    for key in report.unused_mapping_keys:   # most likely a typo
        logger.warning('copy_model: mapping key %r names no link of src',
                       key)
    logger.info('copy_model: %s', report.summary())
    return report
