"""Caffe layer types: one registry entry each, Chainer links and functions
with Caffe's numerics.

Each entry (:class:`LayerType`) declares everything the library knows about
a type: its builder (a :class:`BuildContext`, the V2 layer description and
its blobs, in; a :class:`Built`, the link holding the parameters and a
picklable :class:`LayerFunction`, out), its inverse (the link back to Caffe
blobs, for ``save_weights``), the names of its learnable blobs (for
``lr_mult``), the field holding its output count (for ``replace_head``) and
whether it holds state. Builders check every blob's shape against what the
layer description implies and never allocate parameters they then
overwrite: weights become :class:`chainer.Parameter` objects around the
arrays read from the file.

Where Chainer's functions differ from Caffe's formulas, the builder bridges
the gap (see each family module): pooling output sizes (Caffe rounds up and
drops a last window that starts in the padding), the divisor of average
pooling, LRN's alpha, BatchNorm's scale-factor blob, Dropout's
``scale_train``.

The registry itself is :mod:`~chainer_finetune.caffe.layers.registry`;
what builders and inverses share, :mod:`~chainer_finetune.caffe.layers.base`.
Families: :mod:`~chainer_finetune.caffe.layers.structure` (inputs and blob
routing), :mod:`~chainer_finetune.caffe.layers.convolution`,
:mod:`~chainer_finetune.caffe.layers.pooling`,
:mod:`~chainer_finetune.caffe.layers.activations`,
:mod:`~chainer_finetune.caffe.layers.normalization`,
:mod:`~chainer_finetune.caffe.layers.scale`,
:mod:`~chainer_finetune.caffe.layers.losses`. A new type is one
``@register(...)`` builder in its family plus its tests.
"""

from chainer_finetune.caffe.layers.base import BuildContext  # NOQA
from chainer_finetune.caffe.layers.base import Built  # NOQA
from chainer_finetune.caffe.layers.base import InvertedBlob  # NOQA
from chainer_finetune.caffe.layers.base import LayerFunction  # NOQA
from chainer_finetune.caffe.layers.base import LinkedFunction  # NOQA
from chainer_finetune.caffe.layers.base import float32_array  # NOQA
from chainer_finetune.caffe.layers.base import host_array  # NOQA
from chainer_finetune.caffe.layers.registry import LayerType  # NOQA
from chainer_finetune.caffe.layers.registry import build  # NOQA
from chainer_finetune.caffe.layers.registry import find_layer_type  # NOQA
from chainer_finetune.caffe.layers.registry import layer_type  # NOQA
from chainer_finetune.caffe.layers.registry import learnable_blob_names  # NOQA
from chainer_finetune.caffe.layers.registry import output_param  # NOQA
from chainer_finetune.caffe.layers.registry import register  # NOQA
from chainer_finetune.caffe.layers.registry import registered_types  # NOQA
from chainer_finetune.caffe.layers.registry import supported_types  # NOQA

# The families register their types when imported.
from chainer_finetune.caffe.layers import activations  # NOQA
from chainer_finetune.caffe.layers import convolution  # NOQA
from chainer_finetune.caffe.layers import losses  # NOQA
from chainer_finetune.caffe.layers import normalization  # NOQA
from chainer_finetune.caffe.layers import scale  # NOQA
from chainer_finetune.caffe.layers import structure  # NOQA
from chainer_finetune.caffe.layers.normalization import reset_statistics  # NOQA
from chainer_finetune.caffe.layers.pooling import caffe_pooled_size  # NOQA
from chainer_finetune.caffe.layers.structure import caffe_reshape  # NOQA
