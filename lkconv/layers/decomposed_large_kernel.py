"""Decomposed large kernel (SLaK, arXiv:2207.03620): a K x K depthwise kernel replaced by two bands and a small kernel.

Three parallel depthwise branches, each conv (no bias) -> BatchNorm, summed without activation:
`tall` (K x s), `wide` (s x K) and `small` (s x s, only if s < K). With `decompose=False` a `square` K x K
branch replaces the two bands (SLaK's ablation and RepLKNet-style form). Every branch is a `DepthwiseConv2d`
with 'same' padding per axis: (K//2, s//2) for the tall band, (s//2, K//2) for the wide one (a single K//2
on both axes, as the official code passes it, gives bands of different output sizes).

Re-parameterisation: in eval mode each branch's BN folds into its kernel, and all branches are centred
depthwise kernels of the same input, so any of them can be zero-padded into a larger centred one. The
deploy form keeps the fewest taps per channel:
* two bands, with the s x s kernel folded into the tall band and one bias: 2*K*s taps
  (510 for K = 51, s = 5, against 2*K*s + s*s = 535 in training form and K*K = 2601 merged);
* one square conv when that is not more: K*K <= 2*K*s, i.e. K <= 2*s (and always with `decompose=False`).
"""
from collections import OrderedDict
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .conv_bn import ConvBn
from .depthwise_conv import DepthwiseConv2d
from .reparam import fuse_conv_bn, pad_kernel

__all__ = ['DecomposedLargeKernelConv']


def _branch(channels: int, kernel_size: Tuple[int, int], bn: bool, device=None, dtype=None) -> nn.Module:
    """conv -> BN (`ConvBn`), or the conv alone under the same `conv` name when `bn` is False."""
    conv = DepthwiseConv2d(channels, kernel_size, bias=False, device=device, dtype=dtype)
    return ConvBn(conv, device=device, dtype=dtype) if bn else nn.Sequential(OrderedDict(conv=conv))


def _fused(branch: Optional[nn.Module]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Eval-mode (kernel, bias) of a training-form branch, or None for an absent one."""
    if branch is None:
        return None
    weight = branch.conv.weight
    if hasattr(branch, 'bn'):
        return fuse_conv_bn(weight, None, branch.bn)
    return weight, weight.new_zeros(weight.shape[0])


class DecomposedLargeKernelConv(nn.Module):
    """Depthwise large kernel as the sum of a K x s band, an s x K band and an s x s kernel (see module docstring).

    Branches that a form does not have are None. `reparameterize()` switches to the deploy form in place
    (what `timm.utils.reparameterize_model` calls); `deploy=True` builds that form directly.
    """

    def __init__(
            self,
            channels: int,
            kernel_size: int,
            small_kernel: int = 5,
            decompose: bool = True,
            bn: bool = True,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Number of input (= output) channels.
            kernel_size: Large size K: the long side of the bands, or the side of the square kernel.
            small_kernel: Small size s: the short side of the bands and the side of the small kernel,
                which exists only if s < K.
            decompose: Two K x s / s x K bands (SLaK) instead of one K x K kernel.
            bn: A BatchNorm after each training-form conv.
            deploy: Build the re-parameterised form.
        """
        super().__init__()
        for name, size in (('kernel_size', kernel_size), ('small_kernel', small_kernel)):
            if not isinstance(size, int) or size < 1 or size % 2 == 0:
                raise ValueError(f'{name} must be an odd positive int (centred same-padded kernels), got {size!r}')
        dd = dict(device=device, dtype=dtype)
        self.kernel_size, self.small_kernel, self.decompose = kernel_size, small_kernel, decompose
        # the branches of the form built; the others stay None
        self.square = self.tall = self.wide = self.small = None
        k, s = kernel_size, small_kernel
        if deploy:
            if self._deploys_square():
                self.square = DepthwiseConv2d(channels, self._square_size(), bias=True, **dd)
            else:
                self.tall = DepthwiseConv2d(channels, (k, s), bias=True, **dd)
                self.wide = DepthwiseConv2d(channels, (s, k), bias=False, **dd)
            return
        if decompose:
            self.tall = _branch(channels, (k, s), bn, **dd)
            self.wide = _branch(channels, (s, k), bn, **dd)
        else:
            self.square = _branch(channels, (k, k), bn, **dd)
        if s < k:
            self.small = _branch(channels, (s, s), bn, **dd)

    def _square_size(self) -> int:
        """Side of the one kernel that holds every branch."""
        return max(self.kernel_size, self.small_kernel) if self.decompose else self.kernel_size

    def _deploys_square(self) -> bool:
        """Whether the deploy form is one square conv: no bands, or bands with no fewer taps than the square."""
        return not self.decompose or self._square_size() ** 2 <= 2 * self.kernel_size * self.small_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.square is not None:
            out = self.square(x)
        else:
            assert self.tall is not None and self.wide is not None
            out = self.tall(x) + self.wide(x)
        if self.small is not None:
            out = out + self.small(x)
        return out

    def is_deployed(self) -> bool:
        """True once re-parameterised: every branch is a single conv."""
        return all(b is None or isinstance(b, DepthwiseConv2d) for b in (self.square, self.tall, self.wide))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place: fold each BN into its kernel, the small kernel and all biases
        into the tall band (or everything into one square kernel)."""
        if self.is_deployed():
            return
        small = _fused(self.small)
        if self._deploys_square():
            size = self._square_size()
            parts = [p for p in (_fused(self.square), _fused(self.tall), _fused(self.wide), small) if p is not None]
            weight = sum(pad_kernel(w, size) for w, _ in parts)
            bias = sum(b for _, b in parts)
            self.square = self._deploy_conv(weight, bias)
            self.tall = self.wide = None
        else:
            (tall, tall_bias), (wide, wide_bias) = _fused(self.tall), _fused(self.wide)
            bias = tall_bias + wide_bias
            if small is not None:
                tall = tall + pad_kernel(small[0], tuple(tall.shape[-2:]))
                bias = bias + small[1]
            self.tall = self._deploy_conv(tall, bias)
            self.wide = self._deploy_conv(wide, None)
        self.small = None

    def _deploy_conv(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> DepthwiseConv2d:
        conv = DepthwiseConv2d(
            weight.shape[0], tuple(weight.shape[-2:]), bias=bias is not None, device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        return f'kernel_size={self.kernel_size}, small_kernel={self.small_kernel}, decompose={self.decompose}'
