#!/usr/bin/env python3
"""Triton depthwise-conv and SKA kernels against PyTorch at the models' own convolutions: `lkconv bench-kernels`.

    python scripts/bench_kernels.py --json kernels.json --emit-table     # GPU: bf16, batch 128
    TRITON_INTERPRET=1 python scripts/bench_kernels.py --smoke             # CPU: tiny shapes
"""
import sys

from lkconv.cli import main

if __name__ == '__main__':
    sys.exit(main(['bench-kernels', *sys.argv[1:]]))
