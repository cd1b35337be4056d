"""Link paths and the patterns that name them: whole components and globs.

A link's path is its name relative to the root, components joined by ``/``
(``features/conv1``; ChainList children by index, ``layers/0``; the root
itself is ``''``). A pattern is matched component by component
(``fnmatch`` globs inside a component: ``conv*``, ``fc[67]``) against the
*end* of a path, so ``conv1`` names ``conv1`` and ``features/conv1`` but
never ``conv10``, ``conv1_1`` or ``conv1/bn``; a leading ``/`` anchors it
at the root (``/conv1`` is only the top-level one). On a net from
:func:`chainer_finetune.load_caffe`, Caffe layer names (``conv1/7x7_s2``)
are accepted too.

Every function of the library that takes link names
(:func:`~chainer_finetune.freeze`, :class:`~chainer_finetune.DelGradient`,
:func:`~chainer_finetune.set_lr_mult`,
:class:`~chainer_finetune.GradualUnfreeze`,
:func:`~chainer_finetune.copy_model`) resolves them with this module.

.. admonition:: Example

    >>> [path for path, _ in match_links(net, ['conv*', 'fc8'])]
    ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc8']
    >>> path_matches('conv1', 'features/conv1')
    True
    >>> path_matches('conv1', 'conv10')
    False
"""

from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import chainer

from chainer_finetune.errors import LinkNotFoundError

#: One link pattern or a sequence of them.
Patterns = Union[str, Sequence[str]]

# Paths listed in the message of a pattern that names no link.
_SHOWN_PATHS = 30


def as_list(patterns: Patterns) -> List[str]:
    """The patterns as a list: a single string becomes a one-item list.

    Raises:
        TypeError: if an item is not a string.
    """
    if isinstance(patterns, str):
        return [patterns]
    patterns = list(patterns)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError('link patterns must be strings, got {!r}'.format(
            patterns))
    return patterns


def join_path(*parts: str) -> str:
    """Joins path components, dropping empty ones (``''`` is the root)."""
    return '/'.join(p.strip('/') for p in parts if p.strip('/'))


def link_paths(model: chainer.Link, include_root: bool = False
               ) -> List[Tuple[str, chainer.Link]]:
    """Every link under ``model`` with its path, in ``namedlinks`` order.

    Args:
        model (~chainer.Link): The root.
        include_root (bool): List ``model`` itself first, as ``''``.
    """
    return [(path.strip('/'), link)
            for path, link in model.namedlinks(skipself=not include_root)]


def caffe_link_names(model: chainer.Link) -> Dict[str, str]:
    """Caffe layer name to link name of a CaffeNet (a new dict).

    Empty for a model that is not a
    :class:`~chainer_finetune.CaffeNet`.
    """
    names = getattr(model, 'link_names', None)
    return dict(names) if isinstance(names, dict) else {}


def path_matches(pattern: str, path: str) -> bool:
    """Whether ``pattern`` names the link at ``path`` (see module doc)."""
    anchored = pattern.startswith('/')
    want = pattern.strip('/').split('/')
    have = path.strip('/').split('/')
    if len(want) > len(have) or (anchored and len(want) != len(have)):
        return False
    tail = have[len(have) - len(want):]
    return all(fnmatch.fnmatchcase(h, w) for h, w in zip(tail, want))


def match_links(model: chainer.Link, patterns: Patterns
                ) -> List[Tuple[str, chainer.Link]]:
    """The links of ``model`` that the patterns name, in model order.

    Args:
        model (~chainer.Link): The root the paths are relative to.
        patterns (str or list of str): Link paths or glob patterns.

    Returns:
        list of (str, ~chainer.Link): Each matched link once, with its path.

    Raises:
        LinkNotFoundError: if a pattern names no link (a typo would
            otherwise silently freeze or boost nothing).
    """
    paths = link_paths(model)
    # A CaffeNet knows its layers' Caffe names ('conv1/7x7_s2').
    caffe_names = caffe_link_names(model)
    matched: Dict[str, chainer.Link] = {}
    for pattern in as_list(patterns):
        if not pattern.strip('/'):
            raise LinkNotFoundError('empty link pattern {!r}'.format(pattern))
        translated = ('/' + caffe_names[pattern] if pattern in caffe_names
                      else pattern)
        hits = [(p, link) for p, link in paths
                if path_matches(translated, p)]
        if not hits:
            shown = ', '.join(p for p, _ in paths[:_SHOWN_PATHS])
            more = ' ...' if len(paths) > _SHOWN_PATHS else ''
            raise LinkNotFoundError(
                'no link matches {!r}; links: {}{}'.format(pattern, shown,
                                                           more))
        for p, link in hits:
            matched.setdefault(p, link)
    order = {p: i for i, (p, _) in enumerate(paths)}
    return sorted(matched.items(), key=lambda item: order[item[0]])


def params_under(links: Iterable[Tuple[str, chainer.Link]]
                 ) -> List[Tuple[str, chainer.Parameter]]:
    """Parameters of the links and their descendants, each once, by path.

    Args:
        links: ``(path, link)`` pairs, e.g. from :func:`match_links`.

    Returns:
        list of (str, ~chainer.Parameter): ``path/W``-style paths.
    """
    seen = set()
    result = []
    for path, link in links:
        for name, param in link.namedparams():
            if id(param) not in seen:
                seen.add(id(param))
                result.append((path + name, param))
    return result
