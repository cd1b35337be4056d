"""One process of a fine-tuning job for tests/test_distributed.py: started
by ``mpiexec -n N`` (a distributed run) or alone (the single-process
reference). Trains the pretrained run of the job given as JSON and writes
this rank's final parameters and persistent values (``rank<R>.npz``) and
its result (``rank<R>.json``) into ``--dump``.

    python tests/mpi_worker.py CONFIG_JSON --dump DIR [--uses]
"""

import argparse
import json
import logging
import os
import sys

import chainer_finetune  # noqa: F401  (before chainer)
import chainer  # noqa: E402
import numpy  # noqa: E402

from chainer_finetune import distributed  # noqa: E402
from chainer_finetune import finetune  # noqa: E402
from chainer_finetune.finetune import datasets as job_data  # noqa: E402


def values_of(model):
    """Every parameter and persistent value of ``model`` by path, as NumPy
    arrays (from any device; scalars as 0-d arrays)."""
    cpu = chainer.backend.CpuDevice()
    out = {}
    for path, param in model.namedparams():
        out['param' + path] = numpy.asarray(cpu.send(param.array))
    for path, link in model.namedlinks():
        for name in sorted(link._persistent):
            value = getattr(link, name)
            if isinstance(value, chainer.get_array_types()):
                value = cpu.send(value)
            # Scalars too: a Caffe BatchNorm's caffe_factor, N.
            out['persistent' + path + '/' + name] = numpy.asarray(value)
    return out


def uses(model, test, config, n_class, source, prefix):
    """What reads a trained model's links, on the model as training left it
    (GlobalBatchNormalization links in a distributed run): the fast
    inference path against Chainer's own functions, export_caffe and the
    exported net loaded back, copy_model into a freshly built classifier.
    Returns the largest differences of their class scores and the values
    copy_model did not copy."""
    from chainer_finetune import copy_model, load_caffe
    from chainer_finetune.export import export_caffe
    x, _ = chainer.dataset.concat_examples([test[i] for i in range(4)])
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        fast = model(x).array
        model.backbone.fast_path = False
        slow = model(x).array
        model.backbone.fast_path = True
        files = export_caffe(model, prefix, input_shape=(1,) + x.shape[1:])
        back = load_caffe(files.caffemodel, files.prototxt)
        exported, = back(inputs={'data': x}, outputs=['head'])
        fresh, _ = finetune.build_classifier(config, n_class, True, source)
        fresh(x[:1])
        report = copy_model(model, fresh)
        copied = fresh(x).array
    return {'fast_vs_slow': float(numpy.abs(fast - slow).max()),
            'export': float(numpy.abs(exported.array - slow).max()),
            'copy': float(numpy.abs(copied - slow).max()),
            'not_copied': [e.path for e in report.skipped]}


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    parser.add_argument('--dump', required=True)
    parser.add_argument('--uses', action='store_true',
                        help='also record what uses() measures')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = finetune.FinetuneConfig(**json.loads(args.config))
    dist = distributed.create_distributed(config.communicator)
    rank = 0 if dist is None else dist.rank
    images, train_set, test_set = job_data.load_split(config)
    n_class = len(images.class_names)
    source = finetune.resolve_source(config)
    model, report = finetune.build_classifier(config, n_class, True, source)
    train, test = job_data.transformed(config, train_set, test_set, source)
    result = finetune.train_one(config, 'pretrained', model, report, train,
                                test, pretrained=True, source=source,
                                dist=dist)
    os.makedirs(args.dump, exist_ok=True)
    checked = uses(model, test, config, n_class, source, os.path.join(
        args.dump, 'rank{}_export'.format(rank))) if args.uses else None
    numpy.savez(os.path.join(args.dump, 'rank{}.npz'.format(rank)),
                **values_of(model))
    with open(os.path.join(args.dump, 'rank{}.json'.format(rank)), 'w') as f:
        json.dump({'accuracy': [e['validation/main/accuracy']
                                for e in result.log],
                   'loss': [e['main/loss'] for e in result.log],
                   'frozen': result.frozen,
                   # The class of every BatchNormalization-like link.
                   'batchnorm': {path: type(link).__name__
                                 for path, link in model.namedlinks()
                                 if hasattr(link, 'avg_var')},
                   'size': 1 if dist is None else dist.size,
                   'uses': checked,
                   'device': dist.device(config.device) if dist
                   else config.device}, f)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
