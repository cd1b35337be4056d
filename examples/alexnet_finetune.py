#!/usr/bin/env python3
"""Fine-tune BVLC's AlexNet (1000 ImageNet classes) on a 10-class data set.

Usage::

    # with the real model (see README.md, "Fine-tuning AlexNet (example)")
    python examples/alexnet_finetune.py --caffemodel bvlc_alexnet.caffemodel \\
        --data path/to/images --mean imagenet_mean.binaryproto --out result

    # without downloading anything big: random weights of the same shapes
    python examples/alexnet_finetune.py \\
        --generate-caffemodel random_alexnet.caffemodel --data digits

    # a smoke run: two iterations, frozen convolutions cut from backward
    python examples/alexnet_finetune.py --caffemodel bvlc_alexnet.caffemodel \\
        --data images/ --iterations 2 --batchsize 4 --freeze-mode airtight

    # on a GPU, with 4 data-loading processes
    python examples/alexnet_finetune.py --caffemodel bvlc_alexnet.caffemodel \\
        --data list.txt --data-dir images/ --device @cupy:0 --loaderjob 4

    # data-parallel over 2 processes (ChainerMN; pip install
    # "chainer_finetune[mpi]"); --batchsize is the global batch
    mpiexec -n 2 python examples/alexnet_finetune.py \\
        --caffemodel bvlc_alexnet.caffemodel --data images/ --batchsize 32

    # one process per GPU over NCCL
    mpiexec -n 4 python examples/alexnet_finetune.py \\
        --communicator pure_nccl --device '@cupy:{intra_rank}' \\
        --caffemodel bvlc_alexnet.caffemodel --data images/

What it does, in the order of Caffe's fine-tuning recipe
(``models/finetune_flickr_style/solver.prototxt`` in BVLC/caffe):

1. Loads ``bvlc_alexnet.caffemodel`` with
   :func:`chainer_finetune.load_caffe` (``cache=True``: the converted net is
   kept in the per-user cache, so later runs load it in a fraction of the
   time).
2. Builds :class:`AlexNet`, a plain :class:`chainer.Chain` with
   bvlc_alexnet's layer names and shapes and as many outputs as the data
   has classes, and copies the pretrained weights into it with
   :func:`chainer_finetune.copy_model`: conv1 to fc7 are copied, fc8
   (``(1000, 4096)`` in the caffemodel, ``(n_class, 4096)`` here) keeps its
   fresh initialization (Gaussian, std 0.01, as in Caffe's recipe). The
   copy report is printed.
3. Keeps conv1 to conv5 still and trains fc6 to fc8 with MomentumSGD
   (lr 0.001, momentum 0.9) and ``WeightDecay(5e-4)``. Two ways to keep the
   convolutions still (``--freeze-mode``):

   * ``hook`` (default): ``optimizer.add_hook(DelGradient([...]))``, the
     classic Chainer recipe made airtight. Backward still runs through the
     whole net; the hook zeroes the convolutions' gradients and disables
     their update rules.
   * ``airtight``: ``chainer_finetune.freeze(model, ['conv*'])``. It acts on
     the model, so it can do more than a hook: the frozen convolutions run
     without building a graph, so backward stops at fc6 (two to three times
     faster per step on AlexNet, less memory), and a BatchNormalization in a
     frozen part would run in inference mode (AlexNet has none, but a
     ResNet has). See ``docs/freezing.rst``.

   (Caffe's recipe trains every layer and gives the new one ten times the
   learning rate: ``chainer_finetune.set_lr_mult(classifier, {'fc8':
   {'W': 10, 'b': 20}})`` after ``optimizer.setup`` does that; this example
   keeps to the simpler frozen-backbone form.)

4. Trains with Chainer's ``Trainer``: evaluation on the test split, a log
   (``out/log``), a progress bar, loss and accuracy plots
   (``out/loss.png``, ``out/accuracy.png``; needs matplotlib) every epoch
   and at the last iteration, and a snapshot of the trainer at the end.
5. Under ``mpiexec -n N`` (or with ``--communicator``), trains
   data-parallel with ChainerMN: after the single-process recipe above
   (optimizer set up, hook or freeze applied),
   :func:`chainer_finetune.distributed.distribute_recipe` turns it into the
   distributed one (multi-node optimizer, model broadcast from rank 0, each
   rank's slice of every global batch, held-out shards evaluated over all
   ranks); only rank 0 prints, logs, plots and saves. See
   ``docs/distributed.rst``.
6. Prints the final evaluation (the Evaluator's, at the last iteration)
   and saves the fine-tuned model as
   ``out/model.npz`` and ``out/model.h5`` (``chainer.serializers``; load them
   into ``AlexNet(n_class)``). ``chainer_finetune.save_weights`` is not
   used: it stores the weights of a ``CaffeNet`` (a net made by
   ``load_caffe``) by Caffe layer name, not those of a Chain of your own.

Data (``--data``): whatever :func:`chainer_finetune.data.load_images`
accepts: an image folder ``root/<class>/*.jpg``, a Caffe list file of
``path label`` lines (paths relative to ``--data-dir``), or a built-in set
(``digits``, ``fashion-mnist``). ``--train-per-class`` and
``--test-per-class`` images of each class are drawn for training and
testing. Images are prepared as Caffe fed them to AlexNet: resized to
256x256, BGR, minus the ImageNet mean, cropped to 227x227 (random crop and
mirror for training, centre crop for testing).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import chainer_finetune  # noqa: F401  (before chainer: compat patches)

import chainer  # noqa: E402
import chainer.functions as F  # noqa: E402
import chainer.links as L  # noqa: E402
import numpy  # noqa: E402
from chainer import training  # noqa: E402
from chainer.training import extensions  # noqa: E402

from chainer_finetune import distributed  # noqa: E402
from chainer_finetune.errors import DataError  # noqa: E402
from chainer_finetune.errors import FinetuneError  # noqa: E402

logger = logging.getLogger('alexnet_finetune')

#: The convolutions kept still while fc6-fc8 are trained.
FROZEN = ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']

#: ImageNet's per-channel mean in BGR order (``mean_value: 104 117 123``
#: in Caffe prototxts), used when no ``--mean`` file is given.
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)

#: --generate-caffemodel divides conv1's random weights by this (see
#: :func:`generate_caffemodel`).
GENERATED_CONV1_DIVISOR = 500.0

#: Caffe's LRN parameters in bvlc_alexnet (``local_size: 5``,
#: ``alpha: 0.0001``, ``beta: 0.75``, ``k: 1``). Caffe divides alpha by
#: local_size; Chainer's F.local_response_normalization does not, so it gets
#: alpha / n (as chainer_finetune.caffe.layers converts Caffe's LRN).
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_K = 1.0


def local_response_normalization(h: chainer.Variable) -> chainer.Variable:
    """Caffe's LRN (ACROSS_CHANNELS) with bvlc_alexnet's parameters."""
    return F.local_response_normalization(
        h, n=LRN_SIZE, k=LRN_K, alpha=LRN_ALPHA / LRN_SIZE, beta=LRN_BETA)


def max_pool(h: chainer.Variable) -> chainer.Variable:
    """Caffe's 3x3/2 max pooling.

    Caffe rounds the output size up (``ceil((size - 3) / 2) + 1``); so does
    Chainer with ``cover_all=True``: 55 -> 27 -> 13 -> 6 for a 227x227
    input, as in Caffe.
    """
    return F.max_pooling_2d(h, 3, stride=2, cover_all=True)


class AlexNet(chainer.Chain):
    """bvlc_alexnet's network as a Chain, with its layer names and shapes.

    Layers as in BVLC's ``models/bvlc_alexnet/deploy.prototxt``: conv1
    (96x3x11x11, stride 4), ReLU, LRN, max pool 3/2; conv2 (256x48x5x5,
    pad 2, 2 groups), ReLU, LRN, max pool; conv3 (384x256x3x3, pad 1);
    conv4 (384x192x3x3, pad 1, 2 groups); conv5 (256x192x3x3, pad 1,
    2 groups), max pool; fc6 (4096), dropout; fc7 (4096), dropout; fc8
    (``n_class``). With the same weights, :meth:`forward` under
    ``train=False`` computes what Caffe computes for ``fc8``.

    Args:
        n_class: Outputs of fc8.
        fc8_std: Standard deviation of fc8's Gaussian initial weights (its
            bias starts at 0), as in Caffe's fine-tuning recipe.
    """

    def __init__(self, n_class: int = 1000, fc8_std: float = 0.01) -> None:
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, 96, 11, stride=4)
            self.conv2 = L.Convolution2D(96, 256, 5, pad=2, groups=2)
            self.conv3 = L.Convolution2D(256, 384, 3, pad=1)
            self.conv4 = L.Convolution2D(384, 384, 3, pad=1, groups=2)
            self.conv5 = L.Convolution2D(384, 256, 3, pad=1, groups=2)
            self.fc6 = L.Linear(256 * 6 * 6, 4096)
            self.fc7 = L.Linear(4096, 4096)
            self.fc8 = L.Linear(
                4096, n_class,
                initialW=chainer.initializers.Normal(fc8_std))

    def features(self, x) -> chainer.Variable:
        """conv1 to pool5: ``(N, 256, 6, 6)`` for 227x227 inputs."""
        h = max_pool(local_response_normalization(F.relu(self.conv1(x))))
        h = max_pool(local_response_normalization(F.relu(self.conv2(h))))
        h = F.relu(self.conv3(h))
        h = F.relu(self.conv4(h))
        return max_pool(F.relu(self.conv5(h)))

    def forward(self, x) -> chainer.Variable:
        """Class scores (``fc8``, before the softmax)."""
        h = self.features(x)
        h = F.dropout(F.relu(self.fc6(h)), 0.5)
        h = F.dropout(F.relu(self.fc7(h)), 0.5)
        return self.fc8(h)


def pretrained_alexnet(net: chainer.Link, n_class: int
                       ) -> 'tuple[AlexNet, chainer_finetune.CopyReport]':
    """A new :class:`AlexNet` with the weights of ``net`` where they fit.

    Args:
        net: The source, e.g. ``load_caffe('bvlc_alexnet.caffemodel')``.
        n_class: Outputs of the new fc8.

    Returns:
        tuple: The model and the :class:`~chainer_finetune.CopyReport`
        (with 1000 source classes and ``n_class != 1000``: conv1 to fc7
        copied, fc8 skipped for its shape).
    """
    model = AlexNet(n_class)
    report = chainer_finetune.copy_model(net, model)
    return model, report


class _Any:
    """A trigger that fires when any of its triggers fires (all are called
    every time, so that interval triggers keep their state)."""

    def __init__(self, *triggers) -> None:
        self.triggers = [training.triggers.IntervalTrigger(*t)
                         if isinstance(t, tuple) else t for t in triggers]

    def __call__(self, trainer: training.Trainer) -> bool:
        return any([t(trainer) for t in self.triggers])


class RunResult(NamedTuple):
    """What :func:`run` made (for tests and interactive use)."""

    model: AlexNet                       #: the fine-tuned model
    classifier: L.Classifier             #: the model with its loss
    report: Any                          #: chainer_finetune.CopyReport
    train: Any                           #: the training dataset
    test: Any                            #: the test dataset
    class_names: List[str]
    evaluation: Dict[str, float]         #: the final evaluation
    out: str
    device: Any                          #: chainer.backend.Device


def _count(text: str) -> Optional[int]:
    if text == 'all':
        return None
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError('not a count: {!r}'.format(text))
    return n


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses the command line (see ``--help``)."""
    p = argparse.ArgumentParser(
        description='Fine-tune bvlc_alexnet on your classes (conv1-conv5 '
                    'frozen, fc6-fc8 trained).',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--caffemodel', help='bvlc_alexnet.caffemodel (or a file '
                   'of the same structure)')
    p.add_argument('--generate-caffemodel', metavar='PATH',
                   help='write a caffemodel with bvlc_alexnet\'s structure '
                   'and RANDOM weights to PATH (an existing file is not '
                   'overwritten) and use it unless --caffemodel is given; '
                   'without --data, only write it')
    p.add_argument('--no-cache', action='store_true',
                   help='convert the caffemodel without the per-user cache')
    p.add_argument('--data', help='image folder root/<class>/*, a Caffe list '
                   'file "path label", or digits / fashion-mnist')
    p.add_argument('--data-dir', help='root of the paths in a list file')
    p.add_argument('--train-per-class', type=_count, default=100,
                   help='training images per class ("all": all but the '
                   'test images)')
    p.add_argument('--test-per-class', type=_count, default=20,
                   help='test images per class')
    p.add_argument('--mean', help='mean image (imagenet_mean.binaryproto); '
                   'default: the per-channel mean {} (BGR)'.format(
                       IMAGENET_MEAN_BGR))
    p.add_argument('--freeze-mode', choices=('hook', 'airtight'),
                   default='hook',
                   help='hook: DelGradient optimizer hook (full backward); '
                   'airtight: chainer_finetune.freeze (backward stops at '
                   'fc6)')
    p.add_argument('--lr', type=float, default=0.001, help='learning rate')
    p.add_argument('--momentum', type=float, default=0.9)
    p.add_argument('--weight-decay', type=float, default=5e-4)
    p.add_argument('--batchsize', '-b', type=int, default=32)
    p.add_argument('--epoch', '-e', type=int, default=10)
    p.add_argument('--iterations', type=int,
                   help='stop after this many iterations instead (smoke '
                   'runs)')
    p.add_argument('--device', '-d', default='-1',
                   help='-1 or @numpy (CPU), 0 or @cupy:0 (GPU 0)')
    p.add_argument('--loaderjob', '-j', type=int, default=0,
                   help='data-loading processes (0: load in this process)')
    p.add_argument('--seed', type=int, default=0,
                   help='seed of the split, fc8\'s initialization, crops and '
                   'dropout')
    p.add_argument('--out', '-o', default='result', help='output directory')
    p.add_argument('--communicator', choices=distributed.COMMUNICATORS +
                   ('none',),
                   help='ChainerMN communicator of a data-parallel run '
                   '(default: naive when started by mpiexec -n N, N > 1, '
                   'else one process); --batchsize is then the global batch '
                   'and --device may say @cupy:{intra_rank}')
    p.add_argument('--verbose', '-v', action='store_true',
                   help='show the library\'s INFO logs')
    args = p.parse_args(argv)
    if args.caffemodel is None and args.generate_caffemodel is None:
        p.error('give --caffemodel or --generate-caffemodel')
    if args.iterations is not None and args.iterations < 1:
        p.error('--iterations must be positive')
    return args


def generate_caffemodel(path: str) -> None:
    """Writes a caffemodel with bvlc_alexnet's exact structure and random
    weights (about 233 MiB), unless ``path`` exists.

    The layout is the released file's (a TRAIN-phase ``Data`` layer and a
    ``loss`` head around the deploy net's layers). The weights are
    He-scaled (:func:`chainer_finetune.caffe.zoo_shapes.alexnet_writer`),
    conv1's divided by :data:`GENERATED_CONV1_DIVISOR`. He scaling keeps
    the input's scale (pixels minus the mean: tens) through the whole net,
    and features that large and dense make fine-tuning with lr 0.001
    diverge (NaN within 20 iterations on ``digits``); with conv1 divided by
    500 the training loss starts near ln(10) and stays stable.
    """
    if os.path.exists(path):
        logger.warning('%s exists; not overwritten, using it as it is', path)
        return
    from chainer_finetune.caffe.writer import RandomBlob
    from chainer_finetune.caffe.zoo_shapes import alexnet_writer
    writer = alexnet_writer(train=True)
    weights, bias = writer.blobs('conv1')
    writer.set_blobs('conv1', [
        RandomBlob(weights.shape, std=weights.std / GENERATED_CONV1_DIVISOR,
                   seed=weights.seed), bias])
    writer.write_caffemodel(path)
    logger.warning('wrote %s: bvlc_alexnet\'s structure with RANDOM weights '
                   '(not pretrained; for trying this script only)', path)


def _make_iterator(dataset, batchsize: int, train: bool, n_processes: int):
    if n_processes > 0:
        return chainer.iterators.MultiprocessIterator(
            dataset, batchsize, repeat=train, shuffle=train,
            n_processes=n_processes)
    return chainer.iterators.SerialIterator(dataset, batchsize, repeat=train,
                                            shuffle=train)


def _datasets(args: argparse.Namespace):
    from chainer_finetune.caffe.preprocessing import CaffePreprocessor
    from chainer_finetune.data import CaffeTransform
    from chainer_finetune.data import load_images
    from chainer_finetune.data import make_dataset
    from chainer_finetune.data import split_per_class

    images = load_images(args.data, data_dir=args.data_dir)
    train, test = split_per_class(images, args.train_per_class,
                                  args.test_per_class, seed=args.seed)
    mean = chainer_finetune.load_mean(args.mean) if args.mean \
        else IMAGENET_MEAN_BGR
    prep = CaffePreprocessor(mean=mean, resize=(256, 256), crop=227,
                             mirror=True)
    # One seed for one process; the workers of a MultiprocessIterator would
    # repeat each other's crops with it, so they seed from the OS instead.
    seed = args.seed if args.loaderjob == 0 else None
    train_ds = make_dataset(train, CaffeTransform(prep, train=True,
                                                  seed=seed))
    test_ds = make_dataset(test, CaffeTransform(prep, train=False))
    return list(images.class_names), train_ds, test_ds


def evaluate(classifier: chainer.Link, dataset, batchsize: int,
             device: Any, n_processes: int = 0) -> Dict[str, float]:
    """Loss and accuracy of ``classifier`` on ``dataset`` (train=False).

    Returns:
        dict: ``{'validation/main/loss': ..., 'validation/main/accuracy':
        ...}``, as the trainer's Evaluator reports them.
    """
    iterator = _make_iterator(dataset, batchsize, False, n_processes)
    try:
        evaluator = extensions.Evaluator(iterator, classifier, device=device)
        evaluator.name = 'validation'   # what a Trainer names it
        result = evaluator()
    finally:
        iterator.finalize()
    return {k: float(v) for k, v in result.items()}


def _quiet(*args, **kwargs) -> None:
    """print() of the ranks other than 0 (they print nothing but errors)."""


def _iterators(args: argparse.Namespace, dist, classifier, optimizer,
               train_ds, test_ds, device):
    """The optimizer, iterators and evaluator: the single-process ones, or
    (``dist``) the distributed recipe made from them."""
    if dist is None:
        train_iter = _make_iterator(train_ds, args.batchsize, True,
                                    args.loaderjob)
        test_iter = _make_iterator(test_ds, args.batchsize, False,
                                   args.loaderjob)
        return optimizer, train_iter, test_iter, extensions.Evaluator(
            test_iter, classifier, device=device)
    if args.loaderjob and dist.is_root:
        logger.warning('--loaderjob is not used in a distributed run: each '
                       'process loads its slice of every batch itself')
    # The multi-node optimizer (model broadcast from rank 0), this rank's
    # slice of every global batch, the held-out shards over all ranks.
    recipe = distributed.distribute_recipe(
        dist, classifier, optimizer, train_ds, test_ds, args.batchsize,
        seed=args.seed, device=device)
    return (recipe.optimizer, recipe.train_iter, recipe.test_iter,
            recipe.evaluator)


def _extend_writers(trainer: training.Trainer, stop, say) -> None:
    """Log, plots, progress and the final snapshot (rank 0's only)."""
    # Every epoch and at the last iteration (also when that ends no epoch).
    def every_epoch_and_end() -> _Any:
        return _Any((1, 'epoch'), stop)

    trainer.extend(extensions.LogReport(trigger=every_epoch_and_end()))
    if extensions.PlotReport.available():
        import matplotlib
        matplotlib.use('Agg')      # files only, no display needed
        trainer.extend(extensions.PlotReport(
            ['main/loss', 'validation/main/loss'], 'iteration',
            trigger=every_epoch_and_end(), filename='loss.png'))
        trainer.extend(extensions.PlotReport(
            ['main/accuracy', 'validation/main/accuracy'], 'iteration',
            trigger=every_epoch_and_end(), filename='accuracy.png'))
    else:
        say('matplotlib is not installed: no loss/accuracy plots '
            '(pip install matplotlib)')
    trainer.extend(extensions.PrintReport(
        ['epoch', 'iteration', 'main/loss', 'validation/main/loss',
         'main/accuracy', 'validation/main/accuracy', 'elapsed_time']))
    trainer.extend(extensions.ProgressBar(update_interval=10))
    # Uncompressed: zlib gains little on float weights and takes 100 times
    # as long as writing them (tens of seconds for AlexNet).
    trainer.extend(extensions.snapshot(
        savefun=functools.partial(chainer.serializers.save_npz,
                                  compression=False),
        filename='snapshot_iter_{.updater.iteration}'),
        trigger=training.triggers.IntervalTrigger(*stop))


def run(args: argparse.Namespace) -> RunResult:
    """Loads, copies, freezes, trains, evaluates and saves (see the module
    docstring).

    Args:
        args: From :func:`parse_args`; ``args.data`` must be set.

    Returns:
        RunResult: The fine-tuned model and what was made on the way (on
        every rank of a distributed run; rank 0 wrote the files).
    """
    dist = distributed.create_distributed(args.communicator)
    root = dist is None or dist.is_root
    say = print if root else _quiet
    if dist is not None:
        # Before anything is loaded: a batch the ranks cannot share.
        distributed.per_rank_batch(args.batchsize, dist.size)
    if root:
        os.makedirs(args.out, exist_ok=True)
    device = chainer.get_device(dist.device(args.device) if dist
                                else args.device)
    device.use()
    numpy.random.seed(args.seed)   # fc8's initialization, dropout

    class_names, train_ds, test_ds = _datasets(args)
    say('data: {} classes, {} training and {} test images'.format(
        len(class_names), len(train_ds), len(test_ds)))

    caffemodel = args.caffemodel or args.generate_caffemodel
    # Rank 0 first: it fills the cache of converted nets for the others.
    net = distributed.root_first(dist, lambda: chainer_finetune.load_caffe(
        caffemodel, cache=not args.no_cache))
    model, report = pretrained_alexnet(net, len(class_names))
    del net                        # the copy holds its own arrays
    say(report)

    classifier = L.Classifier(model)
    classifier.to_device(device)
    optimizer = chainer.optimizers.MomentumSGD(lr=args.lr,
                                               momentum=args.momentum)
    optimizer.setup(classifier)
    if args.freeze_mode == 'hook':
        # First, so that hooks added later see the zeroed gradients.
        optimizer.add_hook(chainer_finetune.DelGradient(FROZEN,
                                                        model=classifier))
    else:
        # After setup: setup makes new (enabled) update rules.
        frozen = chainer_finetune.freeze(model, ['conv*'])
        say('frozen: {}'.format(', '.join(frozen)))
    optimizer.add_hook(chainer.optimizer_hooks.WeightDecay(args.weight_decay))

    optimizer, train_iter, test_iter, evaluator = _iterators(
        args, dist, classifier, optimizer, train_ds, test_ds, device)
    updater = training.updaters.StandardUpdater(train_iter, optimizer,
                                                device=device)
    stop = (args.iterations, 'iteration') if args.iterations \
        else (args.epoch, 'epoch')
    trainer = training.Trainer(updater, stop, out=args.out)
    trainer.extend(evaluator, trigger=_Any((1, 'epoch'), stop))
    if dist is not None:
        # The log shows the global batch's loss, not this rank's part's.
        trainer.extend(distributed.ObservationAverager(
            ('main/loss', 'main/accuracy'), dist))
    if root:
        _extend_writers(trainer, stop, say)
    try:
        trainer.run()
    finally:
        for it in (train_iter, test_iter):
            finalize = getattr(it, 'finalize', None)
            if finalize is not None:
                finalize()

    # The final evaluation: the Evaluator ran at the last iteration (its
    # trigger includes the end), so its results are in the trainer's last
    # observation; evaluating the same model on the same data again would
    # give the same numbers. Without them (no iteration ran), evaluate now.
    evaluation = {k: v for k, v in trainer.observation.items()
                  if k.startswith('validation/')}
    if not evaluation:
        evaluation = evaluate(classifier, test_ds, args.batchsize, device,
                              args.loaderjob)
    evaluation = {k: float(v) for k, v in evaluation.items()}
    say('final evaluation: ' + ', '.join(
        '{} {:.4f}'.format(k, v) for k, v in sorted(evaluation.items())))
    if root:
        _save(model, args.out, len(class_names))
    return RunResult(model, classifier, report, train_ds, test_ds,
                     class_names, evaluation, args.out, device)


def _save(model: chainer.Link, out: str, n_class: int) -> None:
    chainer.serializers.save_npz(os.path.join(out, 'model.npz'), model,
                                 compression=False)
    chainer.serializers.save_hdf5(os.path.join(out, 'model.h5'), model,
                                  compression=0)
    print('saved {0}/model.npz and {0}/model.h5 (load into AlexNet({1}) '
          'with chainer.serializers.load_npz / load_hdf5)'.format(
              out, n_class))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    # Configures logging only where nobody did (not under pytest, say).
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(format='%(levelname)s %(name)s: %(message)s',
                        level=level)
    logger.setLevel(logging.INFO)
    if args.generate_caffemodel:
        generate_caffemodel(args.generate_caffemodel)
    if args.data is None:
        if args.generate_caffemodel:
            return 0
        print('--data is required for fine-tuning', file=sys.stderr)
        return 2
    try:
        run(args)
    except (chainer_finetune.CaffeModelError, DataError,
            FinetuneError) as e:
        print('error: {}'.format(e), file=sys.stderr)
        # One of several MPI processes: the others must not wait for it.
        distributed.abort_job(1)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
