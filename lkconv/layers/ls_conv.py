"""LS convolution ("See Large, Focus Small", LSNet): large-kernel perception + small-kernel aggregation.

`LargeKernelPerception` (LKP) looks at a large neighbourhood (a 7x7 depthwise conv on half the channels)
and predicts, for every pixel, C/groups dynamic K x K kernels (K = 3). `SKA` applies them to the input,
kernel g serving the strided channels {g, g + C/groups, ...}. `LSConv` = BN(SKA(x, LKP(x))) + x.

Parameter names follow the official code (`lkp.cv1..cv4`, `lkp.norm`, `bn`); the official Conv-BN
pairs are `lkconv.layers.ConvBn` (`conv`, `bn`), so `timm.utils.reparameterize_model` fuses them.
`deploy=True` builds that fused form directly (each Conv-BN one conv with bias), for fused checkpoints.
"""
import torch
import torch.nn as nn

from .conv_bn import ConvBn
from .depthwise_conv import DepthwiseConv2d
from .ska import SKA

__all__ = ['LargeKernelPerception', 'LSConv']


class LargeKernelPerception(nn.Module):
    """x (B, C, H, W) -> dynamic kernels (B, C/groups, sks*sks, H, W).

    1x1 Conv-BN (C -> C/2) -> ReLU -> depthwise lks x lks Conv-BN -> 1x1 Conv-BN -> ReLU
    -> 1x1 conv with bias (C/2 -> sks^2 * C/groups) -> GroupNorm with one group per dynamic kernel.
    """

    def __init__(
            self,
            dim: int,
            lks: int = 7,
            sks: int = 3,
            groups: int = 8,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % groups or dim % 2:
            raise ValueError(f'LKP needs channels divisible by 2 and by groups={groups}, got {dim}')
        hidden = dim // 2
        self.sks = sks
        self.num_kernels = dim // groups

        def conv_bn(conv: nn.Conv2d) -> nn.Module:
            return conv if deploy else ConvBn(conv, **dd)

        self.cv1 = conv_bn(nn.Conv2d(dim, hidden, 1, bias=deploy, **dd))
        self.act1 = nn.ReLU()
        self.cv2 = conv_bn(DepthwiseConv2d(hidden, lks, bias=deploy, **dd))
        self.cv3 = conv_bn(nn.Conv2d(hidden, hidden, 1, bias=deploy, **dd))
        self.act2 = nn.ReLU()
        self.cv4 = nn.Conv2d(hidden, sks * sks * self.num_kernels, 1, **dd)
        # channel index of cv4's output is kernel * sks^2 + tap, so each group is exactly one kernel
        self.norm = nn.GroupNorm(self.num_kernels, sks * sks * self.num_kernels, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.cv1(x))
        x = self.act2(self.cv3(self.cv2(x)))
        w = self.norm(self.cv4(x))
        b, _, h, wd = w.shape
        return w.reshape(b, self.num_kernels, self.sks * self.sks, h, wd)


class LSConv(nn.Module):
    """LS convolution with its identity: BN(SKA(x, LKP(x))) + x. Keeps channels and resolution."""

    def __init__(
            self,
            dim: int,
            lks: int = 7,
            sks: int = 3,
            groups: int = 8,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.lkp = LargeKernelPerception(dim, lks=lks, sks=sks, groups=groups, deploy=deploy, **dd)
        self.ska = SKA()
        self.bn = nn.BatchNorm2d(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.ska(x, self.lkp(x))) + x
