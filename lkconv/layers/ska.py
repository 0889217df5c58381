"""Small-kernel aggregation (SKA): a per-pixel dynamic depthwise convolution with shared kernels.

For an input x of shape (B, C, H, W) and dynamic kernels w of shape (B, G, K*K, H, W), G = C / groups:

    out[b, c, h, w] = sum_{i, j < K} x[b, c, h - K//2 + i, w - K//2 + j] * w[b, c mod G, i*K + j, h, w]

(zero padding, cross-correlation, row-major taps). Each of the G kernels at a pixel serves the `groups`
channels {g, g + G, g + 2G, ...}: the mapping is strided (`c mod G`), NOT contiguous blocks of channels.

`small_kernel_aggregation` checks its inputs and hands the call to the backend that
`lkconv.backends.SKA_BACKENDS` selects, like `depthwise_conv2d`. The PyTorch backend, registered here, is
always available (CPU, any dtype, TorchScript, fx and ONNX export) and is the numerical reference; a GPU
kernel (e.g. Triton on CUDA) registers itself with the same registry and declares which calls it
supports, so neither `SKA` nor any model file changes when one is added.

The PyTorch backend is the operator `lkconv::small_kernel_aggregation` (`SKA_OP`), defined as
CompositeImplicitAutograd by `_torch_ska`: autograd, meta / fake tensors, torch.compile (which fuses the
taps) and ONNX export all see that decomposition, while tracers that record operators, such as
`torch.jit.trace` under fvcore, see one node, which `lkconv.bench.flops` counts as B*C*K*K*H*W MACs.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

from ..backends import SKA_BACKENDS, check_ska_inputs

__all__ = [
    'SKA', 'SKA_OP', 'small_kernel_aggregation', 'register_ska_backend', 'set_ska_backend', 'get_ska_backend',
    'list_ska_backends',
]

SKA_OP = 'lkconv::small_kernel_aggregation'

# The registry's operations under the names `lkconv.layers` has always exported.
register_ska_backend = SKA_BACKENDS.register
set_ska_backend = SKA_BACKENDS.select
get_ska_backend = SKA_BACKENDS.selected
list_ska_backends = SKA_BACKENDS.names


def _torch_ska(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference SKA from shifted views of the padded input: no unfold buffer, exportable ops only."""
    b, c, h, w = x.shape
    g = weight.shape[1]
    k = int(round(math.sqrt(weight.shape[2])))  # odd and exact: checked by `check_ska_inputs`
    pad = k // 2
    # half precision accumulates in float32 (9 products per output), the result keeps x's dtype
    acc_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    # channel c = r * G + g  ->  (B, C/G, G, H, W): dim 2 is the kernel index c mod G, dim 1 broadcasts
    xp = F.pad(x, (pad, pad, pad, pad)).to(acc_dtype).reshape(b, c // g, g, h + 2 * pad, w + 2 * pad)
    wk = weight.to(acc_dtype).unsqueeze(1)
    out = xp[:, :, :, 0:h, 0:w] * wk[:, :, :, 0]
    for t in range(1, k * k):
        i, j = t // k, t % k
        out = out + xp[:, :, :, i:i + h, j:j + w] * wk[:, :, :, t]
    return out.reshape(b, c, h, w).to(x.dtype)


torch.library.define(SKA_OP, '(Tensor x, Tensor weight) -> Tensor')
torch.library.impl(SKA_OP, 'CompositeImplicitAutograd', _torch_ska)
register_ska_backend('torch', torch.ops.lkconv.small_kernel_aggregation, supports=lambda *args: True, priority=0)


def small_kernel_aggregation(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SKA of x (B, C, H, W) with per-pixel kernels weight (B, C/groups, K*K, H, W) through the selected backend."""
    check_ska_inputs(x, weight)
    return SKA_BACKENDS.dispatch(x, weight)


# fx records the dispatcher as one call instead of tracing into its data-dependent choice
torch.fx.wrap('small_kernel_aggregation')
register_notrace_function(small_kernel_aggregation)


class SKA(nn.Module):
    """Parameter-free module form of `small_kernel_aggregation` (the official `SKA` module)."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # scripted modules carry the computation, not a Python-registered op
            return _torch_ska(x, weight)
        return small_kernel_aggregation(x, weight)
