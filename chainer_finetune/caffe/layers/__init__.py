"""Caffe layer types: one registry entry each, Chainer links and functions
with Caffe's numerics.

Each entry (:class:`LayerType`) declares everything the library knows about
a type: its builder (:class:`BuildContext` in, :class:`Built` out), its
inverse (the link back to Caffe blobs, for ``save_weights``), the names of
its learnable blobs (for ``lr_mult``), the field holding its output count
(for ``replace_head``) and whether it holds state. Builders check every
blob's shape against the layer description and wrap the arrays read from
the file as parameters, allocating none they then overwrite. Where
Chainer's functions differ from Caffe's formulas (pooling sizes, AVE's
divisor, LRN's alpha, BatchNorm's scale factor), the family module bridges
the gap.

The modules, and how to add a type (one ``@register(...)`` builder in
its family module plus its tests): :doc:`/architecture`.
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
from chainer_finetune.caffe.layers.registry import check_supported  # NOQA
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
from chainer_finetune.caffe.layers import detection  # NOQA
from chainer_finetune.caffe.layers import losses  # NOQA
from chainer_finetune.caffe.layers import normalization  # NOQA
from chainer_finetune.caffe.layers import scale  # NOQA
from chainer_finetune.caffe.layers import structure  # NOQA
from chainer_finetune.caffe.layers.normalization import reset_statistics  # NOQA
from chainer_finetune.caffe.layers.pooling import caffe_pooled_size  # NOQA
from chainer_finetune.caffe.layers.structure import caffe_reshape  # NOQA
