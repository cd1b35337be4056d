"""Benchmark: loading a VGG-16-sized caffemodel.

Usage::

    python benchmarks/load.py [--workdir .cache/bench] [--quick]
                              [--repeat 3] [--rst FILE] [--json FILE]

Writes (once; reused while its size matches) a V2 caffemodel with the
shapes of VGG_ILSVRC_16_layers and random float32 weights (528 MiB; 46 MiB
with ``--quick``, a narrower VGG) into ``--workdir``, then measures, each
``--repeat`` times in a fresh subprocess (the page cache is warm, the Python
heap is not):

* ``floor``: read the file, ``NetParameter.ParseFromString`` and
  ``numpy.asarray(blob.data)`` for every blob (what any protobuf-based
  loader must at least do);
* ``CaffeFunction``: Chainer's own ``chainer.links.caffe.CaffeFunction`` on
  the same file (importable because chainer_finetune's compat layer serves
  its schema under Chainer's module name; a reference only);
* ``opencv``: ``cv2.dnn.readNetFromCaffe(prototxt, path)``, OpenCV's own
  reader (C++, its own protobuf), with the deploy prototxt written beside
  the model (a reference only);
* ``load_caffe``: ``chainer_finetune.load_caffe(path)``;
* ``load_caffe cache=True``: from the converted-net cache (kept under
  ``--workdir``), "n/a" if ``load_caffe`` takes no ``cache`` argument.

Seconds are the median time of the operation alone (imports excluded),
wall clock in the table, CPU time (user + system, all threads) beside it
in the ``--json`` file;
peak RSS is the subprocess's ``ru_maxrss``, shown raw and net of a
subprocess that only imports chainer_finetune. Ratios compare with the
floor and with CaffeFunction in the same run, and the targets are checked
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# The parent stays small (no NumPy, no chainer_finetune: those are imported
# only in subprocesses) so that nothing of it shows in their peak RSS.

# The operation each subprocess times; prints one JSON line.
_CHILD = r'''
import json, resource, sys, time
mode, path = sys.argv[1], sys.argv[2]
import chainer_finetune            # before chainer (compat layer)
import numpy
extra = {}
if mode == 'floor':
    from chainer_finetune.caffe import caffe_pb2
elif mode == 'caffefunction':
    import chainer
    from chainer.links.caffe import CaffeFunction
    import warnings
    warnings.simplefilter('ignore')   # "Skip the layer" for Input layers
elif mode in ('load_caffe', 'load_caffe_cached'):
    from chainer_finetune.caffe.loader import load_caffe
elif mode == 'opencv':
    import cv2
    prototxt = path[:-len('.caffemodel')] + '.prototxt'
start = time.perf_counter()
cpu_start = time.process_time()
if mode == 'baseline':
    pass
elif mode == 'floor':
    with open(path, 'rb') as f:
        data = f.read()
    net = caffe_pb2.NetParameter()
    net.ParseFromString(data)
    arrays = [numpy.asarray(blob.data, dtype=numpy.float32)
              for layer in (net.layer or net.layers) for blob in layer.blobs]
    extra['values'] = sum(a.size for a in arrays)
elif mode == 'caffefunction':
    model = CaffeFunction(path)
    extra['values'] = sum(p.size for p in model.params())
elif mode == 'opencv':
    model = cv2.dnn.readNetFromCaffe(prototxt, path)
    # Each layer's blobs, as OpenCV holds them (getParam fails past the
    # last one, or for a layer without blobs).
    values = 0
    for name in model.getLayerNames():
        for i in range(4):
            try:
                values += model.getParam(name, i).size
            except cv2.error:
                break
    extra['values'] = values
elif mode == 'load_caffe':
    model = load_caffe(path)
    extra['values'] = sum(p.size for p in model.params())
elif mode == 'load_caffe_cached':
    model = load_caffe(path, cache=True)
    extra['values'] = sum(p.size for p in model.params())
else:
    raise SystemExit('unknown mode ' + mode)
seconds = time.perf_counter() - start
# CPU time of all threads: what the operation costs when other processes
# share the CPUs (wall time then also counts their turns).
cpu_seconds = time.process_time() - cpu_start
# Linux: VmHWM, the peak RSS of this process image. ru_maxrss would do
# too, but after fork+exec it starts at the parent's RSS.
peak = None
try:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                peak = int(line.split()[1]) * 1024
except OSError:
    pass
if peak is None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform != 'darwin':
        peak *= 1024
print(json.dumps(dict(seconds=seconds, cpu_seconds=cpu_seconds, peak=peak,
                      **extra)))
'''

MODES = [
    # (mode, label)
    ('floor', 'floor (read + ParseFromString + asarray)'),
    ('caffefunction', 'Chainer CaffeFunction'),
    ('opencv', 'OpenCV readNetFromCaffe'),
    ('load_caffe', 'load_caffe (no cache)'),
    ('load_caffe_cached', 'load_caffe (cache=True)'),
]

MB = 1e6


# --------------------------------------------------------------------------
# The model file
# --------------------------------------------------------------------------

# (width, fc6/fc7 size) of vgg16_writer for the two models: VGG-16 itself,
# and for --quick a narrower VGG of the same depth.
SHAPES = {False: (1.0, 4096), True: (0.5, 512)}


def ensure_model(workdir: str, quick: bool) -> str:
    """The path of the model, written first if needed (in a subprocess, to
    keep this process small)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'vgg16_quick.caffemodel' if quick
                        else 'vgg16.caffemodel')
    width, fc_size = SHAPES[quick]
    subprocess.run([sys.executable, os.path.abspath(__file__), '--write',
                    path, str(width), str(fc_size)], check=True)
    return path


def write_model(path: str, width: float, fc_size: int) -> None:
    """Writes VGG-16 (``chainer_finetune.caffe.zoo_shapes.vgg16_writer``)
    with random weights, V2, unless ``path`` already holds a file of its
    size. The writer streams the weights: memory stays small."""
    import chainer_finetune  # noqa: F401
    from chainer_finetune.caffe.zoo_shapes import vgg16_writer

    net = vgg16_writer(width=width, fc_size=fc_size)
    # The deploy prototxt beside it, for OpenCV's readNetFromCaffe.
    prototxt = path[:-len('.caffemodel')] + '.prototxt'
    if not os.path.exists(prototxt):
        net.write_prototxt(prototxt)
    n_values = net.n_params()
    # The values dominate: a file of about 4 bytes per value is reused.
    if os.path.exists(path) and \
            0 <= os.path.getsize(path) - 4 * n_values < 64 * 1024:
        return
    start = time.perf_counter()
    print('writing {} ({:.0f} MB)...'.format(path, 4 * n_values / MB),
          flush=True)
    tmp = path + '.tmp'
    net.write_caffemodel(tmp)
    os.replace(tmp, path)
    print('  written in {:.1f} s'.format(time.perf_counter() - start),
          flush=True)


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------

def run_child(mode: str, path: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, '-c', _CHILD, mode, path],
                         capture_output=True, text=True, env=env,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError('{} failed:\n{}'.format(mode, out.stderr[-3000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_page_cache(path: str) -> None:
    with open(path, 'rb') as f:
        while f.read(16 << 20):
            pass


def accepts_cache() -> bool:
    code = ('import inspect, chainer_finetune\n'
            'from chainer_finetune.caffe.loader import load_caffe\n'
            "print('cache' in inspect.signature(load_caffe).parameters)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip() == 'True'


def measure(path: str, workdir: str, repeat: int, modes=None) -> dict:
    env = dict(os.environ)
    env['CHAINER_FINETUNE_CACHE'] = os.path.abspath(
        os.path.join(workdir, 'cache'))
    env.setdefault('OMP_NUM_THREADS', '1')
    warm_page_cache(path)
    results = {}
    baseline = [run_child('baseline', path, env)['peak']
                for _ in range(repeat)]
    results['baseline'] = {'peak': statistics.median(baseline)}
    for mode, label in MODES:
        if modes and mode not in modes:
            continue
        if mode == 'load_caffe_cached':
            if not accepts_cache():
                results[mode] = None
                continue
            run_child(mode, path, env)    # fills the cache (not timed)
        runs = []
        for i in range(repeat):
            runs.append(run_child(mode, path, env))
            print('  {:<42} run {}: {:6.2f} s, peak RSS {:6.0f} MB'.format(
                label, i + 1, runs[-1]['seconds'], runs[-1]['peak'] / MB),
                flush=True)
        results[mode] = {
            'seconds': statistics.median(r['seconds'] for r in runs),
            'all_seconds': [r['seconds'] for r in runs],
            'cpu_seconds': statistics.median(r['cpu_seconds'] for r in runs),
            'peak': statistics.median(r['peak'] for r in runs),
            'values': runs[0].get('values'),
        }
    return results


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

def _ratio(a, b):
    return '{:.2f}x'.format(a / b) if a and b else 'n/a'


def table(results: dict, size: int) -> list:
    """Rows (label, seconds, x floor, CaffeFunction / this, peak, net peak,
    net / file size)."""
    base = results['baseline']['peak']
    floor = results.get('floor')
    cf = results.get('caffefunction')
    rows = []
    for mode, label in MODES:
        if mode not in results:
            continue
        r = results[mode]
        if r is None:
            rows.append((label, 'n/a', 'n/a', 'n/a', 'n/a', 'n/a', 'n/a'))
            continue
        net = r['peak'] - base
        rows.append((
            label,
            '{:.2f}'.format(r['seconds']),
            _ratio(r['seconds'], floor and floor['seconds']),
            _ratio(cf and cf['seconds'], r['seconds']),
            '{:.0f}'.format(r['peak'] / MB),
            '{:.0f}'.format(net / MB),
            '{:.2f}x'.format(net / size),
        ))
    return rows


HEADERS = ('loader', 'seconds (median)', 'vs floor', 'speed-up vs '
           'CaffeFunction', 'peak RSS MB', 'net peak RSS MB',
           'net RSS / file size')


def rst_table(rows: list) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(HEADERS, *rows)]
    line = '  '.join('=' * w for w in widths)

    def fmt(row):
        return '  '.join(str(c).ljust(w) for c, w in zip(row, widths)) \
            .rstrip()
    return '\n'.join([line, fmt(HEADERS), line] + [fmt(r) for r in rows] +
                     [line])


def targets(results: dict, size: int) -> list:
    """(target, measured, met) for each target of the loader."""
    out = []
    base = results['baseline']['peak']
    floor = results.get('floor')
    cf = results.get('caffefunction')
    ours = results.get('load_caffe')
    cached = results.get('load_caffe_cached')
    if ours and floor:
        ratio = ours['seconds'] / floor['seconds']
        out.append(('load_caffe <= 2x the floor', '{:.2f}x'.format(ratio),
                    ratio <= 2))
    if ours and cf:
        speedup = cf['seconds'] / ours['seconds']
        out.append(('load_caffe >= 15x faster than CaffeFunction',
                    '{:.1f}x'.format(speedup), speedup >= 15))
    if ours and cached:
        out.append(('cached <= no cache', '{:.2f} s vs {:.2f} s'.format(
            cached['seconds'], ours['seconds']),
            cached['seconds'] <= ours['seconds']))
    elif ours:
        out.append(('cached <= no cache', 'n/a (no cache= argument)', None))
    if ours:
        ratio = (ours['peak'] - base) / size
        out.append(('load_caffe net peak RSS <= 1.5x file size',
                    '{:.2f}x'.format(ratio), ratio <= 1.5))
    if cached:
        ratio = (cached['peak'] - base) / size
        out.append(('cached net peak RSS <= 1.5x file size',
                    '{:.2f}x'.format(ratio), ratio <= 1.5))
    return out


def write_json(path: str, results: dict, size: int, args,
               load_at_start: str) -> None:
    """The measurements, with what they were measured on."""
    import platform
    from importlib import metadata
    versions = {}
    for name in ('chainer', 'numpy', 'protobuf', 'opencv-python-headless',
                 'opencv-python'):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    rows = [dict(mode=mode, label=label, **results[mode])
            for mode, label in MODES if results.get(mode)]
    data = {'file_bytes': size, 'quick': args.quick, 'repeat': args.repeat,
            'baseline_peak': results['baseline']['peak'], 'rows': rows,
            'python': sys.version.split()[0], 'cpus': os.cpu_count(),
            'machine': platform.machine(), 'load_at_start': load_at_start,
            'load_at_end': _load_average(),
            'versions': versions}
    with open(path, 'w') as f:
        json.dump(data, f, indent=1)
        f.write('\n')


def _load_average() -> str:
    try:
        return '{:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())
    except (AttributeError, OSError):
        return 'n/a'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', default=os.path.join('.cache', 'bench'))
    parser.add_argument('--quick', action='store_true',
                        help='a 46 MB narrower VGG instead of VGG-16')
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--only', nargs='*', choices=[m for m, _ in MODES],
                        help='measure only these (the baseline always)')
    parser.add_argument('--rst', help='also write the table (reST) here')
    parser.add_argument('--json', help='also write the measurements here '
                        '(what tools/pictures.py load draws)')
    parser.add_argument('--write', nargs=3, metavar=('PATH', 'WIDTH', 'FC'),
                        help=argparse.SUPPRESS)   # internal: the generator
    args = parser.parse_args(argv)
    if args.write:
        write_model(args.write[0], float(args.write[1]), int(args.write[2]))
        return 0
    start = time.perf_counter()
    load_at_start = _load_average()
    path = ensure_model(args.workdir, args.quick)
    size = os.path.getsize(path)
    print('model: {} ({:.1f} MB), Python {}, {} CPUs, load average {}'
          .format(path, size / MB, sys.version.split()[0], os.cpu_count(),
                  _load_average()), flush=True)
    results = measure(path, args.workdir, args.repeat, args.only)
    counts = {m: r['values'] for m, r in results.items()
              if r and r.get('values') is not None}
    if len(set(counts.values())) > 1:
        print('WARNING: the loaders disagree on the number of weights: '
              '{}'.format(counts))
    rows = table(results, size)
    text = rst_table(rows)
    print()
    print('file: {:.1f} MB; baseline RSS (import chainer_finetune): {:.0f} '
          'MB; median of {} fresh subprocesses'.format(
              size / MB, results['baseline']['peak'] / MB, args.repeat))
    print(text)
    print()
    for target, measured, met in targets(results, size):
        verdict = 'n/a' if met is None else ('met' if met else 'MISSED')
        print('  {:<46} {:<24} {}'.format(target, measured, verdict))
    print('\ntotal {:.0f} s; load average now {}'.format(
        time.perf_counter() - start, _load_average()))
    if args.rst:
        with open(args.rst, 'w') as f:
            f.write(text + '\n')
    if args.json:
        write_json(args.json, results, size, args, load_at_start)
    return 0


if __name__ == '__main__':
    sys.exit(main())
