"""Depthwise convolution with a pluggable compute backend.

`DepthwiseConv2d` is an `nn.Conv2d` (same constructor semantics, parameters and state_dict) whose
forward goes through `depthwise_conv2d`, which checks the inputs once and hands the call to the backend
that `lkconv.backends.DEPTHWISE_BACKENDS` selects. The PyTorch backend (`F.conv2d`), registered here, is
always available and is the numerical reference; faster backends (e.g. Triton kernels on CUDA) register
themselves with the same registry and declare, per call, whether they support the input's device, dtype,
layout and shape. Model files only ever build `DepthwiseConv2d`, so a new backend never touches them.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_padding, register_notrace_function, to_2tuple

from ..backends import DEPTHWISE_BACKENDS, check_depthwise_inputs

__all__ = [
    'DepthwiseConv2d', 'depthwise_conv2d', 'register_depthwise_backend', 'set_depthwise_backend',
    'get_depthwise_backend', 'list_depthwise_backends',
]

IntPair = Tuple[int, int]

# The registry's operations under the names `lkconv.layers` has always exported.
register_depthwise_backend = DEPTHWISE_BACKENDS.register
set_depthwise_backend = DEPTHWISE_BACKENDS.select
get_depthwise_backend = DEPTHWISE_BACKENDS.selected
list_depthwise_backends = DEPTHWISE_BACKENDS.names


def _torch_depthwise(x, weight, bias, stride, padding, dilation):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups=weight.shape[0])


register_depthwise_backend('torch', _torch_depthwise, supports=lambda *args: True, priority=0)


def depthwise_conv2d(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        stride: IntPair,
        padding: IntPair,
        dilation: IntPair,
) -> torch.Tensor:
    """Depthwise 2D convolution (groups == channels) through the selected backend."""
    if x.dim() == 3:  # like nn.Conv2d, accept one unbatched (C, H, W) image
        return depthwise_conv2d(x.unsqueeze(0), weight, bias, stride, padding, dilation).squeeze(0)
    check_depthwise_inputs(x, weight)
    return DEPTHWISE_BACKENDS.dispatch(x, weight, bias, stride, padding, dilation)


# fx traces a call to the dispatcher as one node instead of tracing into its data-dependent choice.
torch.fx.wrap('depthwise_conv2d')
register_notrace_function(depthwise_conv2d)


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise conv (in == out == groups) with 'same' padding by default; a drop-in `nn.Conv2d`."""

    def __init__(
            self,
            channels: int,
            kernel_size: Union[int, IntPair],
            stride: Union[int, IntPair] = 1,
            padding: Optional[Union[int, IntPair]] = None,
            dilation: Union[int, IntPair] = 1,
            bias: bool = True,
            device=None,
            dtype=None,
    ):
        kernel_size = to_2tuple(kernel_size)
        dilation = to_2tuple(dilation)
        if padding is None:  # the stride-1 'same' padding, also for strided convs
            padding = tuple(get_padding(kernel_size, dilation=dilation))
        super().__init__(
            channels, channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=channels, bias=bias, device=device, dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
