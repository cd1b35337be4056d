"""What a fine-tuning job does (:class:`FinetuneConfig`, :data:`DEMO`) and
the Caffe model it fine-tunes, located once (:class:`ModelSource`).

A known model (:data:`chainer_finetune.hub.MODELS`) is fetched by
:func:`resolve_source` once per job and declares its preprocessing and head
(mean, input size, input blob, classifier layer); for a model of the user's
own these are guessed: the ImageNet mean, :data:`DEFAULT_INPUT_SIZE`, the
net's one input and its last InnerProduct layer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, List, Optional

from chainer_finetune import hub
from chainer_finetune.caffe.loader import load_mean
from chainer_finetune.errors import FinetuneError

logger = logging.getLogger(__name__)

#: Per-channel mean (BGR) for a model of the user's own without a mean
#: file: the ImageNet mean most Model Zoo models were trained with.
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)

#: Input side (pixels) for a model of the user's own.
DEFAULT_INPUT_SIZE = 224

#: Augmentations :class:`FinetuneConfig` accepts.
AUGMENTATIONS = ('none', 'crop', 'crop+mirror')


@dataclasses.dataclass
class FinetuneConfig:
    """What :func:`run_finetune` does.

    Attributes:
        caffemodel: Path of a ``.caffemodel``, or the name of a model
            :mod:`chainer_finetune.hub` fetches (``'open_nsfw'``).
        prototxt: Optional deploy prototxt (for a fetched model, its own).
        mean: Optional ``mean.binaryproto``; default: the known model's
            declared mean, else :data:`IMAGENET_MEAN_BGR` per channel.
        data: What :func:`chainer_finetune.data.load_images` accepts: an
            image folder, a list file, ``'digits'``, ``'fashion-mnist'``.
        data_dir: Its ``data_dir``: where the data set's files are.
        n_class: Number of classes; default: the data set's.
        feature_layer: A blob of the Caffe net: the classifier is global
            average pooling of it, a BatchNormalization and a Linear layer.
            None replaces the net's classifier layer instead (a known
            model's declared one, else its last InnerProduct layer).
        input_size: Side of the square input images (pixels); None: the
            known model's declared size, else :data:`DEFAULT_INPUT_SIZE`.
        train_per_class: Training images per class (None: all).
        test_per_class: Held-out images per class (None: all the rest).
        freeze: Link patterns (Caffe layer names or globs) of the pretrained
            net to freeze; ``['*']`` (default) freezes all of it.
        unfreeze_at: Epoch at which the frozen layers named by
            ``unfreeze`` are unfrozen (None: never).
        unfreeze: What ``unfreeze_at`` unfreezes (default: ``freeze``).
        lr_mult_from_prototxt: Apply the prototxt's ``lr_mult`` /
            ``decay_mult`` (Caffe's fine-tuning recipes).
        epochs: Training epochs.
        batchsize: Minibatch size.
        lr: Adam's step size (``alpha``).
        weight_decay: Adam's decoupled weight decay rate.
        augment: ``'none'``, ``'crop'`` (resize to 1/8 more than
            ``input_size``, random crop) or ``'crop+mirror'``.
        device: Chainer device (``'@numpy'``, ``'@cupy:0'``, ``-1``, ``0``).
        out: Output directory. One that already holds a run's results
            (``report.md``, ``accuracy.png``, ``pretrained/`` or
            ``scratch/``) is refused unless ``overwrite``.
        overwrite: Write into an ``out`` that holds an earlier run's
            results, replacing them.
        compare_scratch: Also train the same network from random weights.
        seed: Seed of the data split, the new layers and the augmentation.
        loaderjob: Worker processes for data loading (0: in-process),
            also decoding every image once before training.
        feature_cache: ``'auto'`` (default), ``'off'``, ``'ram'`` or
            ``'disk'``: compute the frozen backbone's features once per
            image and train the head on them, where that gives the same
            run (whole backbone frozen, ``augment='none'``, no
            ``unfreeze_at``; see
            :mod:`chainer_finetune.finetune.feature_cache`).
        skip_bad_images: Leave out, with a warning listing them, the image
            files that cannot be decoded, instead of failing the job.
        communicator: ChainerMN communicator of a data-parallel run
            (:data:`chainer_finetune.distributed.COMMUNICATORS`); None:
            ``naive`` when started by ``mpiexec -n N`` with N > 1, else one
            process; ``'none'``: one process. ``batchsize`` is then the
            global batch, split evenly over the processes.
        sync_batchnorm: In a distributed run, trainable
            BatchNormalization (the new head's and the Caffe net's
            BatchNorm layers) normalizes with the statistics of the whole
            global batch (ChainerMN's MultiNodeBatchNormalization), as one
            process would; False: with each process's part (the running
            statistics are then averaged over the processes every epoch
            and checkpoint).
        checkpoint_every: Write ``checkpoint.npz`` (the whole trainer
            state) into each run's directory every this many iterations
            (None: never).
        resume: Continue each run from its ``checkpoint.npz`` (a run
            without one starts anew); ``out`` may hold the earlier results.
    """

    caffemodel: str = 'open_nsfw'
    prototxt: Optional[str] = None
    mean: Optional[str] = None
    data: str = 'digits'
    data_dir: Optional[str] = None
    n_class: Optional[int] = None
    feature_layer: Optional[str] = None
    input_size: Optional[int] = None
    train_per_class: Optional[int] = None
    test_per_class: Optional[int] = None
    freeze: List[str] = dataclasses.field(default_factory=lambda: ['*'])
    unfreeze_at: Optional[float] = None
    unfreeze: Optional[List[str]] = None
    lr_mult_from_prototxt: bool = False
    epochs: int = 10
    batchsize: int = 10
    lr: float = 0.001
    weight_decay: float = 0.0
    augment: str = 'crop+mirror'
    device: str = '@numpy'
    out: str = 'result'
    overwrite: bool = False
    compare_scratch: bool = False
    seed: int = 0
    loaderjob: int = 0
    skip_bad_images: bool = False
    communicator: Optional[str] = None
    sync_batchnorm: bool = True
    checkpoint_every: Optional[int] = None
    resume: bool = False
    feature_cache: str = 'auto'


#: What a job writes directly into its output directory: the report, the
#: accuracy plot and one directory per run (its log, plots and
#: ``best_model.npz``). Any of them there means an earlier run's results.
#: What a job writes into ``out``: the report, the plot of both runs and
#: one directory per run (pretrained, then from scratch).
REPORT_FILE = 'report.md'
PLOT_FILE = 'accuracy.png'
RUN_NAMES = ('pretrained', 'scratch')
#: The trainer state written every ``checkpoint_every`` iterations into a
#: run's directory, and read back by ``resume``.
CHECKPOINT_FILE = 'checkpoint.npz'
RESULT_NAMES = (REPORT_FILE, PLOT_FILE) + RUN_NAMES

#: What each run directory holds for prediction: the weights of the epoch
#: with the best held-out accuracy, and the description that rebuilds its
#: classifier and preprocessing (:mod:`chainer_finetune.finetune.model_file`).
WEIGHTS_FILE = 'best_model.npz'
MODEL_FILE = 'model.json'


def check_output_dir(config: FinetuneConfig) -> None:
    """Refuses an output directory holding an earlier run's results
    (unless ``config.overwrite``), before anything is loaded or trained.

    Raises:
        FinetuneError: ``config.out`` holds one of :data:`RESULT_NAMES`
            (a job that resumes continues in it).
    """
    if config.overwrite or config.resume:
        return
    found = [name for name in RESULT_NAMES
             if os.path.lexists(os.path.join(config.out, name))]
    if found:
        raise FinetuneError(
            '{}: holds the results of an earlier run ({}); choose another '
            '--out, or pass --overwrite (FinetuneConfig.overwrite=True) to '
            'replace them'.format(config.out, ', '.join(found)))


#: The built-in demonstration (see docs/api.rst), sized to finish in a few
#: minutes on 2 CPU cores.
DEMO = dict(caffemodel='open_nsfw', data='digits',
            feature_layer='eltwise_stage2_block5', input_size=64,
            train_per_class=10, test_per_class=50, epochs=10, batchsize=10,
            lr=0.001, augment='crop', compare_scratch=True)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a job's Caffe model is and what it declares.

    Attributes:
        name: The model as the configuration names it (a path or a known
            model's name), for the report.
        caffemodel: Path of the ``.caffemodel``.
        prototxt: Path of the deploy prototxt, or None.
        known: The declaration of a known model
            (:class:`~chainer_finetune.hub.KnownModel`), or None for a
            model of the user's own.
    """

    name: str
    caffemodel: str
    prototxt: Optional[str]
    known: Optional[hub.KnownModel] = None

    def declared(self, field: str, default: Any = None) -> Any:
        """A known model's declaration (a
        :class:`~chainer_finetune.hub.KnownModel` field such as
        ``'mean_bgr'``, ``'input_size'``, ``'input_blob'``,
        ``'feature_blob'``, ``'classifier_layer'``); ``default`` for a model
        of the user's own or a fact it does not declare."""
        value = getattr(self.known, field) if self.known else None
        return default if value is None else value


def resolve_source(config: FinetuneConfig) -> ModelSource:
    """Locates the configuration's model, fetching a known one by name
    (:func:`chainer_finetune.hub.locate_model`).

    Raises:
        ModelFetchError: a known model that cannot be fetched.
    """
    name = config.caffemodel
    source = ModelSource(name, *hub.locate_model(name, config.prototxt))
    if config.mean is None and source.declared('mean_bgr') is None:
        logger.info('%s declares no mean and no --mean was given: '
                    'subtracting the ImageNet mean %s (BGR)', name,
                    IMAGENET_MEAN_BGR)
    return source


def resolve_mean(config: FinetuneConfig, source: ModelSource) -> Any:
    """The mean subtracted from the input: the configuration's mean file,
    else the known model's declared mean, else :data:`IMAGENET_MEAN_BGR`."""
    if config.mean:
        return load_mean(config.mean)
    return source.declared('mean_bgr', IMAGENET_MEAN_BGR)


def resolve_input_size(config: FinetuneConfig, source: ModelSource) -> int:
    """The input side: the configuration's, else the known model's
    declared size, else :data:`DEFAULT_INPUT_SIZE`."""
    if config.input_size is not None:
        return config.input_size
    return source.declared('input_size', DEFAULT_INPUT_SIZE)
