"""Caffe models in Chainer: read, convert, cache, write.

The data flow through its modules: :doc:`/architecture`.
"""

from chainer_finetune.caffe.net import CaffeNet  # NOQA
from chainer_finetune.caffe.net import link_name_for  # NOQA
from chainer_finetune.caffe.layers import supported_types  # NOQA
from chainer_finetune.caffe.loader import load_caffe  # NOQA
from chainer_finetune.caffe.loader import load_mean  # NOQA
from chainer_finetune.caffe.preprocessing import CaffePreprocessor  # NOQA
