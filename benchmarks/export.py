"""Benchmark: exporting a VGG-16-sized net to Caffe, beside loading it.

Usage::

    python benchmarks/export.py [--workdir .cache/bench] [--quick]
                                [--repeat 3]

Uses the load benchmark's generated model (``benchmarks/load.py``: a V2
caffemodel with the shapes of VGG_ILSVRC_16_layers and random weights,
528 MiB; 46 MiB with ``--quick``), written into ``--workdir`` if absent.
Then, ``--repeat`` times in this process, with the page cache warm:

* ``load_caffe``: ``chainer_finetune.load_caffe(path)`` (the reference);
* ``export_caffe``: ``chainer_finetune.export.export_caffe(net, OUT)``
  into new files (the last ones are removed first, untimed): the layer
  descriptions, every blob computed back from its link and checked to
  rebuild it, ``OUT.caffemodel`` streamed and fsynced, ``OUT.prototxt``.

Prints the median seconds of each and their ratio; the target is export
under twice the load time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import load as load_benchmark  # noqa: E402  (benchmarks/load.py)

#: Export may take at most this many times the load time.
TARGET_RATIO = 2.0


def _remove(out: str) -> None:
    for suffix in ('.prototxt', '.caffemodel'):
        if os.path.exists(out + suffix):
            os.remove(out + suffix)


def measure(path: str, out: str, repeat: int) -> dict:
    """Median seconds of loading ``path`` and exporting the net to ``out``.
    """
    import chainer_finetune  # noqa: F401  (before chainer)
    from chainer_finetune import load_caffe
    from chainer_finetune.export import export_caffe

    times = {'load_caffe': [], 'export_caffe': []}
    size = 0
    for _ in range(repeat):
        start = time.perf_counter()
        net = load_caffe(path)
        times['load_caffe'].append(time.perf_counter() - start)
        # A new file each time: replacing the last one would add the
        # kernel's freeing of its pages to the export.
        _remove(out)
        start = time.perf_counter()
        files = export_caffe(net, out)
        times['export_caffe'].append(time.perf_counter() - start)
        size = os.path.getsize(files.caffemodel)
        del net, files
    return {'size': size,
            **{k: statistics.median(v) for k, v in times.items()}}


def table(results: dict) -> list:
    load = results['load_caffe']
    rows = [('operation', 'seconds', 'x load_caffe'),
            ('load_caffe (reference)', '{:.2f}'.format(load), '1.00'),
            ('export_caffe ({:.0f} MB written)'.format(results['size'] / 1e6),
             '{:.2f}'.format(results['export_caffe']),
             '{:.2f}'.format(results['export_caffe'] / load))]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ['  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', default=os.path.join('.cache', 'bench'))
    parser.add_argument('--quick', action='store_true',
                        help='a narrower VGG-16 (46 MiB)')
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args(argv)
    path = load_benchmark.ensure_model(args.workdir, args.quick)
    load_benchmark.warm_page_cache(path)
    out = os.path.join(args.workdir, 'exported')
    try:
        results = measure(path, out, args.repeat)
    finally:
        _remove(out)
    print('\n'.join(table(results)))
    ratio = results['export_caffe'] / results['load_caffe']
    ok = ratio < TARGET_RATIO
    print('target: export < {:.0f}x load: {} ({:.2f}x)'.format(
        TARGET_RATIO, 'met' if ok else 'MISSED', ratio))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
