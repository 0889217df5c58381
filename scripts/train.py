#!/usr/bin/env python3
"""Train from a YAML config: `lkconv train`, runnable under torchrun.

    python scripts/train.py -c configs/demo/digits_inceptionnext_atto.yaml
    torchrun --nproc_per_node=8 scripts/train.py -c configs/unireplknet/unireplknet_t_in1k.yaml data.dir=/data/imagenet
"""
import sys

from lkconv.cli import main

if __name__ == '__main__':
    sys.exit(main(['train', *sys.argv[1:]]))
