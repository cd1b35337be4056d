"""Former name of :mod:`chainer_finetune.hub`.

Kept so that old imports keep working: the module object is the same.
"""

import sys

from chainer_finetune import hub

sys.modules[__name__] = hub
