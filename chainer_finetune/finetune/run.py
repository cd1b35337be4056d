"""Running the job: one training run (:func:`train_one`) and the whole
job (:func:`run_finetune`: the pretrained run, the optional from-scratch
run, the plot and the report)."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, List, Optional

import chainer
from chainer import training
from chainer.training import extensions
import chainer.links as L
import numpy

from chainer_finetune.copy import CopyReport
from chainer_finetune.errors import FinetuneError
from chainer_finetune.finetune.config import check_output_dir
from chainer_finetune.finetune.config import PLOT_FILE
from chainer_finetune.finetune.config import REPORT_FILE
from chainer_finetune.finetune.config import RUN_NAMES
from chainer_finetune.finetune.config import FinetuneConfig
from chainer_finetune.finetune import feature_cache
from chainer_finetune.finetune.datasets import load_split
from chainer_finetune.finetune.datasets import make_iterator
from chainer_finetune.finetune.datasets import transformed
from chainer_finetune.finetune.model import build_classifier
from chainer_finetune.finetune.model import CaffeClassifier
from chainer_finetune.finetune.report import plot_accuracy
from chainer_finetune.finetune.report import write_report
from chainer_finetune.finetune.report import FinetuneResult
from chainer_finetune.finetune.report import RunResult
from chainer_finetune.finetune.config import ModelSource
from chainer_finetune.finetune.config import resolve_source
from chainer_finetune.freeze import freeze
from chainer_finetune.freeze import frozen_paths
from chainer_finetune.freeze import unfreeze
from chainer_finetune.lr_mult import lr_mults_from_prototxt
from chainer_finetune.lr_mult import set_lr_mult
from chainer_finetune.training.extensions import GradualUnfreeze

logger = logging.getLogger(__name__)


def _freeze(model: CaffeClassifier, config: FinetuneConfig) -> List[str]:
    if not config.freeze:
        return []
    freeze(model.backbone, config.freeze)
    if model.replaced_layer is not None:
        # The replaced classifier is new: never frozen by a catch-all.
        unfreeze(model.backbone, [model.replaced_layer])
    return frozen_paths(model.backbone)


def _apply_lr_mults(model: CaffeClassifier, source: ModelSource) -> None:
    """The prototxt's lr_mult/decay_mult on the backbone's update rules."""
    if source.prototxt is None:
        raise FinetuneError('--lr-mult-from-prototxt needs a prototxt')
    mults = lr_mults_from_prototxt(source.prototxt)
    known = {k: v for k, v in mults.items()
             if k in model.backbone.link_names}
    set_lr_mult(model.backbone, known)


def _extend(trainer: training.Trainer, name: str, model: CaffeClassifier,
            classifier: L.Classifier, test_iter: Any,
            device: chainer.backend.Device) -> None:
    """Evaluation, logs, the best model's snapshot, plots and progress."""
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


def train_one(config: FinetuneConfig, name: str, model: CaffeClassifier,
              report: Optional[CopyReport], train: Any, test: Any, *,
              pretrained: bool, source: Optional[ModelSource] = None
              ) -> RunResult:
    """Trains one classifier with Chainer's Trainer; returns what it did.

    Args:
        config: The job's configuration.
        name: The run's name: its directory under ``config.out`` and its
            label in logs and the report.
        model: The network (:func:`build_classifier`).
        report: What was copied from the Caffe model, or None.
        train: The training dataset.
        test: The held-out dataset.
        pretrained: The run starts from the Caffe model: ``config.freeze``,
            ``unfreeze_at`` and ``lr_mult_from_prototxt`` apply (a run
            from scratch trains everything alike).
        source: The located model (for the prototxt's lr_mult); None
            locates it from ``config`` when it is needed.
    """
    out = os.path.join(config.out, name)
    os.makedirs(out, exist_ok=True)
    device = chainer.get_device(config.device)
    device.use()
    classifier = L.Classifier(model)
    frozen = _freeze(model, config) if pretrained else []
    # The lazily sized head is initialized on a first batch, so that the
    # optimizer sees every parameter.
    x0, _ = chainer.dataset.concat_examples([train[0]])
    with chainer.using_config('train', False), \
            chainer.no_backprop_mode():
        model(x0)
    classifier.to_device(device)
    cache = feature_cache.prepare(config, name, model, train, test, out,
                                  device, pretrained)
    if cache is not None:
        # The head trains on the frozen backbone's features, computed once.
        classifier = L.Classifier(cache.predictor)
        train, test = cache.train, cache.test
    optimizer = chainer.optimizers.Adam(alpha=config.lr,
                                        weight_decay_rate=config.weight_decay)
    optimizer.setup(classifier)
    if pretrained and config.lr_mult_from_prototxt:
        _apply_lr_mults(model, source or resolve_source(config))
    train_iter = make_iterator(train, config.batchsize, True,
                               config.loaderjob, config.seed)
    test_iter = make_iterator(test, max(config.batchsize, 50), False,
                              config.loaderjob, config.seed)
    updater = training.updaters.StandardUpdater(train_iter, optimizer,
                                                device=device)
    trainer = training.Trainer(updater, (config.epochs, 'epoch'), out=out)
    if pretrained and config.unfreeze_at is not None and frozen:
        trainer.extend(GradualUnfreeze(
            model.backbone, {config.unfreeze_at: config.unfreeze or
                             config.freeze}))
    _extend(trainer, name, model, classifier, test_iter, device)
    logger.info('%s: training %d epochs of %d images (batch %d) on %s',
                name, config.epochs, len(train), config.batchsize, device)
    start = time.perf_counter()
    # An error in the loop (a DataError from a file that changed since the
    # check) is raised as it is, without Chainer's 40-line dump before it.
    try:
        trainer.run(show_loop_exception_msg=False)
    finally:
        if cache is not None:
            cache.close()
    seconds = time.perf_counter() - start
    log = trainer.get_extension('LogReport').log
    accuracies = [float(e['validation/main/accuracy']) for e in log]
    elapsed = [float(e['elapsed_time']) for e in log]
    epoch_seconds = [b - a for a, b in zip([0.0] + elapsed[:-1], elapsed)]
    best = int(numpy.argmax(accuracies))
    return RunResult(name=name, log=log, accuracy=accuracies[-1],
                     best_accuracy=accuracies[best],
                     best_epoch=int(log[best]['epoch']), seconds=seconds,
                     epoch_seconds=epoch_seconds, copy_report=report,
                     frozen=frozen, out=out, pretrained=pretrained)


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


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    """Runs the fine-tuning job described by ``config``.

    The model is located once (a known model fetched by name, see
    :func:`~chainer_finetune.finetune.resolve_source`) and that
    :class:`~chainer_finetune.finetune.ModelSource` serves every run and
    the report.

    Returns:
        FinetuneResult: The runs, the report's and plot's paths and the
        summary line.

    Raises:
        FinetuneError: ``config.out`` holds an earlier run's results and
            ``config.overwrite`` is not set (checked first).
        ChainerFinetuneError: unusable model, data or configuration.
    """
    total_start = time.perf_counter()
    check_output_dir(config)
    os.makedirs(config.out, exist_ok=True)
    images, train_set, test_set = load_split(config)
    n_class = config.n_class or len(images.class_names)
    if int(images.labels.max()) >= n_class:
        raise FinetuneError('the data has labels up to {} but n_class is {}'
                            .format(int(images.labels.max()), n_class))
    logger.info('data %s: %d classes, %d training and %d held-out images',
                config.data, n_class, len(train_set), len(test_set))
    source = resolve_source(config)
    runs = []
    for pretrained in [True] + ([False] if config.compare_scratch else []):
        name = RUN_NAMES[0] if pretrained else RUN_NAMES[1]
        model, report = build_classifier(config, n_class, pretrained, source)
        if report is not None:
            logger.info('copied %d values into %d links; skipped %d',
                        len(report.copied), len(report.copied_links),
                        len(report.skipped))
        train, test = transformed(config, train_set, test_set, source)
        runs.append(train_one(config, name, model, report, train, test,
                              pretrained=pretrained, source=source))
    summary = ' '.join('{}: {:.3f}'.format(r.name, r.accuracy)
                       for r in runs)
    plot_path = plot_accuracy(runs, os.path.join(config.out, PLOT_FILE))
    report_path = os.path.join(config.out, REPORT_FILE)
    with open(report_path, 'w', encoding='utf-8') as f:
        f.write(write_report(config, source, train_set, test_set, n_class,
                             runs, plot_path, summary,
                             time.perf_counter() - total_start))
    return FinetuneResult(runs=runs, report_path=report_path,
                          plot_path=plot_path, summary=summary)
