"""BatchNorm and Scale folded into the convolution before them.

In inference (stored statistics, no update) Caffe's BatchNorm is the
per-channel affine map ``(x - mean) / sqrt(var + eps)`` and Scale is
``x * gamma + beta``; both fold exactly into the convolution's weights and
bias (OpenCV's dnn fuses them the same way). The folded arrays are kept in a
:class:`FoldCache` next to a copy of the arrays they were computed from and
are served only while those are unchanged, compared element by element, so
an optimizer step, ``copy_model``, ``serializers.load_npz`` or an in-place
edit is never answered with stale weights. The net's parameters themselves
are never touched.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from chainer import backend
import numpy


class Affine(NamedTuple):
    """A per-channel map ``y = x * scale + shift`` (arrays of shape (C,))."""

    scale: Any
    shift: Any


def batch_norm_affine(mean: Any, var: Any, eps: float) -> Affine:
    """BatchNorm with stored statistics as an :class:`Affine` map.

    Computed in float64 and rounded once to float32.
    """
    xp = backend.get_array_module(mean)
    scale = 1.0 / xp.sqrt(var.astype(numpy.float64) + eps)
    shift = -mean.astype(numpy.float64) * scale
    return Affine(scale, shift)


def then(first: Affine, gamma: Any, beta: Optional[Any]) -> Affine:
    """``first`` followed by ``x * gamma (+ beta)`` (a Scale layer)."""
    gamma = gamma.astype(numpy.float64)
    shift = first.shift * gamma
    if beta is not None:
        shift = shift + beta.astype(numpy.float64)
    return Affine(first.scale * gamma, shift)


def as_float32(affine: Affine) -> Affine:
    """The map with float32 arrays."""
    return Affine(affine.scale.astype(numpy.float32),
                  affine.shift.astype(numpy.float32))


def fold_into_convolution(W: Any, b: Optional[Any], affine: Affine
                          ) -> Tuple[Any, Any]:
    """Weights and bias of ``affine(convolution(x, W, b))`` as one
    convolution (``W``: (out, in / groups, kh, kw)); float32."""
    scale = affine.scale
    W_folded = W.astype(numpy.float64) * scale.reshape((-1,) + (1,) *
                                                        (W.ndim - 1))
    bias = affine.shift if b is None else \
        b.astype(numpy.float64) * scale + affine.shift
    return W_folded.astype(numpy.float32), bias.astype(numpy.float32)


class _Entry(NamedTuple):
    sources: Tuple[Any, ...]
    settings: Tuple[Any, ...]
    folded: Tuple[Any, ...]


def _same(saved: Any, current: Any) -> bool:
    if saved is None or current is None:
        return saved is current
    if saved.shape != current.shape or saved.dtype != current.dtype:
        return False
    if backend.get_array_module(saved) is not \
            backend.get_array_module(current):
        return False
    xp = backend.get_array_module(current)
    return bool(xp.array_equal(saved, current))


class FoldCache:
    """Folded arrays by key, each valid while its sources are unchanged.

    An entry is served when its settings (eps and the like) are equal and
    every source array has the same shape, dtype, device and values as
    when the entry was made; otherwise it is computed again. The check
    reads each source array once (no Python-level bookkeeping of who may
    have written to it can be bypassed by an in-place write).
    """

    def __init__(self) -> None:
        self._entries: Dict[str, _Entry] = {}
        #: How many entries were computed (for tests and benchmarks).
        self.computed = 0

    def get(self, key: str, sources: Sequence[Any],
            settings: Tuple[Any, ...], compute) -> Tuple[Any, ...]:
        """The folded arrays of ``key``: ``compute()``'s result, cached.

        Args:
            key: The entry's name (a layer name).
            sources: The arrays the result is computed from (None allowed).
            settings: Other values it depends on (compared with ``==``).
            compute: Called without arguments when the entry is missing or
                stale; returns a tuple of arrays.
        """
        entry = self._entries.get(key)
        if entry is not None and entry.settings == settings and \
                len(entry.sources) == len(sources) and all(
                    _same(s, c) for s, c in zip(entry.sources, sources)):
            return entry.folded
        folded = tuple(compute())
        saved = tuple(None if s is None else s.copy() for s in sources)
        self._entries[key] = _Entry(saved, settings, folded)
        self.computed += 1
        return folded

    def clear(self) -> None:
        """Drops every entry."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
