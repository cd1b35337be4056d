"""What a job returns (:class:`RunResult`, :class:`FinetuneResult`) and
writes about itself: the accuracy plot and the Markdown report
(``report.md``)."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy

from chainer_finetune.copy import CopyReport
from chainer_finetune.data import ImageSet
from chainer_finetune.finetune.config import FinetuneConfig
from chainer_finetune.finetune.config import ModelSource
from chainer_finetune.finetune.config import resolve_input_size

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    """The outcome of one training run (pretrained or scratch).

    Attributes:
        name: ``'pretrained'`` or ``'scratch'`` (its directory and label).
        log: LogReport's entries (one per epoch).
        accuracy: Held-out accuracy after the last epoch.
        best_accuracy: Best held-out accuracy of any epoch.
        best_epoch: Its epoch.
        seconds: Wall time of the training loop.
        epoch_seconds: Wall time of each epoch (training and evaluation).
        copy_report: What was copied from the Caffe model (pretrained).
        frozen: Link paths frozen at the start.
        out: Directory of the run's files.
        pretrained: Whether the run started from the Caffe model's values
            (False: from random weights).
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
    pretrained: bool


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


def plot_accuracy(runs: Sequence[RunResult], path: str) -> Optional[str]:
    """Held-out (and training) accuracy per epoch of every run in one PNG.

    Returns:
        The PNG's path, or None when matplotlib is not installed.
    """
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


def _setup(config: FinetuneConfig, source: ModelSource, train_set: ImageSet,
           test_set: ImageSet, n_class: int, seconds: float) -> List[str]:
    """The list of what the job did: model, data, input, network."""
    return [
        '- model: `{}`{}'.format(source.name, ' (prototxt `{}`)'.format(
            os.path.basename(source.prototxt)) if source.prototxt else ''),
        '- data: `{}`: {} classes; {} training and {} held-out images '
        '(per class: {} / {}), seed {}'.format(
            config.data, n_class, len(train_set), len(test_set),
            config.train_per_class or 'all',
            config.test_per_class or 'the rest', config.seed),
        '- input: {0}x{0} pixels, BGR minus mean, augmentation `{1}`'.format(
            resolve_input_size(config, source), config.augment),
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


def _accuracy_table(runs: Sequence[RunResult], summary: str,
                    plot_path: Optional[str]) -> List[str]:
    lines = ['## Held-out accuracy', '',
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
    return lines


def _epoch_table(runs: Sequence[RunResult]) -> List[str]:
    lines = ['## Per epoch', '',
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
    return lines


def _copied_and_frozen(config: FinetuneConfig,
                       runs: Sequence[RunResult]) -> List[str]:
    lines = ['## Copied and frozen', '']
    for run in runs:
        if not run.pretrained:
            continue
        if run.copy_report is not None:
            report = run.copy_report
            lines.append('- copied from the Caffe model: {} values in {} '
                         'links'.format(len(report.copied),
                                        len(report.copied_links)))
            new = [e.dst_path for e in report.skipped if e.dst_path]
            if new:
                lines.append('- new (not in the Caffe model): {}'.format(
                    ', '.join('`{}`'.format(p) for p in new)))
        if run.frozen:
            shown = ', '.join('`{}`'.format(p) for p in run.frozen[:4])
            lines.append('- frozen at the start: {} links ({}{})'.format(
                len(run.frozen), shown, ', ...' if len(run.frozen) > 4
                else ''))
        else:
            lines.append('- nothing frozen')
    if config.unfreeze_at is not None:
        lines.append('- unfrozen at epoch {:g}: `{}`'.format(
            config.unfreeze_at, ' '.join(config.unfreeze or config.freeze)))
    if any(not run.pretrained for run in runs):
        lines.append('- scratch: the same network with random weights '
                     '(He-normal; BatchNorm with batch statistics), nothing '
                     'frozen, same data, epochs and optimizer')
    return lines


def write_report(config: FinetuneConfig, source: ModelSource,
                 train_set: ImageSet, test_set: ImageSet, n_class: int,
                 runs: Sequence[RunResult], plot_path: Optional[str],
                 summary: str, seconds: float) -> str:
    """The Markdown report of a job.

    Args:
        config: The job's configuration.
        source: Its located model (named as the configuration names it).
        train_set: The training images.
        test_set: The held-out images.
        n_class: Classes of the new classifier.
        runs: The job's runs, the pretrained one first.
        plot_path: The accuracy plot (:func:`plot_accuracy`), or None.
        summary: The one-line summary.
        seconds: Wall time of the whole job.

    Returns:
        str: The report's text.
    """
    lines = ['# Fine-tuning report', '']
    lines += _setup(config, source, train_set, test_set, n_class, seconds)
    lines += _accuracy_table(runs, summary, plot_path)
    lines += _epoch_table(runs)
    lines += ['']
    lines += _copied_and_frozen(config, runs)
    lines += ['', 'Files: `pretrained/` (and `scratch/`): `log`, '
              '`best_model.npz` (best held-out accuracy), `model.json` '
              '(for `chainer-finetune predict`), `loss.png`, '
              '`accuracy.png`.', '']
    return '\n'.join(lines)
