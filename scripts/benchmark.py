#!/usr/bin/env python3
"""Benchmark models side by side: `python scripts/benchmark.py MODEL ... [options]` = `lkconv bench ...`.

Run `python scripts/benchmark.py --help` for the options; see docs/benchmarks.md.
"""
import sys

from lkconv.cli import main

if __name__ == '__main__':
    sys.exit(main(['bench'] + sys.argv[1:]))
