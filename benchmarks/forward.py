"""Benchmark: the inference forward pass of real Caffe models.

Usage::

    python benchmarks/forward.py [--quick] [--device @cupy:0]
                                 [--batches 1 16] [--repeat 3]
                                 [--models open_nsfw res10_ssd_face ...]
                                 [--rst FILE]

For each model (Yahoo's open_nsfw ResNet-50-1by2 at 224x224, the res10 SSD
face detector and MobileNet-SSD at 300x300; fetched by name and cached, see
:mod:`chainer_finetune.hub`) and batch size, three forward passes of the
same random input under ``chainer.using_config('train', False)`` and
``no_backprop_mode``:

* ``ours``: :func:`~chainer_finetune.load_caffe`'s net with its fast
  inference path (:mod:`chainer_finetune.caffe.fast_path`);
* ``plain``: the same net with ``net.fast_path = False`` (Chainer's own
  function for every layer);
* ``OpenCV``: ``cv2.dnn.readNetFromCaffe`` with ``DNN_BACKEND_OPENCV`` /
  ``DNN_TARGET_CPU`` (layer fusion on, its default), with as many threads
  as NumPy's BLAS (CPU runs only).

One warm-up pass each, then ``--repeat`` rounds that time one pass of each
in turn (so that all three see the same machine load); the table shows the
best time of each and the ratios ``plain / ours`` (the fast path's
speed-up) and ``ours / OpenCV`` (the issue's goal: at most 1.5 at batch
16, 2 at batch 1). The last column is the relative L2 distance between
ours and plain on the output blob (float32 rounding: about 1e-7 to 1e-6).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import chainer_finetune  # noqa: F401  (before chainer: compat patches)

import chainer
import numpy

from chainer_finetune import hub
from chainer_finetune import load_caffe

#: model name -> (input side, input blob, output blob)
MODELS = {
    'open_nsfw': (224, 'data', 'prob'),
    'res10_ssd_face': (300, 'data', 'detection_out'),
    'mobilenet_ssd_voc': (300, 'data', 'detection_out'),
}


def _blas_threads() -> int:
    for name in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS'):
        if os.environ.get(name, '').isdigit():
            return int(os.environ[name])
    try:
        from threadpoolctl import threadpool_info
        return max(i['num_threads'] for i in threadpool_info()
                   if i['user_api'] == 'blas')
    except Exception:     # threadpoolctl missing: what OpenBLAS defaults to
        return os.cpu_count() or 1


def _load(name: str):
    files = hub.fetch_model(name)
    return files.caffemodel, files.prototxt


def _opencv(caffemodel: str, prototxt: str):
    import cv2
    net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


def _contenders(name: str, device, batch: int):
    """name -> a callable running one forward, and the input."""
    side, input_blob, output = MODELS[name]
    caffemodel, prototxt = _load(name)
    net = load_caffe(caffemodel, prototxt)
    net.to_device(device)
    x = numpy.random.RandomState(0).uniform(
        -100, 100, (batch, 3, side, side)).astype(numpy.float32)
    xd = device.send(x)

    def chainer_run(fast: bool):
        def forward():
            net.fast_path = fast
            with chainer.using_config('train', False), \
                    chainer.no_backprop_mode():
                y, = net(inputs={input_blob: xd}, outputs=[output])
            array = chainer.backend.CpuDevice().send(y.array)
            return numpy.asarray(array)
        return forward

    runs = {'ours': chainer_run(True), 'plain': chainer_run(False)}
    if device.xp is numpy:
        cv_net = _opencv(caffemodel, prototxt)

        def opencv():
            cv_net.setInput(x)
            return cv_net.forward(output)
        runs['OpenCV'] = opencv
    return runs


def measure(name: str, device, batch: int, repeat: int) -> dict:
    runs = _contenders(name, device, batch)
    outputs = {k: run() for k, run in runs.items()}     # warm-up
    best = {k: float('inf') for k in runs}
    for _ in range(repeat):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            best[key] = min(best[key], time.perf_counter() - start)
    ours, plain = outputs['ours'], outputs['plain']
    best['rel_l2'] = float(numpy.linalg.norm(ours - plain) /
                           max(numpy.linalg.norm(plain), 1e-30))
    return best


def format_table(rows, device: str, threads: int) -> str:
    header = ('model', 'batch', 'ours (ms)', 'plain (ms)', 'OpenCV (ms)',
              'plain / ours', 'ours / OpenCV', 'rel. L2 ours-plain')
    lines = []
    for (name, batch), r in rows:
        cv = r.get('OpenCV')
        lines.append((name, str(batch), '{:.1f}'.format(r['ours'] * 1e3),
                      '{:.1f}'.format(r['plain'] * 1e3),
                      '-' if cv is None else '{:.1f}'.format(cv * 1e3),
                      '{:.2f}'.format(r['plain'] / r['ours']),
                      '-' if cv is None else '{:.2f}'.format(r['ours'] / cv),
                      '{:.1e}'.format(r['rel_l2'])))
    widths = [max(len(h), *(len(line[i]) for line in lines))
              for i, h in enumerate(header)]
    rule = ' '.join('=' * w for w in widths)
    out = ['Forward pass, inference mode, on {} ({} BLAS/OpenCV threads), '
           'best time'.format(device, threads), '', rule,
           ' '.join(h.ljust(w) for h, w in zip(header, widths)), rule]
    out += [' '.join(c.ljust(w) for c, w in zip(line, widths))
            for line in lines]
    out.append(rule)
    return '\n'.join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='@numpy')
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 16])
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--models', nargs='+', default=list(MODELS),
                        choices=list(MODELS))
    parser.add_argument('--quick', action='store_true',
                        help='open_nsfw at batch 1, 2 rounds')
    parser.add_argument('--rst', help='also write the table to this file')
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.repeat = ['open_nsfw'], [1], 2
    device = chainer.get_device(args.device)
    device.use()
    threads = _blas_threads()
    if device.xp is numpy:
        import cv2
        cv2.setNumThreads(threads)
    rows = []
    for name in args.models:
        for batch in args.batches:
            rows.append(((name, batch), measure(name, device, batch,
                                                args.repeat)))
            print('{} batch {}: done'.format(name, batch), file=sys.stderr)
    table = format_table(rows, args.device, threads)
    print(table)
    if args.rst:
        with open(args.rst, 'w', encoding='utf-8') as f:
            f.write(table + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
