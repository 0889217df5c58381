"""Re-parameterisable large-kernel depthwise conv (RepLKNet, arXiv:2203.06717).

A K x K depthwise conv and, optionally, a parallel small k x k depthwise conv on the same input, each followed
by its own BatchNorm, summed. The small kernel helps optimise the large one during training; afterwards both
branches fold into a single K x K depthwise conv with bias. Unlike UniRepLKNet's Dilated Reparam Block there is
one undilated small branch whose size is a free setting (RepLKNet-31B/L: 5, XL: none), so this is a layer of
its own built on the same algebra (`reparam.py`).
"""
from typing import Optional

import torch
import torch.nn as nn

from .conv_bn import ConvBn
from .depthwise_conv import DepthwiseConv2d
from .reparam import conv_with_weights, fuse_conv_bn, merge_kernels

__all__ = ['ReparamLargeKernelConv']


class ReparamLargeKernelConv(nn.Module):
    """`lkb_origin` (K x K depthwise conv -> BN) + `small_conv` (k x k depthwise conv -> BN), or, deployed,
    `lkb_reparam` (one K x K depthwise conv with bias). Stride 1, 'same' padding.

    The module names are those of the official RepLKNet, so its checkpoints (either form) load unchanged.
    `reparameterize()` switches to the deploy form in place, which is how `timm.utils.reparameterize_model`
    deploys it; `deploy=True` builds that form directly.

    Args:
        channels: Number of input and output channels.
        kernel_size: The large kernel size K (odd).
        small_kernel_size: The parallel small kernel size k (odd, at most K), or None for no small branch.
        deploy: Build the re-parameterised form.
    """

    def __init__(
            self,
            channels: int,
            kernel_size: int,
            small_kernel_size: Optional[int] = None,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'the large kernel size must be a positive odd number, got {kernel_size}')
        if small_kernel_size is not None and (
                small_kernel_size < 1 or small_kernel_size % 2 == 0 or small_kernel_size > kernel_size):
            raise ValueError(
                f'the small kernel size must be None or an odd number from 1 to the large kernel size '
                f'{kernel_size}, got {small_kernel_size}')
        self.kernel_size = kernel_size
        self.small_kernel_size = small_kernel_size
        self.lkb_reparam: Optional[nn.Module] = None
        self.lkb_origin: Optional[nn.Module] = None
        self.small_conv: Optional[nn.Module] = None
        if deploy:
            self.lkb_reparam = DepthwiseConv2d(channels, kernel_size, bias=True, **dd)
        else:
            self.lkb_origin = ConvBn(DepthwiseConv2d(channels, kernel_size, bias=False, **dd), **dd)
            if small_kernel_size is not None:
                self.small_conv = ConvBn(DepthwiseConv2d(channels, small_kernel_size, bias=False, **dd), **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lkb_reparam is not None:
            return self.lkb_reparam(x)
        assert self.lkb_origin is not None
        out = self.lkb_origin(x)
        if self.small_conv is not None:
            out = out + self.small_conv(x)
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both branches (BatchNorms in eval form) into `lkb_reparam`; a no-op once deployed."""
        if self.lkb_origin is None:
            return
        branches = [self.lkb_origin] + ([self.small_conv] if self.small_conv is not None else [])
        weight, bias = merge_kernels(
            ((*fuse_conv_bn(b.conv.weight, b.conv.bias, b.bn), b.conv.dilation) for b in branches),
            self.kernel_size,
        )
        self.lkb_reparam = conv_with_weights(self.lkb_origin.conv, weight, bias)
        self.lkb_origin = None
        self.small_conv = None
