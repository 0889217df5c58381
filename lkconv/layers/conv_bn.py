"""Convolution followed by BatchNorm, fusable into a single convolution with bias."""
from collections import OrderedDict

import torch.nn as nn

from .reparam import conv_with_weights, fuse_conv_bn

__all__ = ['ConvBn']


class ConvBn(nn.Sequential):
    """`conv` -> `bn`. `fuse()` returns one conv of the same class computing the eval-mode function."""

    def __init__(self, conv: nn.Conv2d, device=None, dtype=None):
        super().__init__(OrderedDict([
            ('conv', conv),
            ('bn', nn.BatchNorm2d(conv.out_channels, device=device, dtype=dtype)),
        ]))

    def fuse(self) -> nn.Conv2d:
        return conv_with_weights(self.conv, *fuse_conv_bn(self.conv.weight, self.conv.bias, self.bn))
