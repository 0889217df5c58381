"""Structural re-parameterisation helpers: the algebra that turns parallel conv/BN branches into one conv.

All helpers work on plain tensors (any device or dtype, the meta device included) and are exact up to
floating-point rounding in eval mode, where BatchNorm is the affine map given by its running statistics.
"""
from typing import Iterable, Optional, Tuple, Union

import torch
import torch.nn as nn

from .depthwise_conv import DepthwiseConv2d

__all__ = ['fuse_conv_bn', 'fuse_bn_scale', 'dilate_kernel', 'pad_kernel', 'merge_kernels', 'conv_with_weights']


def fuse_bn_scale(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) such that bn(y) == y * scale + shift per channel, in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fuse_conv_bn(
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        bn: nn.BatchNorm2d,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of conv(weight, bias) followed by `bn`: W' = W * s, b' = beta + (b - mean) * s."""
    scale, shift = fuse_bn_scale(bn)
    fused_bias = shift if bias is None else shift + bias * scale
    return weight * scale.reshape(-1, 1, 1, 1), fused_bias


def dilate_kernel(weight: torch.Tensor, dilation: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """Dense kernel equal to `weight` applied with `dilation`: taps spread out, zeros in between.

    A (.., kh, kw) kernel becomes (.., d*(kh-1)+1, d*(kw-1)+1) with out[.., d*i, d*j] = weight[.., i, j].
    """
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    if dh == 1 and dw == 1:
        return weight
    kh, kw = weight.shape[-2:]
    dense = weight.new_zeros(weight.shape[:-2] + (dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    dense[..., ::dh, ::dw] = weight
    return dense


def pad_kernel(weight: torch.Tensor, size: Union[int, Tuple[int, int]]) -> torch.Tensor:
    """Zero-pad a kernel symmetrically to `size`; centred kernels with 'same' padding keep their function."""
    th, tw = (size, size) if isinstance(size, int) else size
    kh, kw = weight.shape[-2:]
    if (th - kh) % 2 or (tw - kw) % 2 or th < kh or tw < kw:
        raise ValueError(f'cannot centre a {kh}x{kw} kernel in {th}x{tw}')
    ph, pw = (th - kh) // 2, (tw - kw) // 2
    return torch.nn.functional.pad(weight, (pw, pw, ph, ph))


def merge_kernels(
        branches: Iterable[Tuple[torch.Tensor, torch.Tensor, Union[int, Tuple[int, int]]]],
        size: Union[int, Tuple[int, int]],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum parallel 'same'-padded branches (weight, bias, dilation) into one dense kernel of `size`."""
    weight, bias = None, None
    for w, b, dilation in branches:
        w = pad_kernel(dilate_kernel(w, dilation), size)
        weight = w if weight is None else weight + w
        bias = b if bias is None else bias + b
    if weight is None:
        raise ValueError('merge_kernels needs at least one branch')
    return weight, bias


def conv_with_weights(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A conv of `conv`'s class and geometry, with a bias, holding the given weights, in `conv`'s train/eval mode."""
    if weight.shape != conv.weight.shape:
        raise ValueError(f'weight of shape {tuple(weight.shape)} does not fit {conv}')
    dd = dict(device=weight.device, dtype=weight.dtype)
    if isinstance(conv, DepthwiseConv2d):
        fused = DepthwiseConv2d(
            conv.in_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, bias=True, **dd)
    else:
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=True, **dd)
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused.train(conv.training)
