""":func:`export_caffe`: a model to ``OUT.prototxt`` + ``OUT.caffemodel``.

Three kinds of model, each written its own way (one module each):

* a :class:`~chainer_finetune.CaffeNet` (from ``load_caffe``): its layer
  descriptions and current weights (:mod:`chainer_finetune.export.caffe_net`);
* the ``finetune`` job's :class:`~chainer_finetune.finetune.CaffeClassifier`:
  the backbone so, then its head as Caffe layers
  (:mod:`chainer_finetune.export.classifier`);
* any other Chain: traced from a forward pass
  (:mod:`chainer_finetune.export.trace`).

The files are V2 (``layer``) with an ``Input`` layer of batch 1; Caffe,
OpenCV's ``readNetFromCaffe`` and :func:`~chainer_finetune.load_caffe` run
them at any batch. Guide: :doc:`/deploy`.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple, Optional

import chainer

from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.errors import ExportError
from chainer_finetune.export.caffe_net import InputShapes
from chainer_finetune.export.caffe_net import caffe_net_writer
from chainer_finetune.export.classifier import classifier_writer
from chainer_finetune.export.trace import trace_writer
from chainer_finetune.files import PathLike, ensure_absent
from chainer_finetune.finetune.model import CaffeClassifier

logger = logging.getLogger(__name__)


class CaffeFiles(NamedTuple):
    """The files :func:`export_caffe` wrote.

    Attributes:
        prototxt: The deploy net description.
        caffemodel: The weights (with the same layer descriptions).
        writer: The net as written (layer descriptions and blobs).
    """

    prototxt: str
    caffemodel: str
    writer: NetWriter


def caffe_writer(model: chainer.Link, input_shape: InputShapes = None
                 ) -> NetWriter:
    """The deploy net of ``model``, not yet written (see
    :func:`export_caffe` for the arguments)."""
    if isinstance(model, CaffeNet):
        return caffe_net_writer(model, input_shape)
    if isinstance(model, CaffeClassifier):
        return classifier_writer(model, input_shape)
    if not isinstance(model, chainer.Link):
        raise ExportError('cannot export a {}: give a CaffeNet, a '
                          'CaffeClassifier or a chainer.Link'.format(
                              type(model).__name__))
    if input_shape is None or isinstance(input_shape, dict):
        raise ExportError('exporting a {} traces a forward pass: give its '
                          'input_shape, (N, C, H, W)'.format(
                              type(model).__name__))
    return trace_writer(model, input_shape)


def warn_opencv_differences(writer: NetWriter) -> None:
    """Warns of layers that OpenCV's Caffe importer computes differently:
    LRN with ``k != 1`` (it always uses 1)."""
    for layer in writer.layers:
        if layer.type == 'LRN' and layer.lrn_param.k != 1:
            logger.warning(
                'layer %r: LRN with k=%g; OpenCV\'s Caffe importer ignores k '
                '(uses 1), so OpenCV\'s results will differ (Caffe and '
                'load_caffe use it)', layer.name, layer.lrn_param.k)


def export_caffe(model: chainer.Link, out_prefix: PathLike, *,
                 input_shape: InputShapes = None,
                 overwrite: bool = False) -> CaffeFiles:
    """Writes ``model`` as ``OUT.prototxt`` + ``OUT.caffemodel``.

    Args:
        model: A :class:`~chainer_finetune.CaffeNet` (any: cut with
            ``stop_at``, head replaced, fine-tuned), the ``finetune`` job's
            :class:`~chainer_finetune.finetune.CaffeClassifier`, or a Chain
            of the layer kinds :mod:`chainer_finetune.export.trace`
            converts (the AlexNet example's, for one).
        out_prefix: ``OUT``: the files are ``OUT.prototxt`` and
            ``OUT.caffemodel``.
        input_shape: The input's shape ``(N, C, H, W)``: needed for a
            traced Chain, and for a Caffe net that declares none (a
            training net); a mapping by input name for several. The files
            declare batch 1 and work at any batch.
        overwrite: Replace existing files.

    Returns:
        CaffeFiles: The paths written, and the net.

    Raises:
        FileExistsError: a file exists and ``overwrite`` is false (checked
            before any work).
        ExportError: what Caffe cannot express, named with its place.
        CaffeModelError: a CaffeNet link its description cannot hold.
    """
    prefix = os.fspath(out_prefix)
    paths = prefix + '.prototxt', prefix + '.caffemodel'
    if not overwrite:
        for path in paths:
            ensure_absent(path)
    writer = caffe_writer(model, input_shape)
    warn_opencv_differences(writer)
    size = writer.write_caffemodel(paths[1])
    writer.write_prototxt(paths[0])
    logger.info('wrote %s and %s: %d layers, %.1f MB', paths[0], paths[1],
                len(writer.layers), size / 1e6)
    return CaffeFiles(paths[0], paths[1], writer)


__all__ = ['CaffeFiles', 'caffe_writer', 'export_caffe',
           'warn_opencv_differences']
