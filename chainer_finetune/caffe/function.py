"""Former name of :mod:`chainer_finetune.caffe.net` (the same module object)."""

import sys

from chainer_finetune.caffe import net

sys.modules[__name__] = net
