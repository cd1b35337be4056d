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
from chainer_finetune.caffe.weight_files import save_weights  # NOQA: E402
from chainer_finetune.copy import copy_model  # NOQA: E402
from chainer_finetune.copy import CopyReport  # NOQA: E402
from chainer_finetune.errors import CaffeModelError  # NOQA: E402
from chainer_finetune.errors import UnsupportedLayerError  # NOQA: E402
from chainer_finetune.freeze import DelGradient  # NOQA: E402
from chainer_finetune.freeze import freeze  # NOQA: E402
from chainer_finetune.freeze import frozen_paths  # NOQA: E402
from chainer_finetune.freeze import unfreeze  # NOQA: E402
from chainer_finetune.head import replace_head  # NOQA: E402
from chainer_finetune.lr_mult import lr_mults_from_prototxt  # NOQA: E402
from chainer_finetune.lr_mult import set_lr_mult  # NOQA: E402
from chainer_finetune.lr_mult import WeightDecayMult  # NOQA: E402
from chainer_finetune.prediction import load_classifier  # NOQA: E402
from chainer_finetune.prediction import predict  # NOQA: E402
from chainer_finetune.training import GradualUnfreeze  # NOQA: E402

__all__ = ['CaffeModelError', 'CaffeNet', 'CopyReport', 'DelGradient',
           'GradualUnfreeze', 'UnsupportedLayerError', 'WeightDecayMult',
           '__version__', 'copy_model', 'freeze', 'frozen_paths',
           'load_caffe', 'load_classifier', 'load_mean',
           'lr_mults_from_prototxt', 'predict', 'replace_head',
           'save_weights', 'set_lr_mult', 'unfreeze']
