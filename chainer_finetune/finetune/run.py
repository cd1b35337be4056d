"""Running the job: one training run (:func:`train_one`) and the whole
job (:func:`run_finetune`: the pretrained run, the optional from-scratch
run, the plot and the report)."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, List, Optional, Tuple

import chainer
from chainer import training
from chainer.training import extensions
import chainer.links as L
import numpy

from chainer_finetune import distributed
from chainer_finetune.copy import CopyReport
from chainer_finetune.errors import FinetuneError
from chainer_finetune.finetune.config import check_output_dir
from chainer_finetune.finetune.config import CHECKPOINT_FILE
from chainer_finetune.finetune.config import PLOT_FILE
from chainer_finetune.finetune.config import REPORT_FILE
from chainer_finetune.finetune.config import RUN_NAMES
from chainer_finetune.finetune.config import WEIGHTS_FILE
from chainer_finetune.finetune.config import FinetuneConfig
from chainer_finetune.finetune import feature_cache
from chainer_finetune.finetune.datasets import load_split
from chainer_finetune.finetune.datasets import make_iterator
from chainer_finetune.finetune.datasets import preprocessors
from chainer_finetune.finetune.datasets import transformed
from chainer_finetune.finetune.model import build_classifier
from chainer_finetune.finetune.model import CaffeClassifier
from chainer_finetune.finetune.model_file import describe_run
from chainer_finetune.finetune.model_file import write_model_file
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
from chainer_finetune.training.triggers import EpochTrigger

logger = logging.getLogger(__name__)

#: Least seconds between two redraws of the loss and accuracy plots.
PLOT_SECONDS = 5.0


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


def _save_uncompressed(path: str, target: chainer.Link) -> None:
    chainer.serializers.save_npz(path, target, compression=False)


def _extend(trainer: training.Trainer, name: str, model: CaffeClassifier,
            classifier: L.Classifier, test_iter: Any,
            device: chainer.backend.Device, last_epoch: int,
            dist: Optional[distributed.Distributed] = None) -> None:
    """Evaluation, logs, the best model's snapshot, plots and progress
    (in a distributed run, the writers on rank 0 only)."""
    trainer.extend(distributed.ShardEvaluator(
        test_iter, classifier, device, comm=dist.comm if dist else None),
        name='validation')
    if dist is not None:
        # Before the evaluator (higher priority): BatchNorm statistics kept
        # per rank are averaged, so every rank evaluates the same model.
        trainer.extend(distributed.persistent_averager(model, dist),
                       name='average_statistics', trigger=(1, 'epoch'))
        # The log shows the global batch's values, not rank 0's part.
        trainer.extend(distributed.ObservationAverager(
            ('main/loss', 'main/accuracy'), dist))
        if not dist.is_root:
            # The log (for the run's result), written nowhere.
            trainer.extend(extensions.LogReport(filename=None))
            return
    trainer.extend(extensions.LogReport())
    # Uncompressed: zlib took 0.27 s per save of the demo's model, half an
    # epoch with the feature cache, for files 7% smaller.
    trainer.extend(extensions.snapshot_object(model, WEIGHTS_FILE,
                                              savefun=_save_uncompressed),
                   trigger=training.triggers.MaxValueTrigger(
                       'validation/main/accuracy'))
    if extensions.PlotReport.available():
        # Redrawn at most every PLOT_SECONDS (0.15 s per figure) and after
        # the last epoch.
        for keys, file_name in ((['main/loss', 'validation/main/loss'],
                                 'loss.png'),
                                (['main/accuracy',
                                  'validation/main/accuracy'],
                                 'accuracy.png')):
            trainer.extend(extensions.PlotReport(
                keys, 'epoch', file_name=file_name,
                trigger=EpochTrigger(PLOT_SECONDS, last_epoch)))
    trainer.extend(extensions.PrintReport(
        ['epoch', 'main/loss', 'main/accuracy', 'validation/main/loss',
         'validation/main/accuracy', 'elapsed_time'],
        out=_ReportStream(name)))
    if sys.stderr.isatty():
        trainer.extend(extensions.ProgressBar(update_interval=1))


def _checkpoints(trainer: training.Trainer, config: FinetuneConfig,
                 name: str, model: CaffeClassifier,
                 dist: Optional[distributed.Distributed]) -> None:
    """A checkpoint every ``config.checkpoint_every`` iterations (rank 0
    writes it: the ranks hold the same state) and, with ``config.resume``,
    the state of the last one loaded on every rank."""
    path = os.path.join(config.out, name, CHECKPOINT_FILE)
    every = config.checkpoint_every
    if every:
        if dist is not None:
            # Per-rank BatchNorm statistics averaged before each
            # checkpoint, in an interrupted and an uninterrupted run alike.
            trainer.extend(distributed.persistent_averager(model, dist),
                           name='average_statistics_checkpoint',
                           trigger=(every, 'iteration'))
        if dist is None or dist.is_root:
            trainer.extend(extensions.snapshot(filename=CHECKPOINT_FILE),
                           name='checkpoint', trigger=(every, 'iteration'))
    if config.resume:
        if distributed.load_snapshot_everywhere(path, trainer, dist):
            logger.info('%s: resumed from %s at iteration %d', name, path,
                        trainer.updater.iteration)
        else:
            logger.info('%s: no %s to resume from; starting anew', name,
                        path)


def _iterators(config: FinetuneConfig, train: Any, test: Any,
               dist: Optional[distributed.Distributed]) -> Tuple[Any, Any]:
    """The training and held-out iterators; in a distributed run, this
    rank's slice of every global batch and its shard of the held-out set."""
    test_batch = max(config.batchsize, 50)
    if dist is None and config.loaderjob == 0:
        # The order of make_iterator's, with a generator state that a
        # checkpoint holds (a resumed run then shuffles alike).
        return (distributed.GlobalBatchSlice(train, config.batchsize, 0, 1,
                                             config.seed),
                make_iterator(test, test_batch, False, 0, config.seed))
    if dist is None:
        return (make_iterator(train, config.batchsize, True,
                              config.loaderjob, config.seed),
                make_iterator(test, test_batch, False, config.loaderjob,
                              config.seed))
    if config.loaderjob and dist.is_root:
        logger.warning('loaderjob %d is not used in a distributed run: each '
                       'process loads its slice itself', config.loaderjob)
    return (distributed.GlobalBatchSlice(train, config.batchsize, dist.rank,
                                         dist.size, config.seed),
            make_iterator(distributed.held_out_shard(test, dist),
                          test_batch, False, 0, config.seed))


def _feature_cache(config: FinetuneConfig, name: str,
                   model: CaffeClassifier, train: Any, test: Any, out: str,
                   device: Any, pretrained: bool,
                   dist: Optional[distributed.Distributed]):
    """The run's feature cache (:mod:`.feature_cache`), or None."""
    if dist is not None:
        if config.feature_cache in ('ram', 'disk'):
            logger.warning('%s: --feature-cache %s is off in a distributed '
                           'run (each rank computes its own slice)', name,
                           config.feature_cache)
        return None
    return feature_cache.prepare(config, name, model, train, test, out,
                                 device, pretrained)


def train_one(config: FinetuneConfig, name: str, model: CaffeClassifier,
              report: Optional[CopyReport], train: Any, test: Any, *,
              pretrained: bool, source: Optional[ModelSource] = None,
              dist: Optional[distributed.Distributed] = None) -> RunResult:
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
        dist: The communicator of a distributed run
            (:func:`~chainer_finetune.distributed.create_distributed`), or
            None: ``config.batchsize`` is then the global batch.
    """
    out = os.path.join(config.out, name)
    if dist is None or dist.is_root:
        os.makedirs(out, exist_ok=True)
    device = chainer.get_device(dist.device(config.device) if dist
                                else config.device)
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
    if dist is not None and config.sync_batchnorm:
        distributed.use_multi_node_batchnorm(model, dist.comm)
    cache = _feature_cache(config, name, model, train, test, out, device,
                           pretrained, dist)
    if cache is not None:
        # The head trains on the frozen backbone's features, computed once.
        classifier = L.Classifier(cache.predictor)
        train, test = cache.train, cache.test
    optimizer = chainer.optimizers.Adam(alpha=config.lr,
                                        weight_decay_rate=config.weight_decay)
    optimizer.setup(classifier)
    if pretrained and config.lr_mult_from_prototxt:
        _apply_lr_mults(model, source or resolve_source(config))
    if dist is not None:
        optimizer = distributed.distribute(dist, classifier, optimizer)
    train_iter, test_iter = _iterators(config, train, test, dist)
    updater = training.updaters.StandardUpdater(train_iter, optimizer,
                                                device=device)
    trainer = training.Trainer(updater, (config.epochs, 'epoch'), out=out)
    if pretrained and config.unfreeze_at is not None and frozen:
        trainer.extend(GradualUnfreeze(
            model.backbone, {config.unfreeze_at: config.unfreeze or
                             config.freeze}))
    _extend(trainer, name, model, classifier, test_iter, device,
            config.epochs, dist)
    _checkpoints(trainer, config, name, model, dist)
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


def _describe_run(config: FinetuneConfig, source: ModelSource,
                  model: CaffeClassifier, names: List[str], name: str,
                  pretrained: bool) -> None:
    """Writes the run's ``model.json`` before training: the best model is
    usable as soon as it appears."""
    # An earlier run's weights there (--overwrite) must not pair with the
    # new description; a resumed run keeps its own best model.
    stale = os.path.join(config.out, name, WEIGHTS_FILE)
    if os.path.lexists(stale) and not config.resume:
        os.remove(stale)
    write_model_file(os.path.join(config.out, name), describe_run(
        config, source, model, preprocessors(config, source)[1], names,
        name, pretrained))


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    """Runs the fine-tuning job described by ``config``.

    The model is located once (a known model fetched by name, see
    :func:`~chainer_finetune.finetune.resolve_source`) and that
    :class:`~chainer_finetune.finetune.ModelSource` serves every run and
    the report.

    Returns:
        FinetuneResult: The runs, the report's and plot's paths and the
        summary line.

    Under ``mpiexec -n N`` (or with ``config.communicator``) every process
    runs this function: the job is data-parallel
    (:mod:`chainer_finetune.distributed`) and only rank 0 writes; the
    others return the same runs with an empty ``report_path``.

    Raises:
        FinetuneError: ``config.out`` holds an earlier run's results and
            ``config.overwrite`` is not set (checked first).
        ChainerFinetuneError: unusable model, data or configuration.
    """
    total_start = time.perf_counter()
    dist = distributed.create_distributed(config.communicator)
    root = dist is None or dist.is_root
    if root:
        check_output_dir(config)
        os.makedirs(config.out, exist_ok=True)
    if dist is not None:
        distributed.per_rank_batch(config.batchsize, dist.size)
        logger.info('%d processes (%s communicator; rank=pid@host: %s), '
                    'global batch %d, %d per process', dist.size, dist.name,
                    dist.ranks_line(), config.batchsize,
                    config.batchsize // dist.size)
    # Rank 0 first: it fills the caches (data, model, net) the others read.
    images, train_set, test_set = distributed.root_first(
        dist, lambda: load_split(config))
    n_class = config.n_class or len(images.class_names)
    if int(images.labels.max()) >= n_class:
        raise FinetuneError('the data has labels up to {} but n_class is {}'
                            .format(int(images.labels.max()), n_class))
    logger.info('data %s: %d classes, %d training and %d held-out images',
                config.data, n_class, len(train_set), len(test_set))
    source = distributed.root_first(dist, lambda: resolve_source(config))
    # An n_class beyond the data's classes names the extra ones by number.
    names = (images.class_names + [str(i) for i in range(
        len(images.class_names), n_class)])[:n_class]
    runs = []
    for pretrained in [True] + ([False] if config.compare_scratch else []):
        name = RUN_NAMES[0] if pretrained else RUN_NAMES[1]
        model, report = distributed.root_first(
            dist, lambda: build_classifier(config, n_class, pretrained,
                                           source))
        if root:
            _describe_run(config, source, model, names, name, pretrained)
        if report is not None:
            logger.info('copied %d values into %d links; skipped %d',
                        len(report.copied), len(report.copied_links),
                        len(report.skipped))
        train, test = transformed(config, train_set, test_set, source)
        runs.append(train_one(config, name, model, report, train, test,
                              pretrained=pretrained, source=source,
                              dist=dist))
    summary = ' '.join('{}: {:.3f}'.format(r.name, r.accuracy)
                       for r in runs)
    if not root:
        return FinetuneResult(runs=runs, report_path='', plot_path=None,
                              summary=summary)
    plot_path = plot_accuracy(runs, os.path.join(config.out, PLOT_FILE))
    report_path = os.path.join(config.out, REPORT_FILE)
    with open(report_path, 'w', encoding='utf-8') as f:
        f.write(write_report(config, source, train_set, test_set, n_class,
                             runs, plot_path, summary,
                             time.perf_counter() - total_start))
    return FinetuneResult(runs=runs, report_path=report_path,
                          plot_path=plot_path, summary=summary)
