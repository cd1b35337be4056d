"""Benchmark: epoch time of the built-in demo, with and without the fast
path and the feature cache.

Usage::

    python benchmarks/finetune_epoch.py [--epochs 5] [--quick] [--rst FILE]

The demo (:data:`chainer_finetune.finetune.DEMO`: open_nsfw cut at
``eltwise_stage2_block5``, 64x64 digits, 10 training and 50 held-out images
per class, batch 10) with ``--augment none`` and without the from-scratch
run, three ways:

* ``plain``: ``--feature-cache off`` and the backbone's fast path off
  (Chainer's own functions, as before the fast path);
* ``fast path``: ``--feature-cache off``;
* ``feature cache``: ``--feature-cache ram``.

The runs follow one another in one process; the table shows each run's first
epoch and the median of its later epochs (from Chainer's LogReport, so
evaluation included), the speed-up of later epochs against ``plain``, the
whole job's wall time (loading the model, and with the cache computing the
features of every training and held-out image once, which no epoch
includes) and the final held-out accuracy, which must be the same for the
fast path and the cache (the cache's goal: later epochs at least 10x
faster).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time

import chainer_finetune  # noqa: F401  (before chainer: compat patches)

from chainer_finetune import finetune
from chainer_finetune.caffe.net import CaffeNet

MODES = (('plain', 'off', False), ('fast path', 'off', True),
         ('feature cache', 'ram', True))


def run(mode: str, fast: bool, epochs: int, quick: bool, out: str):
    values = dict(finetune.DEMO)
    values.update(augment='none', compare_scratch=False, epochs=epochs,
                  feature_cache=mode, out=out)
    if quick:
        values.update(train_per_class=2, test_per_class=5)
    CaffeNet.fast_path = fast
    start = time.perf_counter()
    try:
        result = finetune.run_finetune(finetune.FinetuneConfig(**values))
    finally:
        CaffeNet.fast_path = True
    return result.runs[0], time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=5)
    parser.add_argument('--quick', action='store_true',
                        help='2 training and 5 held-out images per class')
    parser.add_argument('--rst', help='also write the table to this file')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name, mode, fast in MODES:
        with tempfile.TemporaryDirectory() as out:
            r, wall = run(mode, fast, args.epochs, args.quick, out)
        rows.append((name, r.epoch_seconds[0],
                     statistics.median(r.epoch_seconds[1:] or
                                       r.epoch_seconds), wall, r.accuracy))
        print('{}: done'.format(name), file=sys.stderr)
    base = rows[0][2]
    lines = ['Built-in demo, --augment none, {} epochs'.format(args.epochs),
             '', '============= ========= ============= ======== =========== '
             '========',
             'run           epoch 1 s later epoch s speed-up whole job s '
             'accuracy',
             '============= ========= ============= ======== =========== '
             '========']
    for name, first, later, wall, acc in rows:
        lines.append('{:13} {:9.2f} {:13.3f} {:8.1f} {:11.1f} {:8.3f}'.format(
            name, first, later, base / later, wall, acc))
    lines.append(lines[2])
    table = '\n'.join(lines)
    print(table)
    if args.rst:
        with open(args.rst, 'w', encoding='utf-8') as f:
            f.write(table + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
