"""Large Kernel Attention (VAN, arXiv:2202.09741).

A K x K depthwise kernel with dilation d is decomposed into a (2d-1) x (2d-1) depthwise conv, a
ceil(K/d) x ceil(K/d) depthwise conv with dilation d and a 1x1 conv. The result is not normalised
(no sigmoid/softmax): it gates the input element-wise.
"""
import math

import torch
import torch.nn as nn

from .depthwise_conv import DepthwiseConv2d

__all__ = ['LargeKernelAttention']


class LargeKernelAttention(nn.Module):
    """x * conv_pw(conv_dilated(conv_local(x))); VAN's default K=21, d=3 gives 5x5 -> 7x7 dilation 3 -> 1x1.

    The two depthwise convs are kept separate on purpose: with zero padding between them, their
    composition is not a single 23x23 'same' conv at the image border.
    """

    def __init__(self, dim: int, kernel_size: int = 21, dilation: int = 3, device=None, dtype=None):
        super().__init__()
        if dilation < 1 or kernel_size < dilation:
            raise ValueError(
                f'LargeKernelAttention needs 1 <= dilation <= kernel_size, got {kernel_size=}, {dilation=}')
        dd = dict(device=device, dtype=dtype)
        local_kernel = 2 * dilation - 1
        dilated_kernel = math.ceil(kernel_size / dilation)
        dilated_kernel += 1 - dilated_kernel % 2  # odd, so that 'same' padding is symmetric
        self.conv_local = DepthwiseConv2d(dim, local_kernel, **dd)
        self.conv_dilated = DepthwiseConv2d(dim, dilated_kernel, dilation=dilation, **dd)
        self.conv_pw = nn.Conv2d(dim, dim, kernel_size=1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_pw(self.conv_dilated(self.conv_local(x)))
