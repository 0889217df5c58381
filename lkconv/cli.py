"""The `lkconv` command line.

Each command lives with the code it drives: a module in `COMMAND_MODULES` exposes
`add_commands(subparsers)`, which adds its sub-commands and sets `func` on each.
"""
import argparse
import importlib
import sys
from typing import List, Optional

from . import __version__

# modules providing sub-commands, in the order they appear in `lkconv --help`
COMMAND_MODULES = (
    'lkconv.commands',
    'lkconv.benchmark_commands',
    'lkconv.deploy_commands',
    'lkconv.training.commands',
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='lkconv', description='Large-kernel ConvNet backbones for timm.')
    parser.add_argument('--version', action='version', version=f'lkconv {__version__}')
    subparsers = parser.add_subparsers(dest='command', required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == '__main__':
    sys.exit(main())
