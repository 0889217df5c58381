"""Dilated Reparam Block (UniRepLKNet, arXiv:2311.15599).

A large depthwise kernel trained alongside parallel small dilated depthwise kernels, each followed by
its own BatchNorm. After training all branches merge into one dense depthwise K x K conv with bias.
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn

from .conv_bn import ConvBn
from .depthwise_conv import DepthwiseConv2d
from .reparam import merge_kernels, fuse_conv_bn

__all__ = ['DilatedReparamBlock', 'DILATED_BRANCHES']

# large kernel size -> parallel (kernel size, dilation) branches, as in the official implementation
DILATED_BRANCHES: Dict[int, Tuple[Tuple[int, int], ...]] = {
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 2), (3, 3)),
    5: ((3, 1), (3, 2)),
}


def branch_name(kernel_size: int, dilation: int) -> str:
    return f'k{kernel_size}_d{dilation}'


class DilatedReparamBlock(nn.Module):
    """Sum of depthwise conv-BN branches: the K x K kernel and the dilated small kernels of `DILATED_BRANCHES[K]`.

    Branches live in `branches` under `k{kernel}_d{dilation}` names, the large one first. `fuse()` returns the
    single equivalent `DepthwiseConv2d` (with bias), which is how `timm.utils.reparameterize_model` deploys it.
    """

    def __init__(self, channels: int, kernel_size: int, device=None, dtype=None):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(
                f'DilatedReparamBlock supports kernel sizes {sorted(DILATED_BRANCHES)}, got {kernel_size}')
        dd = dict(device=device, dtype=dtype)
        self.kernel_size = kernel_size
        self.branches = nn.ModuleDict()
        for k, r in ((kernel_size, 1),) + DILATED_BRANCHES[kernel_size]:
            conv = DepthwiseConv2d(channels, k, dilation=r, bias=False, **dd)
            self.branches[branch_name(k, r)] = ConvBn(conv, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for branch in self.branches.values():
            y = branch(x)
            out = y if out is None else out + y
        assert out is not None
        return out

    def fused_weight_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The dense K x K depthwise kernel and bias equal to the eval-mode sum of all branches."""
        return merge_kernels(
            ((*fuse_conv_bn(b.conv.weight, b.conv.bias, b.bn), b.conv.dilation) for b in self.branches.values()),
            self.kernel_size,
        )

    @torch.no_grad()
    def fuse(self) -> DepthwiseConv2d:
        weight, bias = self.fused_weight_bias()
        channels = weight.shape[0]
        conv = DepthwiseConv2d(channels, self.kernel_size, bias=True, device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        return conv.train(self.training)
