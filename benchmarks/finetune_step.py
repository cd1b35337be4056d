"""Benchmark: one fine-tuning step of AlexNet with conv1-conv5 frozen.

Usage::

    python benchmarks/finetune_step.py [--quick] [--device @cupy:0]
                                       [--batch 32] [--warmup 2] [--iters 5]
                                       [--rst FILE]

The model is a :class:`~chainer_finetune.CaffeNet` loaded by
:func:`~chainer_finetune.load_caffe` from a caffemodel with bvlc_alexnet's
exact structure and random weights
(:func:`chainer_finetune.caffe.zoo_shapes.make_alexnet`: conv2, conv4 and
conv5 with two groups, LRN after conv1 and conv2, 3x3/2 max pooling, fc6
9216x4096, fc7 4096x4096, dropout), fc8 replaced by a 10-way head. Inputs
are random 227x227 images, batch 32. MomentumSGD (lr 0.01, momentum 0.9)
with ``WeightDecay(5e-4)`` trains fc6-fc8; conv1-conv5 are frozen three
ways:

* ``DelGradient (full backward)``: the classic recipe: backward runs
  through the whole net, then a :class:`chainer_finetune.freeze.DelGradient`
  hook zeroes the conv gradients (and disables their update rules);
* ``freeze, fast path off``: :func:`chainer_finetune.freeze.freeze` on
  ``conv*`` with ``net.fast_path = False``: the convolutions run Chainer's
  own functions without building a graph, so backward stops at fc6 (the
  freeze path before the fast path existed);
* ``freeze, fast path on``: the same with the fast inference path
  (:mod:`chainer_finetune.caffe.fast_path`) running the frozen layers.

Each mode gets its own net (same weights) and ``--warmup`` untimed steps;
then ``--iters`` timed steps of each, alternating between the modes so
that all see the same machine load (``optimizer.update`` with forward,
backward and update; on a GPU the device is synchronized). Every step
reseeds NumPy's generator (dropout) so the modes train on the same masks.
The table shows the median steps per second and the peak memory one step
allocates beyond what is held before it: on the CPU from ``tracemalloc``
(NumPy reports its buffers to it), measured in one more step that is not
timed (tracing slows Python down); on a GPU the bytes CuPy's memory pool
holds after a step that starts from an emptied pool. The ratio rows divide
``freeze`` by ``DelGradient`` and the fast path by the freeze path without
it; the CPU targets are a speed-up of at least 1.5 for each. The conv
weights of every mode are checked to stay bit-identical, and the trained
fc6-fc8 of the two freeze modes to agree (relative L2 distance, printed).

``--quick`` runs batch 4, one warm-up step and two timed ones (a smoke
test, seconds).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc

import chainer_finetune  # noqa: F401  (before chainer: compat patches)

import chainer
import chainer.functions as F
from chainer import optimizer_hooks
from chainer import optimizers
import numpy

from chainer_finetune import load_caffe
from chainer_finetune import replace_head
from chainer_finetune.caffe.zoo_shapes import make_alexnet
from chainer_finetune.freeze import DelGradient
from chainer_finetune.freeze import freeze

FROZEN = ['conv*']
CONVS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
TRAINED = ('fc6', 'fc7', 'fc8')
N_CLASS = 10
TARGET_SPEEDUP = 1.5
MODES = ('delgradient', 'freeze', 'fast')
LABELS = {'delgradient': 'DelGradient (full backward)',
          'freeze': 'freeze, fast path off',
          'fast': 'freeze, fast path on'}


def _setup(mode: str, caffemodel: str, device: chainer.backend.Device):
    net = load_caffe(caffemodel)
    replace_head(net, 'fc8', N_CLASS, seed=0)
    net.to_device(device)
    optimizer = optimizers.MomentumSGD(lr=0.01, momentum=0.9)
    optimizer.setup(net)
    optimizer.add_hook(optimizer_hooks.WeightDecay(5e-4))
    if mode == 'delgradient':
        optimizer.add_hook(DelGradient(FROZEN, model=net))
    else:
        freeze(net, FROZEN)
    net.fast_path = mode == 'fast'
    return net, optimizer


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


def _make_step(mode: str, caffemodel: str, device: chainer.backend.Device,
               batch: int):
    net, optimizer = _setup(mode, caffemodel, device)
    rng = numpy.random.RandomState(1)
    x = device.send(rng.uniform(-1, 1, (batch, 3, 227, 227))
                    .astype(numpy.float32))
    t = device.send(rng.randint(0, N_CLASS, batch).astype(numpy.int32))
    counter = [0]

    def lossfun():
        y, = net({'data': x}, outputs=['fc8'])
        return F.softmax_cross_entropy(y, t)

    def step():
        # Step k of every mode draws the same dropout masks.
        numpy.random.seed(counter[0])
        if device.xp is not numpy:
            device.xp.random.seed(counter[0])
        counter[0] += 1
        optimizer.update(lossfun)
    return net, step


def _weights(net, names) -> dict:
    cpu = chainer.backend.CpuDevice()
    return {name: cpu.send(net[name].W.array).copy() for name in names}


def _rel_l2(a: dict, b: dict) -> float:
    diff = sum(float(numpy.sum((a[k].astype(numpy.float64) - b[k]) ** 2))
               for k in a)
    norm = sum(float(numpy.sum(b[k].astype(numpy.float64) ** 2)) for k in b)
    return (diff / norm) ** 0.5


def run(device: chainer.backend.Device, batch: int, warmup: int,
        iters: int) -> dict:
    """Times the modes, alternating steps so that all see the same load."""
    steps, nets, before = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        caffemodel = os.path.join(tmp, 'alexnet.caffemodel')
        make_alexnet(caffemodel)
        for mode in MODES:
            nets[mode], steps[mode] = _make_step(mode, caffemodel, device,
                                                 batch)
            before[mode] = _weights(nets[mode], CONVS)
    for _ in range(warmup):
        for mode in MODES:
            steps[mode]()
    _synchronize(device)
    seconds = {mode: [] for mode in MODES}
    for _ in range(iters):
        for mode in MODES:
            start = time.perf_counter()
            steps[mode]()
            _synchronize(device)
            seconds[mode].append(time.perf_counter() - start)
    results = {}
    for mode in MODES:
        peak = _peak_bytes(steps[mode], device)
        after = _weights(nets[mode], CONVS)
        for name in CONVS:
            if after[name].tobytes() != before[mode][name].tobytes():
                raise AssertionError('{}: {} moved'.format(mode, name))
        results[mode] = {'median_s': statistics.median(seconds[mode]),
                         'seconds': seconds[mode], 'peak_bytes': peak}
    results['fast_vs_freeze_rel_l2'] = _rel_l2(
        _weights(nets['fast'], TRAINED), _weights(nets['freeze'], TRAINED))
    return results


def format_table(results: dict, device: str, batch: int) -> str:
    rows = [(LABELS[mode], '{:.3f}'.format(1 / results[mode]['median_s']),
             '{:.0f}'.format(results[mode]['median_s'] * 1000),
             '{:.0f}'.format(results[mode]['peak_bytes'] / 2 ** 20))
            for mode in MODES]
    for a, b, label in (('delgradient', 'freeze',
                         'ratio freeze / DelGradient'),
                        ('freeze', 'fast', 'ratio fast path / freeze')):
        rows.append((label, '{:.2f}x'.format(
            results[a]['median_s'] / results[b]['median_s']), '',
            '{:.2f}x'.format(results[b]['peak_bytes'] /
                             max(results[a]['peak_bytes'], 1))))
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
    for mode in MODES:
        print('{}: {}'.format(mode, ', '.join(
            '{:.3f}s'.format(s) for s in results[mode]['seconds'])),
            file=sys.stderr, flush=True)
    table = format_table(results, args.device, batch)
    print(table)
    print('fc6-fc8 after training, fast path vs freeze without it: '
          'relative L2 {:.1e}'.format(results['fast_vs_freeze_rel_l2']))
    if args.rst:
        with open(args.rst, 'w') as f:
            f.write(table + '\n')
    if device.xp is numpy and not args.quick:
        met = True
        for a, b, what in (('delgradient', 'freeze', 'freeze vs DelGradient'),
                           ('freeze', 'fast', 'fast path vs freeze')):
            speedup = results[a]['median_s'] / results[b]['median_s']
            met = met and speedup >= TARGET_SPEEDUP
            print('target: {} >= {}x steps/s on CPU: {:.2f}x, {}'.format(
                what, TARGET_SPEEDUP, speedup,
                'met' if speedup >= TARGET_SPEEDUP else 'NOT met'))
        return 0 if met else 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
