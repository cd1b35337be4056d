"""The network a job trains: :class:`CaffeClassifier`, built by
:func:`build_classifier`; :func:`reinitialize` gives the from-scratch
baseline fresh weights."""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import chainer
import chainer.functions as F
import chainer.links as L
import numpy

from chainer_finetune.caffe import layers
from chainer_finetune.caffe.net import CaffeNet
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.copy import CopyReport
from chainer_finetune.copy import copy_model
from chainer_finetune.errors import FinetuneError
from chainer_finetune.finetune.config import FinetuneConfig
from chainer_finetune.finetune.config import ModelSource
from chainer_finetune.finetune.config import resolve_source
from chainer_finetune.head import replace_head


class CaffeClassifier(chainer.Chain):
    """A Caffe net with a classifier head for new classes.

    With ``n_class`` the head is global average pooling of the ``output``
    blob, a BatchNormalization and a Linear layer (``head_norm``,
    ``head``); without it the net computes the class scores itself (its
    classifier layer was replaced) and ``output`` names them.

    Args:
        backbone: The (possibly cut) Caffe net.
        input_name: Its input blob.
        output: The blob that is the feature (with ``n_class``) or the
            scores.
        n_class: Classes of a new head on ``output``; None when the net
            already ends in the scores.
        initialW: Initializer of the new Linear layer's weights.
        replaced_layer: The backbone's layer that was replaced by a new
            classifier (without ``n_class``), or None.
    """

    def __init__(self, backbone: CaffeNet, input_name: str, output: str,
                 n_class: Optional[int] = None,
                 initialW: Any = None,
                 replaced_layer: Optional[str] = None) -> None:
        super().__init__()
        self.input_name = input_name
        self.output = output
        self.has_head = n_class is not None
        self.replaced_layer = replaced_layer
        with self.init_scope():
            self.backbone = backbone
            if self.has_head:
                self.head_norm = L.BatchNormalization(axis=0)
                self.head = L.Linear(None, n_class, initialW=initialW)

    def forward(self, x: Any) -> chainer.Variable:
        h, = self.backbone(inputs={self.input_name: x},
                           outputs=[self.output])
        if not self.has_head:
            return h.reshape(h.shape[0], -1) if h.ndim > 2 else h
        if h.ndim > 2:
            h = F.mean(h, axis=tuple(range(2, h.ndim)))
        return self.head(self.head_norm(h))


def _classifier_layer(net: CaffeNet, source: ModelSource) -> Tuple[str, str]:
    """Name and top blob of the layer a new classifier replaces: the known
    model's declared one, else the net's last InnerProduct layer."""
    declared = source.declared('classifier_layer')
    for layer in reversed(net.caffe_layers):
        matches = (layer.name == declared if declared
                   else layer.type == 'InnerProduct')
        if matches:
            return layer.name, layer.top[0]
    if declared:
        raise FinetuneError('{} declares the classifier layer {!r}, which '
                            'the net does not have'.format(source.name,
                                                           declared))
    raise FinetuneError(
        'the net has no InnerProduct layer to replace; pass a feature layer '
        '(a blob name, e.g. the last pooling output) instead')


def _input_name(net: CaffeNet, source: ModelSource) -> str:
    """The image input: the known model's declared blob, else the net's one
    input."""
    declared = source.declared('input_blob')
    if declared:
        if declared not in net.inputs:
            raise FinetuneError('{} declares the input blob {!r}; the net\'s '
                                'inputs are {}'.format(
                                    source.name, declared,
                                    ', '.join(net.inputs)))
        return declared
    if len(net.inputs) != 1:
        raise FinetuneError('the net has {} inputs ({}); fine-tuning needs '
                            'one image input'.format(
                                len(net.inputs), ', '.join(net.inputs)))
    return next(iter(net.inputs))


def reinitialize(net: chainer.Link, seed: int = 0,
                 moving_average_fraction: Optional[float] = 0.9) -> None:
    """Replaces every pretrained value of ``net`` with a fresh start.

    For a from-scratch baseline with the same architecture: weights of
    convolutions and linear layers He-normal (fan in, Caffe's "msra"),
    biases 0, Scale multipliers 1, PReLU slopes 0.25, BatchNormalization
    statistics reset (mean 0, variance 1, Caffe factor 0: the first
    training batch sets them) and, on a :class:`CaffeNet`, every BatchNorm
    layer switched to batch statistics in training (a net from scratch has
    no global statistics to use) with ``moving_average_fraction`` (0.9,
    Chainer's and PyTorch's default, rather than Caffe's 0.999, which over a
    run of a few hundred steps keeps the statistics of the first, random
    steps: measured on the demo, held-out accuracy 0.13 with the stored
    statistics against 0.81 with the batch's).

    Args:
        net: The network, changed in place.
        seed: Seed of the random weights.
        moving_average_fraction: For the BatchNorm layers of a CaffeNet;
            None keeps the model file's.
    """
    rng = numpy.random.RandomState(seed)
    for _, link in sorted(net.namedlinks(skipself=False)):
        for name, param in sorted(link.namedparams(include_uninit=False)):
            if '/' in name.lstrip('/'):
                continue   # a descendant's parameter: handled there
            xp = chainer.backend.get_array_module(param.array)
            if isinstance(link, L.PReLU):
                value = numpy.full(param.shape, 0.25)
            elif param.ndim >= 2:
                fan_in = int(numpy.prod(param.shape[1:]))
                if isinstance(link, L.Deconvolution2D):
                    fan_in = int(param.shape[0] * numpy.prod(param.shape[2:]))
                value = rng.standard_normal(param.shape) * math.sqrt(
                    2.0 / max(fan_in, 1))
            elif name.endswith('/b') or 'beta' in name or 'bias' in name:
                value = numpy.zeros(param.shape)
            else:
                value = numpy.ones(param.shape)
            param.array[...] = xp.asarray(value, dtype=param.dtype)
        if isinstance(link, L.BatchNormalization):
            layers.reset_statistics(link)
    if isinstance(net, CaffeNet):
        net.set_global_stats(False)
        net.set_moving_average_fraction(moving_average_fraction)


def build_classifier(config: FinetuneConfig, n_class: int,
                     pretrained: bool, source: Optional[ModelSource] = None
                     ) -> Tuple[CaffeClassifier, Optional[CopyReport]]:
    """Builds the network of a run.

    The Caffe model is loaded (cached), up to ``config.feature_layer`` if
    given; a new head goes on that blob (global average pooling,
    BatchNormalization, Linear), else the net's classifier layer is
    replaced with one for ``n_class``
    (:func:`~chainer_finetune.replace_head`).

    Args:
        config: The job's configuration.
        n_class: Classes of the new classifier.
        pretrained: Keep the Caffe model's values (and report what was
            copied); False draws fresh ones (:func:`reinitialize`).
        source: The located model; None locates it from ``config``
            (:func:`~chainer_finetune.finetune.resolve_source`).

    Returns:
        The classifier and, for the pretrained run, the copy report.
    """
    if source is None:
        source = resolve_source(config)
    loaded = load_caffe(source.caffemodel, source.prototxt,
                        stop_at=config.feature_layer, cache=True)
    # The network trained is a separate copy: the loaded (cached) net is
    # the source of the values and is left as it was.
    backbone = loaded.copy(mode='copy')
    input_name = _input_name(backbone, source)
    rng = numpy.random.RandomState(config.seed)
    if config.feature_layer is not None:
        model = CaffeClassifier(backbone, input_name, config.feature_layer,
                                n_class, initialW=chainer.initializers.Normal(
                                    0.01, rng=rng))
    else:
        layer, top = _classifier_layer(backbone, source)
        replace_head(backbone, layer, n_class, seed=config.seed)
        model = CaffeClassifier(backbone, input_name, top,
                                replaced_layer=layer)
    if not pretrained:
        reinitialize(model.backbone, seed=config.seed)
        return model, None
    # The backbone already holds the source's values (a copy of it); the
    # copy checks every name and shape and reports what the new network
    # took from the Caffe model and what is new.
    report = copy_model(loaded, model,
                        mapping=lambda path: 'backbone/' + path
                        if path else 'backbone')
    return model, report
