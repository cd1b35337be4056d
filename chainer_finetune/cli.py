"""The ``chainer-finetune`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional

import chainer_finetune
from chainer_finetune import runtime


def _cmd_info(args: argparse.Namespace) -> int:
    info = runtime.runtime_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(runtime.format_runtime_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser of ``chainer-finetune``."""
    parser = argparse.ArgumentParser(
        prog='chainer-finetune',
        description='Fine-tune Caffe Model Zoo models in Chainer.')
    parser.add_argument('--version', action='version',
                        version=chainer_finetune.__version__)
    parser.add_argument('-v', '--verbose', action='count', default=0,
                        help='log more (-v: INFO, -vv: DEBUG)')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    info = sub.add_parser(
        'info', help='print versions, protobuf backend, GPU and the '
                     'compatibility patches applied')
    info.add_argument('--json', action='store_true',
                      help='print machine-readable JSON')
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``chainer-finetune``."""
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose,
                                                      logging.DEBUG)
    logging.basicConfig(level=level,
                        format='%(levelname)s %(name)s: %(message)s')
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
