"""Depthwise convolution with a pluggable compute backend.

`DepthwiseConv2d` is an `nn.Conv2d` (same constructor semantics, parameters and state_dict) whose
forward goes through `depthwise_conv2d`, which picks a backend per call. The PyTorch backend
(`F.conv2d`) is always available and is the numerical reference; faster backends (e.g. Triton
kernels on CUDA) register themselves with `register_depthwise_backend` and declare, per call,
whether they support the input's device, dtype, layout and shape. Model files only ever build
`DepthwiseConv2d`, so a new backend never touches them.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = [
    'DepthwiseConv2d', 'depthwise_conv2d', 'register_depthwise_backend', 'set_depthwise_backend',
    'get_depthwise_backend', 'list_depthwise_backends',
]

IntPair = Tuple[int, int]
# fn(x, weight, bias, stride, padding, dilation) -> Tensor
BackendFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor], IntPair, IntPair, IntPair], torch.Tensor]
# supports(x, weight, stride, padding, dilation) -> bool
SupportsFn = Callable[[torch.Tensor, torch.Tensor, IntPair, IntPair, IntPair], bool]


@dataclass(frozen=True)
class _Backend:
    name: str
    fn: BackendFn
    supports: SupportsFn
    priority: int


def _torch_depthwise(x, weight, bias, stride, padding, dilation):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups=weight.shape[0])


_BACKENDS: List[_Backend] = [_Backend('torch', _torch_depthwise, lambda *args: True, priority=0)]
_SELECTED = 'auto'


def register_depthwise_backend(name: str, fn: BackendFn, supports: SupportsFn, priority: int = 10) -> None:
    """Add (or replace) a backend. In 'auto' mode the highest-priority backend that supports a call runs it."""
    global _BACKENDS
    backends = [b for b in _BACKENDS if b.name != name] + [_Backend(name, fn, supports, priority)]
    _BACKENDS = sorted(backends, key=lambda b: -b.priority)


def list_depthwise_backends() -> List[str]:
    return [b.name for b in _BACKENDS]


def set_depthwise_backend(name: str = 'auto') -> None:
    """Force one backend for every depthwise conv ('torch', a registered name) or restore 'auto'."""
    global _SELECTED
    if name != 'auto' and name not in list_depthwise_backends():
        raise ValueError(f"Unknown depthwise backend '{name}'; available: auto, {', '.join(list_depthwise_backends())}")
    _SELECTED = name


def get_depthwise_backend() -> str:
    return _SELECTED


def depthwise_conv2d(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        stride: IntPair,
        padding: IntPair,
        dilation: IntPair,
) -> torch.Tensor:
    """Depthwise 2D convolution (groups == channels) through the selected backend."""
    for backend in _BACKENDS:
        if _SELECTED == backend.name or (_SELECTED == 'auto' and backend.supports(x, weight, stride, padding, dilation)):
            return backend.fn(x, weight, bias, stride, padding, dilation)
    return _torch_depthwise(x, weight, bias, stride, padding, dilation)


# fx traces a call to the dispatcher as one node instead of tracing into its data-dependent choice.
torch.fx.wrap('depthwise_conv2d')
register_notrace_function(depthwise_conv2d)


def _same_padding(kernel_size: IntPair, dilation: IntPair) -> IntPair:
    return tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))


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
        kernel_size = nn.modules.utils._pair(kernel_size)
        dilation = nn.modules.utils._pair(dilation)
        if padding is None:
            padding = _same_padding(kernel_size, dilation)
        super().__init__(
            channels, channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
            groups=channels, bias=bias, device=device, dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


# Triton kernels (lkconv.kernels): registering them imports no triton; 'auto' picks them only for CUDA
# calls that their table of measured speed-ups favours.
from ..kernels import triton_depthwise_conv2d, use_triton_depthwise  # noqa: E402
register_depthwise_backend('triton', triton_depthwise_conv2d, use_triton_depthwise)
