"""The `lkconv` command line.

Each command lives with the code it drives: a module in `COMMAND_MODULES` exposes
`add_commands(subparsers)`, which adds its sub-commands and sets `func` on each. Command modules import
torch, timm and the models inside their command functions, so that building the parser (`lkconv --help`,
a mistyped option) takes no time.
"""
import argparse
import importlib
import os
import sys
from typing import List, Optional

from .version import __version__

# modules providing sub-commands, in the order they appear in `lkconv --help`
COMMAND_MODULES = (
    'lkconv.zoo.commands',
    'lkconv.bench.commands',
    'lkconv.deploy.commands',
    'lkconv.training.commands',
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Ends an option's help with '(default: X)', unless there is no default value (None, an off flag,
    nothing) or the help already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ''
        if action.default in (None, '', []) or action.default is False or 'default' in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with the help formatter above (sub-command parsers too) and one-line usage errors."""

    def __init__(self, *args, formatter_class=_HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message):
        # what is wrong and where to read more, instead of argparse's usage block
        self.exit(2, f'{self.prog}: error: {message}\nsee `{self.prog} --help`\n')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='lkconv', description='Large-kernel ConvNet backbones for timm.')
    parser.add_argument('--version', action='version', version=f'lkconv {__version__}')
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except BrokenPipeError:  # the output went into a pipe its reader closed (`lkconv list | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1


if __name__ == '__main__':
    sys.exit(main())
