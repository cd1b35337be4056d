"""Former name of :mod:`chainer_finetune.caffe.net`.

Kept so that old imports keep working: the module object is the same.
"""

import sys

from chainer_finetune.caffe import net

sys.modules[__name__] = net
