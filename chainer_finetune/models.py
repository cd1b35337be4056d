"""Former name of :mod:`chainer_finetune.hub` (the same module object)."""

import sys

from chainer_finetune import hub

sys.modules[__name__] = hub
