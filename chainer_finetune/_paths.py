"""Finding links by path: whole components and glob patterns, never substrings.

A link's path is its name relative to the root, components joined by ``/``
(``features/conv1``; ChainList children by index, ``layers/0``). A pattern
is matched component by component (``fnmatch`` globs inside a component:
``conv*``, ``fc[67]``) against the *end* of a path, so ``conv1`` names
``conv1`` and ``features/conv1`` but never ``conv10``, ``conv1_1`` or
``conv1/bn``; a leading ``/`` anchors it at the root (``/conv1`` is only
the top-level one). On a net from :func:`chainer_finetune.load_caffe`,
Caffe layer names (``conv1/7x7_s2``) are accepted too.
"""

from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import chainer

from chainer_finetune.errors import LinkNotFoundError

Patterns = Union[str, Sequence[str]]


def link_paths(model: chainer.Link) -> List[Tuple[str, chainer.Link]]:
    """Every link under ``model`` (not itself) with its path, in order."""
    return [(path.lstrip('/'), link)
            for path, link in model.namedlinks(skipself=True)]


def _as_list(patterns: Patterns) -> List[str]:
    if isinstance(patterns, str):
        return [patterns]
    patterns = list(patterns)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError('link patterns must be strings, got {!r}'.format(
            patterns))
    return patterns


def _translate(model: chainer.Link, pattern: str) -> str:
    # A CaffeNet knows its layers' Caffe names ('conv1/7x7_s2').
    caffe_to_link = getattr(model, 'link_names', None)
    if isinstance(caffe_to_link, dict) and pattern in caffe_to_link:
        return '/' + caffe_to_link[pattern]
    return pattern


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

    Raises:
        LinkNotFoundError: if a pattern names no link (a typo would
            otherwise silently freeze or boost nothing).
    """
    paths = link_paths(model)
    matched: Dict[str, chainer.Link] = {}
    for pattern in _as_list(patterns):
        if not pattern.strip('/'):
            raise LinkNotFoundError('empty link pattern {!r}'.format(pattern))
        translated = _translate(model, pattern)
        hits = [(p, link) for p, link in paths
                if path_matches(translated, p)]
        if not hits:
            shown = ', '.join(p for p, _ in paths[:30])
            more = ' ...' if len(paths) > 30 else ''
            raise LinkNotFoundError(
                'no link matches {!r}; links: {}{}'.format(pattern, shown,
                                                           more))
        for p, link in hits:
            matched.setdefault(p, link)
    order = {p: i for i, (p, _) in enumerate(paths)}
    return sorted(matched.items(), key=lambda item: order[item[0]])


def params_under(links: Iterable[Tuple[str, chainer.Link]]
                 ) -> List[Tuple[str, chainer.Parameter]]:
    """Parameters of the links and their descendants, each once, by path."""
    seen = set()
    result = []
    for path, link in links:
        for name, param in link.namedparams():
            if id(param) not in seen:
                seen.add(id(param))
                result.append((path + name, param))
    return result
