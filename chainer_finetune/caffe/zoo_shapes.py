"""Two published Caffe architectures, declared with random weights.

BVLC AlexNet (``bvlc_alexnet``) and VGG-16 (``VGG_ILSVRC_16_layers``) with
the released models' layer names, parameters and blob shapes, and seeded,
He-scaled :class:`~chainer_finetune.caffe.writer.RandomBlob` weights
generated while the file is written: stand-ins of the real models where
only the architecture and the file size matter (the AlexNet example's
``--generate-caffemodel``, the loading benchmark, tests). ``*_writer``
return the :class:`~chainer_finetune.caffe.writer.NetWriter`; ``make_*``
write it (V2 or V1) and optionally a deploy ``.prototxt``.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Tuple

from chainer_finetune.caffe.writer import NetWriter
from chainer_finetune.caffe.writer import PathLike
from chainer_finetune.caffe.writer import RandomBlob
from chainer_finetune.caffe.writer import check_format_version

# Caffe's usual multipliers for a weight and its bias: the bias learns
# twice as fast and is not decayed.
WEIGHT_BIAS_PARAM_SPECS = ({'lr_mult': 1, 'decay_mult': 1},
                           {'lr_mult': 2, 'decay_mult': 0})


class _Builder:
    """Adds the layers of both nets to a NetWriter, each layer's top named
    like the layer: Convolution (each followed by its in-place ReLU: relu1
    for conv1, relu3_2 for conv3_2) and InnerProduct with He-scaled random
    weights (one seed per layer), max Pooling and Dropout as the released
    prototxts declare them."""

    def __init__(self, writer: NetWriter, seed: int) -> None:
        self.w = writer
        self.seeds = ((seed, count) for count in itertools.count(1))

    def _weighted(self, name: str, type: str, bottom: str, params: dict,
                  shape: Tuple[int, ...], fan_in: int) -> None:
        # Weights with std sqrt(2 / fan_in), biases with std 0.01, uniform.
        seed = next(self.seeds)
        blobs = [RandomBlob(shape, std=math.sqrt(2.0 / fan_in),
                            seed=seed + (0,)),
                 RandomBlob(shape[:1], std=0.01, seed=seed + (1,))]
        self.w.layer(name, type, bottom, name, params=params, blobs=blobs,
                     param_specs=WEIGHT_BIAS_PARAM_SPECS)

    def conv(self, name, bottom, channels_in, num_output, kernel, pad=0,
             stride=1, group=1):
        params = {'num_output': num_output, 'kernel_size': kernel}
        params.update((key, value) for key, value, default in (
            ('pad', pad, 0), ('stride', stride, 1), ('group', group, 1))
            if value != default)
        self._weighted(name, 'Convolution', bottom,
                       {'convolution_param': params},
                       (num_output, channels_in // group, kernel, kernel),
                       channels_in // group * kernel * kernel)
        self.w.layer('relu' + name[len('conv'):], 'ReLU', name, name)

    def fc(self, name, bottom, n_in, n_out):
        self._weighted(name, 'InnerProduct', bottom,
                       {'inner_product_param': {'num_output': n_out}},
                       (n_out, n_in), n_in)

    def max_pool(self, name, bottom, kernel, stride):
        self.w.layer(name, 'Pooling', bottom, name, params={
            'pooling_param': {'pool': 'MAX', 'kernel_size': kernel,
                              'stride': stride}})

    def classifier(self, n_in, fc_size, n_class):
        """The head both nets share: fc6 on pool5 and fc7, each with ReLU
        and Dropout, then fc8."""
        bottom = 'pool5'
        for i in (6, 7):
            name = 'fc{}'.format(i)
            self.fc(name, bottom, n_in, fc_size)
            self.w.layer('relu{}'.format(i), 'ReLU', name, name)
            self.w.layer('drop{}'.format(i), 'Dropout', name, name,
                         params={'dropout_param': {'dropout_ratio': 0.5}})
            bottom, n_in = name, fc_size
        self.fc('fc8', bottom, n_in, n_class)


def alexnet_writer(n_class: int = 1000, seed: int = 0, batch: int = 10,
                   input_form: str = 'layer', train: bool = False
                   ) -> NetWriter:
    """bvlc_alexnet with random weights, not yet written.

    The structure, layer names, parameters and blob shapes are those of
    BVLC's ``models/bvlc_alexnet/deploy.prototxt`` as released with
    ``bvlc_alexnet.caffemodel``: conv2, conv4 and conv5 have ``group: 2``
    (so conv2's weights are 256x48x5x5), LRN 5/1e-4/0.75 after relu1 and
    relu2, 3x3/2 max pooling, fc6 4096x9216.

    Args:
        n_class: fc8's outputs.
        seed: Seed of all weights.
        batch: The declared input batch size (BVLC: 10).
        input_form: How the input is declared (see :meth:`NetWriter.input`).
        train: The layout of the released *caffemodel* instead of the
            deploy net: a ``Data`` layer (phase TRAIN, tops data and label)
            instead of the input, and a ``SoftmaxWithLoss`` named ``loss``
            instead of ``prob``.
    """
    w = NetWriter('AlexNet')
    if train:
        w.layer('data', 'Data', (), ['data', 'label'],
                params={'data_param': {'source': 'ilsvrc12_train_lmdb',
                                       'batch_size': 256, 'backend': 'LMDB'},
                        'transform_param': {'mirror': True,
                                            'crop_size': 227}},
                include={'phase': 'TRAIN'})
    else:
        w.input('data', (batch, 3, 227, 227), form=input_form)
    b = _Builder(w, seed)
    b.conv('conv1', 'data', 3, 96, 11, stride=4)
    lrn = {'lrn_param': {'local_size': 5, 'alpha': 0.0001, 'beta': 0.75}}
    w.layer('norm1', 'LRN', 'conv1', 'norm1', params=lrn)
    b.max_pool('pool1', 'norm1', 3, 2)
    b.conv('conv2', 'pool1', 96, 256, 5, pad=2, group=2)
    w.layer('norm2', 'LRN', 'conv2', 'norm2', params=lrn)
    b.max_pool('pool2', 'norm2', 3, 2)
    b.conv('conv3', 'pool2', 256, 384, 3, pad=1)
    b.conv('conv4', 'conv3', 384, 384, 3, pad=1, group=2)
    b.conv('conv5', 'conv4', 384, 256, 3, pad=1, group=2)
    b.max_pool('pool5', 'conv5', 3, 2)
    b.classifier(256 * 6 * 6, 4096, n_class)
    if train:
        w.layer('loss', 'SoftmaxWithLoss', ['fc8', 'label'], 'loss')
    else:
        w.layer('prob', 'Softmax', 'fc8', 'prob')
    return w


def make_alexnet(path_caffemodel: PathLike,
                 path_prototxt: Optional[PathLike] = None,
                 n_class: int = 1000, seed: int = 0, version: int = 2,
                 batch: int = 10, train_layers: bool = False) -> NetWriter:
    """Writes an AlexNet with bvlc_alexnet's exact structure, random weights.

    About 61 million float32 weights (233 MiB): He-scaled (std
    ``sqrt(2 / fan_in)``), biases with std 0.01, uniform, generated while
    writing (about half a second with the disk's page cache).

    Args:
        path_caffemodel: The binary model to write.
        path_prototxt: Also write the deploy prototxt here.
        n_class: fc8's outputs.
        seed: Seed of the weights (same seed, same values, any version).
        version: 2, or 1 for the V1 ``layers`` format of the 2014 release
            (inputs then declared with ``input_dim``).
        batch: The declared input batch size.
        train_layers: Give the caffemodel the released model's layout (a
            TRAIN-phase ``Data`` layer, a ``loss`` head, no ``prob``); the
            prototxt stays the deploy net.

    Returns:
        NetWriter: The caffemodel's net (``blob_arrays(name)`` gives the
        weights).
    """
    form = _input_form(version)
    deploy = alexnet_writer(n_class, seed, batch, form)
    model = alexnet_writer(n_class, seed, batch, form, train=True) \
        if train_layers else deploy
    return _write(model, deploy, path_caffemodel, path_prototxt, version)


def _input_form(version: int) -> str:
    check_format_version(version)
    return 'layer' if version == 2 else 'input_dim'


def _write(model: NetWriter, deploy: NetWriter, path: PathLike,
           path_prototxt: Optional[PathLike], version: int) -> NetWriter:
    model.write_caffemodel(path, version)
    if path_prototxt is not None:
        deploy.write_prototxt(path_prototxt, version)
    return model


def vgg16_writer(n_class: int = 1000, seed: int = 0, batch: int = 10,
                 input_form: str = 'layer', width: float = 1.0,
                 fc_size: int = 4096) -> NetWriter:
    """VGG_ILSVRC_16_layers (deploy) with random weights, not yet written.

    Layer names and shapes of the released model: conv1_1 ... conv5_3 (3x3,
    pad 1) with relu*_*, pool1..pool5 (2x2/2 max), fc6 4096x25088, fc7,
    fc8, drop6/drop7, prob; 138,357,544 weights.

    Args:
        n_class: fc8's outputs.
        seed: Seed of all weights.
        batch: The declared input batch size.
        input_form: How the input is declared (see
            :meth:`~chainer_finetune.caffe.writer.NetWriter.input`).
        width: Scales every convolution's output channels: a narrower net
            of the same depth and layer names (the loading benchmark's
            ``--quick`` model uses 0.5).
        fc_size: The outputs of fc6 and fc7.
    """
    w = NetWriter('VGG_ILSVRC_16_layers')
    w.input('data', (batch, 3, 224, 224), form=input_form)
    b = _Builder(w, seed)
    bottom, channels = 'data', 3
    for stage, (n_conv, n_out) in enumerate(
            [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        n_out = max(1, int(n_out * width))
        for i in range(1, n_conv + 1):
            name = 'conv{}_{}'.format(stage, i)
            b.conv(name, bottom, channels, n_out, 3, pad=1)
            bottom, channels = name, n_out
        bottom = 'pool{}'.format(stage)
        b.max_pool(bottom, name, 2, 2)
    b.classifier(channels * 7 * 7, fc_size, n_class)
    w.layer('prob', 'Softmax', 'fc8', 'prob')
    return w


def make_vgg16(path: PathLike, seed: int = 0,
               path_prototxt: Optional[PathLike] = None, version: int = 2,
               n_class: int = 1000, batch: int = 10) -> NetWriter:
    """Writes VGG-16 with the released model's shapes and random weights.

    528 MiB, streamed layer by layer and chunk by chunk (memory stays at a
    few MiB). The released VGG_ILSVRC_16_layers.caffemodel is V1: pass
    ``version=1`` to get that format (legacy 4-D blob dims, ``input_dim``).

    Arguments and result as :func:`make_alexnet`'s, ``path`` being the
    caffemodel.
    """
    w = vgg16_writer(n_class, seed, batch, _input_form(version))
    return _write(w, w, path, path_prototxt, version)
