#!/usr/bin/env python3
"""Draw the docs' charts from real runs of the library.

Usage (from anywhere; paths are resolved relative to this repository)::

    python tools/pictures.py accuracy [--seeds 0 1 2]  # runs the demo
    python tools/pictures.py load [--quick]    # runs benchmarks/load.py
    python tools/pictures.py parity            # coverage_table.py's data
    python tools/pictures.py layout            # tools/package_diagram.py
    python tools/pictures.py detection         # tools/detection_pictures.py

Each writes an SVG (and the data it drew, as JSON) into
``docs/_static/pictures/``:

``accuracy``
    Runs the README's demo, ``chainer-finetune finetune --seed S --out
    DIR/seedS`` (open_nsfw fine-tuned on 100 digits against the same net
    from scratch), once per seed, and draws the held-out accuracy per epoch
    of both runs of every seed from the job's own logs. A run directory
    that already holds a report is reused (``--rerun`` runs it again, with
    ``--overwrite``); ``--runs`` (default ``.cache/pictures/demo``) holds
    them.
``load``
    Runs ``benchmarks/load.py --json`` (VGG-16, 553 MB; ``--quick``: the
    44 MB narrower VGG) and draws each loader's median CPU time (its wall
    time written beside) and net peak memory: ``load_caffe`` with and
    without its cache, Chainer's ``CaffeFunction``, OpenCV's
    ``readNetFromCaffe`` and the floor.
    ``--from FILE`` draws an earlier ``--json`` file instead.
``parity``
    Draws the worst relative L2 error of any blob against OpenCV, per real
    model and photograph, from ``parity.json``, which
    ``tools/coverage_table.py`` writes with the table of docs/coverage.rst
    (run that first to measure again).
``layout``, ``detection``
    Run the sibling scripts that draw the package diagram and the detection
    pictures.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
from typing import Dict, List, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_DIR = os.path.join(ROOT, 'docs', '_static', 'pictures')
PARITY_JSON = os.path.join(OUTPUT_DIR, 'parity.json')

logger = logging.getLogger('pictures')

#: The tests' tolerances on the worst blob rel-L2 against OpenCV
#: (tests/test_open_nsfw.py, tests/test_detectors.py), drawn as lines.
PARITY_TOLERANCES = {'open_nsfw': 1e-5, 'detectors': 1e-4}
#: float32's machine epsilon: the error of one rounding.
FLOAT32_EPS = 2.0 ** -23
#: Where the parity chart's log axis (and its bars) start.
PARITY_AXIS_FROM = 1e-8
#: Colours: ours, the references.
OURS, REFERENCE, FLOOR = '#2563eb', '#9ca3af', '#f59e0b'


def pyplot():
    """matplotlib's pyplot on the Agg backend, set up for small SVGs
    (text kept as text, no date, fixed ids)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    plt.rcParams.update({'svg.fonttype': 'none', 'svg.hashsalt': 'docs',
                         'font.size': 10, 'axes.spines.top': False,
                         'axes.spines.right': False})
    return plt


def save(fig, name: str) -> str:
    """Writes the figure as ``docs/_static/pictures/NAME.svg``."""
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    path = os.path.join(OUTPUT_DIR, name + '.svg')
    fig.savefig(path, metadata={'Date': None, 'Creator': None})
    logger.info('wrote %s (%d bytes)', os.path.relpath(path, ROOT),
                os.path.getsize(path))
    return path


def write_json(name: str, data) -> None:
    """Writes the data a chart was drawn from beside it, as JSON."""
    with open(os.path.join(OUTPUT_DIR, name + '.json'), 'w',
              encoding='utf-8') as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write('\n')


def run_script(args: Sequence[str]) -> None:
    """Runs a command of this checkout (its package first on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    logger.info('$ %s', ' '.join(args))
    done = subprocess.run([sys.executable] + list(args), cwd=ROOT, env=env,
                          check=False)
    if done.returncode != 0:
        raise SystemExit('{} failed ({})'.format(' '.join(args),
                                                 done.returncode))


# ---------------------------------------------------------------------------
# The demo's accuracy per epoch
# ---------------------------------------------------------------------------

def demo_run(runs_dir: str, seed: int, rerun: bool) -> str:
    """The directory of the demo job with this seed, run first if needed."""
    out = os.path.join(runs_dir, 'seed{}'.format(seed))
    if rerun or not os.path.exists(os.path.join(out, 'report.md')):
        run_script(['-m', 'chainer_finetune', 'finetune', '--seed',
                    str(seed), '--out', out] + (['--overwrite'] if rerun
                                                 else []))
    return out


def held_out(run_dir: str, name: str) -> List[float]:
    """Held-out accuracy per epoch of one run, from its LogReport log."""
    with open(os.path.join(run_dir, name, 'log'), encoding='utf-8') as f:
        log = json.load(f)
    return [entry['validation/main/accuracy'] for entry in log]


def draw_accuracy(curves: Dict[int, Dict[str, List[float]]]) -> None:
    """Held-out accuracy per epoch: one line per seed and run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    styles = {'pretrained': (OURS, 'o'), 'scratch': (REFERENCE, 's')}
    for name, (colour, marker) in styles.items():
        for i, (seed, runs) in enumerate(sorted(curves.items())):
            values = runs[name]
            ax.plot(range(1, len(values) + 1), values, color=colour,
                    marker=marker, markersize=3.5, linewidth=1.3,
                    alpha=0.9, label='{} ({} {}; final {})'.format(
                        name, 'seeds' if len(curves) > 1 else 'seed',
                        ', '.join(str(s) for s in sorted(curves)),
                        ', '.join('{:.3f}'.format(r[name][-1])
                                  for _, r in sorted(curves.items())))
                    if i == 0 else None)
    ax.set_xlabel('epoch')
    ax.set_ylabel('held-out accuracy (500 digits)')
    ax.set_ylim(0, 1)
    ax.set_xticks(range(1, max(len(r['pretrained'])
                               for r in curves.values()) + 1))
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right', fontsize=9, frameon=False)
    fig.tight_layout()
    save(fig, 'demo_accuracy')
    plt.close(fig)


def accuracy(args) -> None:
    """``accuracy``: runs (or reuses) the demo per seed, draws it."""
    curves = {}
    for seed in args.seeds:
        out = demo_run(args.runs, seed, args.rerun)
        curves[seed] = {name: held_out(out, name)
                        for name in ('pretrained', 'scratch')}
        logger.info('seed %d: pretrained %.3f, scratch %.3f', seed,
                    curves[seed]['pretrained'][-1],
                    curves[seed]['scratch'][-1])
    draw_accuracy(curves)
    write_json('demo_accuracy', {str(s): c for s, c in curves.items()})


# ---------------------------------------------------------------------------
# The load benchmark
# ---------------------------------------------------------------------------

def draw_load(data: dict) -> None:
    """CPU seconds (wall seconds beside) and net peak memory per loader.

    CPU time, because on a shared machine the wall time also counts other
    processes' turns; the wall time of each row is written beside its bar.
    """
    plt = pyplot()
    rows = data['rows']
    labels = [row['label'].replace(' (', '\n(') for row in rows]
    colours = [OURS if row['mode'].startswith('load_caffe') else
               FLOOR if row['mode'] == 'floor' else REFERENCE
               for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.6, 3.4),
                                      sharey=True)
    positions = list(range(len(rows)))[::-1]
    memory = [(row['peak'] - data['baseline_peak']) / data['file_bytes']
              for row in rows]
    panels = (
        (left, [row['cpu_seconds'] for row in rows],
         ['{:.2f} s (wall {:.2f} s)'.format(row['cpu_seconds'],
                                            row['seconds']) for row in rows],
         'median CPU seconds (lower is better)'),
        (right, memory, ['{:.2f}x'.format(m) for m in memory],
         'net peak RSS / file size'))
    for ax, values, texts, title in panels:
        ax.barh(positions, values, color=colours)
        for y, value, text in zip(positions, values, texts):
            ax.text(value, y, ' ' + text, va='center', fontsize=8.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, max(values) * 1.45)
        ax.tick_params(axis='y', length=0)
    left.set_yticks(positions)
    left.set_yticklabels(labels, fontsize=9)
    fig.suptitle('{} caffemodel, {:.0f} MB; median of {} fresh processes; '
                 '{} CPUs, load average {} at the start'.format(
                     'narrow VGG (--quick)' if data['quick'] else 'VGG-16',
                     data['file_bytes'] / 1e6, data['repeat'], data['cpus'],
                     data['load_at_start'].split()[0]), fontsize=9.5)
    fig.tight_layout()
    save(fig, 'load_benchmark_quick' if data['quick'] else 'load_benchmark')
    plt.close(fig)


def load(args) -> None:
    """``load``: runs the load benchmark (or reads ``--from``), draws it."""
    if args.source:
        with open(args.source, encoding='utf-8') as f:
            data = json.load(f)
    else:
        os.makedirs(os.path.join(ROOT, '.cache', 'pictures'), exist_ok=True)
        target = os.path.join(ROOT, '.cache', 'pictures', 'load.json')
        run_script([os.path.join('benchmarks', 'load.py'), '--json', target,
                    '--repeat', str(args.repeat)] +
                   (['--quick'] if args.quick else []))
        with open(target, encoding='utf-8') as f:
            data = json.load(f)
    draw_load(data)
    write_json('load_benchmark_quick' if data['quick'] else 'load_benchmark',
               data)


# ---------------------------------------------------------------------------
# Parity with OpenCV on real models
# ---------------------------------------------------------------------------

def draw_parity(data: dict) -> None:
    """Worst blob rel-L2 per model and photo, log scale, with the tests'
    tolerances and float32's epsilon for scale."""
    plt = pyplot()
    models = data['models']
    photos = data['photos']
    fig, ax = plt.subplots(figsize=(7.2, 1.0 + 0.8 * len(models)))
    height = 0.8 / len(photos)
    cmap = plt.get_cmap('Blues')
    for j, photo in enumerate(photos):
        ys = [len(models) - 1 - i + (len(photos) / 2 - j - 0.5) * height
              for i in range(len(models))]
        ax.barh(ys, [m['worst_by_photo'][photo] - PARITY_AXIS_FROM
                     for m in models],
                height=height * 0.9, left=PARITY_AXIS_FROM,
                color=cmap(0.35 + 0.55 * j / max(1, len(photos) - 1)),
                label=photo)
    for value, text, style in (
            (FLOAT32_EPS, 'float32 epsilon', ':'),
            (PARITY_TOLERANCES['open_nsfw'], 'tolerance, open_nsfw test',
             '--'),
            (PARITY_TOLERANCES['detectors'], 'tolerance, detector tests',
             '-')):
        ax.axvline(value, color='#6b7280', linestyle=style, linewidth=1,
                   label=text)
    ax.set_xscale('log')
    ax.set_xlim(PARITY_AXIS_FROM, 1e-3)
    ax.set_ylim(-0.5, len(models) - 0.5)
    ax.set_yticks(range(len(models))[::-1])
    ax.set_yticklabels(['{}\n({} blobs)'.format(m['name'], m['compared'])
                        for m in models], fontsize=9)
    ax.set_xlabel('worst relative L2 error of any blob against OpenCV {}'
                  .format(data['opencv']))
    ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    fig.tight_layout()
    save(fig, 'parity')
    plt.close(fig)


def parity(args) -> None:
    """``parity``: draws coverage_table.py's measurements."""
    with open(args.source, encoding='utf-8') as f:
        draw_parity(json.load(f))


# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    p = commands.add_parser('accuracy', help="the demo's accuracy per epoch")
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--runs', default=os.path.join(ROOT, '.cache', 'pictures',
                                                  'demo'))
    p.add_argument('--rerun', action='store_true',
                   help='run the job again where it has run before')
    p.set_defaults(func=accuracy)
    p = commands.add_parser('load', help='the load benchmark')
    p.add_argument('--quick', action='store_true')
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--from', dest='source',
                   help='draw this benchmarks/load.py --json file')
    p.set_defaults(func=load)
    p = commands.add_parser('parity', help='worst rel-L2 per real model')
    p.add_argument('--from', dest='source', default=PARITY_JSON)
    p.set_defaults(func=parity)
    for name, script in (('layout', 'package_diagram.py'),
                         ('detection', 'detection_pictures.py')):
        p = commands.add_parser(name, help='runs tools/' + script)
        p.set_defaults(func=lambda args, script=script: run_script(
            [os.path.join('tools', script)]))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args.func(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
