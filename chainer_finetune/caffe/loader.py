"""``load_caffe``: a Caffe model file becomes a Chainer ``CaffeFunction``."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Callable, Iterator, Optional, Sequence, TextIO, Union

import numpy

from chainer_finetune.caffe import weight_files
from chainer_finetune.caffe import reader
from chainer_finetune.caffe import upgrade
from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.caffe.net import select_layers
from chainer_finetune.errors import CaffeModelError

logger = logging.getLogger(__name__)

PathLike = Union[str, 'os.PathLike[str]']
ProgressArg = Union[None, bool, Callable[[int, int], None]]

#: With ``progress=None``, files this large show a progress line on a TTY.
PROGRESS_MIN_BYTES = 64 << 20


def _large_on_a_terminal(path: PathLike) -> bool:
    try:
        return (os.path.getsize(path) >= PROGRESS_MIN_BYTES and
                sys.stderr is not None and sys.stderr.isatty())
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _progress(progress: ProgressArg, path: PathLike
              ) -> Iterator[Optional[Callable[[int, int], None]]]:
    """The reader's progress callback for ``progress``, closed on exit."""
    if callable(progress) or progress is False or (
            progress is None and not _large_on_a_terminal(path)):
        yield progress if callable(progress) else None
        return
    label = 'reading ' + os.path.basename(os.fspath(path))
    try:
        import tqdm   # optional: used when installed, never required
    except ImportError:
        display = _ProgressLine(label, sys.stderr)
    else:
        display = _TqdmProgress(tqdm, label)
    try:
        yield display
    finally:
        display.close()


class _ProgressLine:
    """A one-line progress display on a terminal (``\\r``-rewritten)."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.start = time.perf_counter()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        percent = 100 * done // total if total else 100
        self.stream.write('\r{}: {:3d}% ({:.0f}/{:.0f} MB, {:.1f} s)'.format(
            self.label, percent, done / 1e6, total / 1e6, now - self.start))
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write('\n')
            self.stream.flush()


class _TqdmProgress:
    def __init__(self, tqdm, label: str) -> None:
        self.bar = None
        self.tqdm = tqdm
        self.label = label

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = self.tqdm.tqdm(total=total, unit='B', unit_scale=True,
                                      desc=self.label, leave=False,
                                      file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load(model: Optional[PathLike], prototxt: Optional[PathLike],
          weights: Optional[PathLike], stop_at, progress: ProgressArg
          ) -> CaffeNet:
    if model is None and weights is None:
        raise CaffeModelError('a caffemodel is needed for the weights (or, '
                              'as weights=, a file written by '
                              'save_weights)')
    start = time.perf_counter()
    text = None if prototxt is None else reader.read_prototxt(prototxt)
    stored = None
    if weights is not None:
        with _progress(progress, weights) as callback:
            stored = weight_files.read_weights(weights, callback)
        binary = weight_files.model_file(stored, with_structure=text is None)
    else:
        fmt = weight_files.weights_format(model)
        if fmt is not None:
            raise CaffeModelError(
                '{}: is {} (a file written by save_weights?), not a '
                'caffemodel; pass it as weights='.format(
                    os.fspath(model), {'h5': 'HDF5', 'npz': 'NPZ'}[fmt]))
        with _progress(progress, model) as callback:
            binary = reader.read_caffemodel(model, progress=callback)
    description = upgrade.describe(
        binary, text, None if prototxt is None else os.fspath(prototxt))
    net = CaffeNet(select_layers(description, stop_at))
    if stored is not None:
        weight_files.apply_extras(net, stored)
    logger.info('loaded %s: %d layers, %d parameters in %.2f s',
                description.source, len(net.layers),
                sum(p.size for p in net.params()),
                time.perf_counter() - start)
    return net


def load_caffe(model: Optional[PathLike] = None,
               prototxt: Optional[PathLike] = None, *,
               stop_at: Union[str, Sequence[str], None] = None,
               weights: Optional[PathLike] = None,
               cache: bool = False,
               progress: ProgressArg = None) -> CaffeNet:
    """Loads a Caffe model as a Chainer ``CaffeFunction``.

    Args:
        model: Path of a binary ``.caffemodel`` (V1 ``layers`` or V2
            ``layer`` format).
        prototxt: Optional ``deploy.prototxt`` (text, V1 or V2): the
            structure then comes from it and the weights from ``model`` by
            layer name; without it, the caffemodel's structure is used.
        stop_at: A layer name, or a list of layer/blob names: only the
            layers needed to compute them are built (so a backbone loads
            even when the head has unsupported layers).
        weights: Instead of ``model``: an ``.h5`` or ``.npz`` file written
            by :func:`~chainer_finetune.save_weights` (no pickle involved).
            Its weights are matched to ``prototxt`` by layer name, or to
            the structure stored in the file when no prototxt is given.
        cache: Keep the converted net in the per-user cache and load it
            from there next time (:doc:`/cache_export`).
        progress: ``None`` (default) shows a progress line on stderr while
            reading a large file (>= 64 MB) when stderr is a terminal;
            ``True`` always, ``False`` never; a callable gets
            ``(bytes_done, bytes_total)`` instead.

    Returns:
        CaffeNet: A :class:`chainer.links.caffe.CaffeFunction` subclass;
        call it as ``net(inputs={'data': x}, outputs=['prob'])``.

    Raises:
        CaffeModelError: unreadable files, missing or mis-shaped weights.
        UnsupportedLayerError: a layer type (or option) without a faithful
            conversion among the layers needed.
    """
    if model is not None and weights is not None:
        raise ValueError('pass either model (a caffemodel) or weights (a '
                         'file written by save_weights), not both')
    if not cache:
        return _load(model, prototxt, weights, stop_at, progress)
    from chainer_finetune.caffe import cache as net_cache
    inputs = [('model', model), ('prototxt', prototxt), ('weights', weights)]
    source = ' + '.join(os.fspath(p) for _, p in inputs if p is not None)
    options = {'stop_at': stop_at if stop_at is None or
               isinstance(stop_at, str) else list(stop_at)}
    return net_cache.cached(
        inputs, options,
        lambda: _load(model, prototxt, weights, stop_at, progress),
        source or '(no files)')


def load_mean(path: PathLike) -> numpy.ndarray:
    """Reads a Caffe mean file (``mean.binaryproto``).

    Returns:
        numpy.ndarray: The mean as float32, shaped ``(C, H, W)`` (the
        stored leading batch axis of 1 is dropped).

    Raises:
        CaffeModelError: if the file is not a readable BlobProto.
    """
    blob = reader.read_binaryproto(path)
    array = blob.array
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise CaffeModelError(
                '{}: holds {} mean images, expected 1'.format(
                    os.fspath(path), array.shape[0]))
        array = array[0]
    return array
