"""``python -m chainer_finetune``: the ``chainer-finetune`` command."""

import sys

from chainer_finetune.cli import main

if __name__ == '__main__':
    sys.exit(main())
