"""Inception depthwise convolution (InceptionNeXt's token mixer): identity / square / two band branches."""
from typing import Tuple

import torch
import torch.nn as nn

from .depthwise_conv import DepthwiseConv2d

__all__ = ['InceptionDWConv2d']


class InceptionDWConv2d(nn.Module):
    """Split channels into [identity, square, 1 x band, band x 1] chunks, convolve each chunk, concatenate.

    Each conv branch gets `int(channels * branch_ratio)` channels and is a biased depthwise conv with
    'same' padding (dilated by `dilation` along the axes it spans); the remaining leading channels pass
    through unchanged. Module names (`dwconv_hw`, `dwconv_w`, `dwconv_h`) follow the official checkpoints.
    """

    def __init__(
            self,
            channels: int,
            square_kernel_size: int = 3,
            band_kernel_size: int = 11,
            branch_ratio: float = 0.125,
            dilation: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        gc = int(channels * branch_ratio)
        if gc < 1 or 3 * gc > channels:
            raise ValueError(
                f'branch_ratio {branch_ratio} gives {gc} channels per conv branch for {channels} channels; '
                f'need 1 <= int(channels * branch_ratio) <= channels / 3')
        self.dwconv_hw = DepthwiseConv2d(gc, square_kernel_size, dilation=dilation, **dd)
        self.dwconv_w = DepthwiseConv2d(gc, (1, band_kernel_size), dilation=(1, dilation), **dd)
        self.dwconv_h = DepthwiseConv2d(gc, (band_kernel_size, 1), dilation=(dilation, 1), **dd)
        self.split_sizes: Tuple[int, int, int, int] = (channels - 3 * gc, gc, gc, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split_sizes, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1)
