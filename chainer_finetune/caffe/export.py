"""Former name of :mod:`chainer_finetune.caffe.weight_files`.

Kept so that old imports keep working: the module object is the same.
"""

import sys

from chainer_finetune.caffe import weight_files

sys.modules[__name__] = weight_files
