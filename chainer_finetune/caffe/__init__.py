"""Caffe models in Chainer: schema, reader, V1->V2 upgrade, layers, network.

Data flows one way: file bytes (:mod:`.reader`) -> a V2 net description
with weights by layer name (:mod:`.upgrade`) -> one Chainer link/function
per layer (:mod:`.layers`) -> a ``CaffeFunction`` (:mod:`.function`),
assembled by :func:`load_caffe` (:mod:`.loader`).
"""

from chainer_finetune.caffe.net import CaffeNet  # NOQA
from chainer_finetune.caffe.net import link_name_for  # NOQA
from chainer_finetune.caffe.layers import supported_types  # NOQA
from chainer_finetune.caffe.loader import load_caffe  # NOQA
from chainer_finetune.caffe.loader import load_mean  # NOQA
from chainer_finetune.caffe.preprocessing import CaffePreprocessor  # NOQA
