#!/usr/bin/env python3
"""Top-1/top-5 of a checkpoint or pretrained model on an image folder: `lkconv validate`.

    python scripts/validate.py --checkpoint output/train/RUN/best.pth.tar --data-dir /data/imagenet
    python scripts/validate.py --model unireplknet_a --pretrained --data-dir /data/imagenet --reparam
"""
import sys

from lkconv.cli import main

if __name__ == '__main__':
    sys.exit(main(['validate', *sys.argv[1:]]))
