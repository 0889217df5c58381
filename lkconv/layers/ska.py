"""Small-kernel aggregation (SKA): a per-pixel dynamic depthwise convolution with shared kernels.

For an input x of shape (B, C, H, W) and dynamic kernels w of shape (B, G, K*K, H, W), G = C / groups:

    out[b, c, h, w] = sum_{i, j < K} x[b, c, h - K//2 + i, w - K//2 + j] * w[b, c mod G, i*K + j, h, w]

(zero padding, cross-correlation, row-major taps). Each of the G kernels at a pixel serves the `groups`
channels {g, g + G, g + 2G, ...}: the mapping is strided (`c mod G`), NOT contiguous blocks of channels.

`small_kernel_aggregation` picks a backend per call, like `depthwise_conv2d`: the PyTorch backend here is
always available (CPU, any dtype, TorchScript, fx and ONNX export) and is the numerical reference; a GPU
kernel (e.g. Triton on CUDA) registers itself with `register_ska_backend` and declares which calls it
supports, so neither `SKA` nor any model file changes when one is added.
"""
import math
from dataclasses import dataclass
from typing import Callable, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = [
    'SKA', 'small_kernel_aggregation', 'register_ska_backend', 'set_ska_backend', 'get_ska_backend',
    'list_ska_backends',
]

# fn(x, weight) -> Tensor; supports(x, weight) -> bool
SkaFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SkaSupportsFn = Callable[[torch.Tensor, torch.Tensor], bool]


@dataclass(frozen=True)
class _Backend:
    name: str
    fn: SkaFn
    supports: SkaSupportsFn
    priority: int


def _kernel_size(weight: torch.Tensor) -> int:
    taps = weight.shape[2]
    k = int(round(math.sqrt(taps)))
    if k * k != taps or k % 2 == 0:
        raise ValueError(f'SKA weight must have an odd K*K taps on dim 2, got {taps}')
    return k


def _check_shapes(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 4 or weight.dim() != 5:
        raise ValueError(f'SKA expects x (B, C, H, W) and weight (B, G, K*K, H, W), '
                         f'got {list(x.shape)} and {list(weight.shape)}')
    b, c, h, w = x.shape
    if weight.shape[0] != b or weight.shape[3] != h or weight.shape[4] != w or c % weight.shape[1] != 0:
        raise ValueError(f'SKA weight {list(weight.shape)} does not fit input {list(x.shape)} '
                         f'(batch and spatial size must match, C must be a multiple of G)')


def _torch_ska(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference SKA from shifted views of the padded input: no unfold buffer, exportable ops only."""
    b, c, h, w = x.shape
    g = weight.shape[1]
    k = _kernel_size(weight)
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


_BACKENDS: List[_Backend] = [_Backend('torch', _torch_ska, lambda *args: True, priority=0)]
_SELECTED = 'auto'


def register_ska_backend(name: str, fn: SkaFn, supports: SkaSupportsFn, priority: int = 10) -> None:
    """Add (or replace) a backend. In 'auto' mode the highest-priority backend that supports a call runs it."""
    global _BACKENDS
    backends = [b for b in _BACKENDS if b.name != name] + [_Backend(name, fn, supports, priority)]
    _BACKENDS = sorted(backends, key=lambda b: -b.priority)


def list_ska_backends() -> List[str]:
    return [b.name for b in _BACKENDS]


def set_ska_backend(name: str = 'auto') -> None:
    """Force one backend for every SKA call ('torch', a registered name) or restore 'auto'."""
    global _SELECTED
    if name != 'auto' and name not in list_ska_backends():
        raise ValueError(f"Unknown SKA backend '{name}'; available: auto, {', '.join(list_ska_backends())}")
    _SELECTED = name


def get_ska_backend() -> str:
    return _SELECTED


def small_kernel_aggregation(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SKA of x (B, C, H, W) with per-pixel kernels weight (B, C/groups, K*K, H, W) through the selected backend."""
    _check_shapes(x, weight)
    for backend in _BACKENDS:
        if _SELECTED == backend.name or (_SELECTED == 'auto' and backend.supports(x, weight)):
            return backend.fn(x, weight)
    return _torch_ska(x, weight)


# fx records the dispatcher as one call instead of tracing into its data-dependent choice
torch.fx.wrap('small_kernel_aggregation')
register_notrace_function(small_kernel_aggregation)


class SKA(nn.Module):
    """Parameter-free module form of `small_kernel_aggregation` (the official `SKA` module)."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return _torch_ska(x, weight)
        return small_kernel_aggregation(x, weight)


# Triton kernels (lkconv.kernels): registering them imports no triton; 'auto' picks them only for CUDA
# calls that their table of measured speed-ups favours.
from ..kernels import triton_small_kernel_aggregation, use_triton_ska  # noqa: E402
register_ska_backend('triton', triton_small_kernel_aggregation, use_triton_ska)
