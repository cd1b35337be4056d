"""One process of a fine-tuning job for tests/test_distributed.py: started
by ``mpiexec -n N`` (a distributed run) or alone (the single-process
reference). Trains the pretrained run of the job given as JSON and writes
this rank's final parameters and persistent values (``rank<R>.npz``) and
its result (``rank<R>.json``) into ``--dump``.

    python tests/mpi_worker.py CONFIG_JSON --dump DIR
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


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    parser.add_argument('--dump', required=True)
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
                   'device': dist.device(config.device) if dist
                   else config.device}, f)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
