"""Former name of :mod:`chainer_finetune.caffe.weight_files` (the same module object)."""

import sys

from chainer_finetune.caffe import weight_files

sys.modules[__name__] = weight_files
