"""chainer_finetune: fine-tune pretrained (Caffe Model Zoo) models in Chainer.

Importing this package first makes Chainer 7.8.1 usable on a current stack
(NumPy 2, protobuf >= 4, Python 3.12+); see :mod:`chainer_finetune._compat`.
Import it before ``chainer``.
"""

from chainer_finetune import _compat
from chainer_finetune._version import __version__

_compat.apply()

from chainer_finetune.caffe import CaffeNet  # NOQA: E402
from chainer_finetune.caffe import load_caffe  # NOQA: E402
from chainer_finetune.caffe import load_mean  # NOQA: E402
from chainer_finetune.caffe.export import save_weights  # NOQA: E402
from chainer_finetune.errors import CaffeModelError  # NOQA: E402
from chainer_finetune.errors import UnsupportedLayerError  # NOQA: E402

__all__ = ['CaffeModelError', 'CaffeNet', 'UnsupportedLayerError',
           '__version__', 'load_caffe', 'load_mean', 'save_weights']
