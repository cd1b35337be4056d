"""Benchmark: one fine-tuning step of AlexNet with conv1-conv5 frozen.

Usage::

    python benchmarks/finetune_step.py [--quick] [--device @cupy:0]
                                       [--batch 32] [--warmup 2] [--iters 5]
                                       [--rst FILE]

The model has bvlc_alexnet's layers and shapes (conv2, conv4 and conv5 with
two groups, LRN after relu1 and relu2, 3x3/2 max pooling, fc6 9216x4096,
fc7 4096x4096, dropout), fc8 with 10 outputs, random weights. Inputs are
random 227x227 images, batch 32. MomentumSGD (lr 0.01, momentum 0.9) with
``WeightDecay(5e-4)`` trains fc6-fc8; conv1-conv5 are frozen two ways:

* ``DelGradient (full backward)``: the classic recipe: backward runs
  through the whole net, then a :class:`chainer_finetune.freeze.DelGradient`
  hook zeroes the conv gradients (and disables their update rules);
* ``freeze (backward stops at fc6)``: :func:`chainer_finetune.freeze.freeze`
  on ``conv*``: the convolutions run without building a graph, so backward
  stops at fc6.

Each mode gets its own model (same weights) and ``--warmup`` untimed
steps; then ``--iters`` timed steps of each, alternating between the modes
so that both see the same machine load (``optimizer.update`` with forward,
backward and update; on a GPU the device is synchronized). The table shows
the median steps per second and the peak memory one step allocates beyond
what is held before it: on the CPU from ``tracemalloc`` (NumPy reports its
buffers to it), measured in one more step that is not timed (tracing slows
Python down); on a GPU the bytes CuPy's memory pool holds after a step that
starts from an emptied pool. The ratio row divides ``freeze`` by
``DelGradient``; the CPU target is a speed-up of at least 1.5. Both modes
are checked to leave the conv weights bit-identical.

``--quick`` runs batch 4, one warm-up step and two timed ones (a smoke
test, seconds).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc

import chainer_finetune  # noqa: F401  (before chainer: compat patches)

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import optimizer_hooks
from chainer import optimizers
import numpy

from chainer_finetune.freeze import DelGradient
from chainer_finetune.freeze import freeze

FROZEN = ['conv*']
N_CLASS = 10
TARGET_SPEEDUP = 1.5


class AlexNet(chainer.Chain):
    """bvlc_alexnet's layers and shapes (deploy.prototxt), fc8 10-way."""

    def __init__(self, n_class: int = N_CLASS) -> None:
        super(AlexNet, self).__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, 96, 11, stride=4)
            self.conv2 = L.Convolution2D(96, 256, 5, pad=2, groups=2)
            self.conv3 = L.Convolution2D(256, 384, 3, pad=1)
            self.conv4 = L.Convolution2D(384, 384, 3, pad=1, groups=2)
            self.conv5 = L.Convolution2D(384, 256, 3, pad=1, groups=2)
            self.fc6 = L.Linear(256 * 6 * 6, 4096)
            self.fc7 = L.Linear(4096, 4096)
            self.fc8 = L.Linear(4096, n_class)

    def forward(self, x):
        # Caffe's LRN divides alpha by local_size; Chainer's does not.
        lrn = dict(n=5, k=1, alpha=1e-4 / 5, beta=0.75)
        h = F.relu(self.conv1(x))
        h = F.max_pooling_2d(F.local_response_normalization(h, **lrn), 3, 2)
        h = F.relu(self.conv2(h))
        h = F.max_pooling_2d(F.local_response_normalization(h, **lrn), 3, 2)
        h = F.relu(self.conv3(h))
        h = F.relu(self.conv4(h))
        h = F.max_pooling_2d(F.relu(self.conv5(h)), 3, 2)
        h = F.dropout(F.relu(self.fc6(h)), 0.5)
        h = F.dropout(F.relu(self.fc7(h)), 0.5)
        return self.fc8(h)


def _setup(mode: str, device: chainer.backend.Device):
    numpy.random.seed(0)
    model = AlexNet()
    model.to_device(device)
    optimizer = optimizers.MomentumSGD(lr=0.01, momentum=0.9)
    optimizer.setup(model)
    optimizer.add_hook(optimizer_hooks.WeightDecay(5e-4))
    if mode == 'delgradient':
        optimizer.add_hook(DelGradient(FROZEN, model=model))
    else:
        freeze(model, FROZEN)
    return model, optimizer


def _synchronize(device: chainer.backend.Device) -> None:
    if device.xp is not numpy:
        device.device.synchronize()


def _gpu_pool(device: chainer.backend.Device):
    if device.xp is numpy:
        return None
    return device.xp.get_default_memory_pool()


def _peak_bytes(step, device: chainer.backend.Device) -> int:
    """Peak bytes one step allocates beyond those held before it."""
    gc.collect()
    pool = _gpu_pool(device)
    if pool is not None:
        _synchronize(device)
        pool.free_all_blocks()
        before = pool.total_bytes()
        step()
        _synchronize(device)
        return pool.total_bytes() - before
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def _make_step(mode: str, device: chainer.backend.Device, batch: int):
    model, optimizer = _setup(mode, device)
    rng = numpy.random.RandomState(1)
    x = device.send(rng.uniform(-1, 1, (batch, 3, 227, 227))
                    .astype(numpy.float32))
    t = device.send(rng.randint(0, N_CLASS, batch).astype(numpy.int32))

    def lossfun():
        return F.softmax_cross_entropy(model(x), t)

    def step():
        optimizer.update(lossfun)
    return model, step


def _conv_weights(model) -> dict:
    cpu = chainer.backend.CpuDevice()
    return {name: cpu.send(getattr(model, name).W.array).copy()
            for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')}


def run(device: chainer.backend.Device, batch: int, warmup: int,
        iters: int) -> dict:
    """Times both modes, alternating steps so that both see the same load."""
    modes = ('delgradient', 'freeze')
    models, steps, before = {}, {}, {}
    for mode in modes:
        models[mode], steps[mode] = _make_step(mode, device, batch)
        before[mode] = _conv_weights(models[mode])
        for _ in range(warmup):
            steps[mode]()
    _synchronize(device)
    seconds = {mode: [] for mode in modes}
    for _ in range(iters):
        for mode in modes:
            start = time.perf_counter()
            steps[mode]()
            _synchronize(device)
            seconds[mode].append(time.perf_counter() - start)
    results = {}
    for mode in modes:
        peak = _peak_bytes(steps[mode], device)
        after = _conv_weights(models[mode])
        for name in before[mode]:
            if after[name].tobytes() != before[mode][name].tobytes():
                raise AssertionError('{}: {} moved'.format(mode, name))
        results[mode] = {'median_s': statistics.median(seconds[mode]),
                         'seconds': seconds[mode], 'peak_bytes': peak}
    return results


def format_table(results: dict, device: str, batch: int) -> str:
    a, b = results['delgradient'], results['freeze']
    rows = [
        ('DelGradient (full backward)', '{:.3f}'.format(1 / a['median_s']),
         '{:.0f}'.format(a['median_s'] * 1000),
         '{:.0f}'.format(a['peak_bytes'] / 2 ** 20)),
        ('freeze (backward stops at fc6)',
         '{:.3f}'.format(1 / b['median_s']),
         '{:.0f}'.format(b['median_s'] * 1000),
         '{:.0f}'.format(b['peak_bytes'] / 2 ** 20)),
        ('ratio freeze / DelGradient',
         '{:.2f}x'.format(a['median_s'] / b['median_s']), '',
         '{:.2f}x'.format(b['peak_bytes'] / a['peak_bytes'])),
    ]
    headers = ('AlexNet, batch {}, {}'.format(batch, device), 'steps/s',
               'ms/step', 'peak MiB')
    widths = [max(len(str(r[i])) for r in rows + [headers])
              for i in range(len(headers))]
    line = '  '.join('=' * w for w in widths)

    def fmt(row):
        return '  '.join(str(c).ljust(w) for c, w in zip(row, widths)) \
            .rstrip()
    return '\n'.join([line, fmt(headers), line] + [fmt(r) for r in rows] +
                     [line])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='@numpy',
                        help='Chainer device specifier (@cupy:0 for a GPU)')
    parser.add_argument('--quick', action='store_true',
                        help='batch 4, 1 warm-up and 2 timed steps')
    parser.add_argument('--batch', type=int, default=None)
    parser.add_argument('--warmup', type=int, default=None)
    parser.add_argument('--iters', type=int, default=None)
    parser.add_argument('--rst', help='also write the table to this file')
    args = parser.parse_args(argv)
    batch = args.batch or (4 if args.quick else 32)
    warmup = args.warmup if args.warmup is not None else (
        1 if args.quick else 2)
    iters = args.iters or (2 if args.quick else 5)
    device = chainer.get_device(args.device)
    device.use()

    results = run(device, batch, warmup, iters)
    for mode, result in results.items():
        print('{}: {}'.format(mode, ', '.join(
            '{:.3f}s'.format(s) for s in result['seconds'])),
            file=sys.stderr, flush=True)
    table = format_table(results, args.device, batch)
    print(table)
    if args.rst:
        with open(args.rst, 'w') as f:
            f.write(table + '\n')
    speedup = results['delgradient']['median_s'] / \
        results['freeze']['median_s']
    if device.xp is numpy and not args.quick:
        met = speedup >= TARGET_SPEEDUP
        print('target: freeze >= {}x DelGradient steps/s on CPU: {:.2f}x, '
              '{}'.format(TARGET_SPEEDUP, speedup,
                          'met' if met else 'NOT met'))
        return 0 if met else 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
