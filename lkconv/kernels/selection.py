"""When the Triton kernels replace PyTorch in 'auto' mode: a table of measured speed-ups.

A call runs on Triton only if all of these hold:
* the tensors are on CUDA and the triton package is installed (CPU calls never look further, so models
  on CPU never import triton);
* the compute dtype (the autocast dtype when autocast is on, as for `F.conv2d`) is fp32, fp16 or bf16,
  and for depthwise the weight is (C, 1, KH, KW) with C the input's channels;
* the table below has a measurement for this GPU architecture and case (dtype, layout, kernel, stride,
  dilation for depthwise; dtype, layout, K for SKA), and at the measured feature-map size nearest to the
  call's (in log H*W) Triton was at least `SPEEDUP_MARGIN` times faster than PyTorch for forward+backward
  on the same input layout.

The shipped table is empty: no GPU measurement exists yet, so 'auto' keeps PyTorch everywhere until
`make gpu-check` (or `lkconv bench-kernels --emit-table`) has run on a GPU and its entries are pasted
below (or its `kernels.json` rows loaded at run time with `add_speedups`). `set_depthwise_backend('triton')` / `set_ska_backend('triton')` force the
kernels regardless of the table.
"""
import importlib.util
import math
from typing import Dict, Iterable, Optional, Tuple

import torch

from .geometry import is_channels_last

__all__ = [
    'SPEEDUP_MARGIN', 'DEPTHWISE_SPEEDUPS', 'SKA_SPEEDUPS', 'add_speedups', 'depthwise_case', 'depthwise_case_of',
    'ska_case', 'use_triton_depthwise', 'use_triton_ska', 'prefers_triton',
]

SPEEDUP_MARGIN = 1.1

# (arch, 'depthwise', dtype, layout, (kh, kw), (sh, sw), (dh, dw)) or (arch, 'ska', dtype, layout, k)
#   -> ((h, w, speedup), ...) with speedup = PyTorch time / Triton time, forward + backward
Case = Tuple
Points = Tuple[Tuple[int, int, float], ...]
DEPTHWISE_SPEEDUPS: Dict[Case, Points] = {}
SKA_SPEEDUPS: Dict[Case, Points] = {}

_KERNEL_DTYPES = {torch.float32: 'float32', torch.float16: 'float16', torch.bfloat16: 'bfloat16'}
_triton_installed: Optional[bool] = None
_arch_by_device: Dict[int, str] = {}


def _has_triton() -> bool:
    global _triton_installed
    if _triton_installed is None:  # find_spec locates the package without importing it
        _triton_installed = importlib.util.find_spec('triton') is not None
    return _triton_installed


def _arch(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _arch_by_device:
        major, minor = torch.cuda.get_device_capability(index)
        _arch_by_device[index] = f'sm{major}{minor}'
    return _arch_by_device[index]


def _compute_dtype(x: torch.Tensor, autocast: bool) -> Optional[str]:
    dtype = x.dtype
    if autocast and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    return _KERNEL_DTYPES.get(dtype)


def _layout(x: torch.Tensor) -> str:
    return 'channels_last' if is_channels_last(x) else 'nchw'


def depthwise_case(arch: str, dtype: str, layout: str, kernel: Iterable[int], stride: Iterable[int],
                   dilation: Iterable[int]) -> Case:
    return arch, 'depthwise', dtype, layout, tuple(kernel), tuple(stride), tuple(dilation)


def ska_case(arch: str, dtype: str, layout: str, k: int) -> Case:
    return arch, 'ska', dtype, layout, int(k)


def prefers_triton(points: Optional[Points], h: int, w: int, margin: float = SPEEDUP_MARGIN) -> bool:
    """Triton wins if it was `margin` times faster at the measured size nearest to h x w (log of pixels)."""
    if not points:
        return False
    size = math.log(max(1, h * w))
    nearest = min(points, key=lambda p: abs(math.log(max(1, p[0] * p[1])) - size))
    return nearest[2] >= margin


def add_speedups(rows: Iterable[Tuple[Case, int, int, float]]) -> None:
    """Merge measurements (case, h, w, speedup) into the tables, replacing earlier ones at the same size.

    Accepts the `selection_rows` of a GPU check's `kernels.json` (or `lkconv bench-kernels --json`) as
    loaded from JSON (lists for tuples).
    """
    for case, h, w, speedup in rows:
        case = tuple(tuple(v) if isinstance(v, list) else v for v in case)
        table = SKA_SPEEDUPS if case[1] == 'ska' else DEPTHWISE_SPEEDUPS
        kept = tuple(p for p in table.get(case, ()) if (p[0], p[1]) != (h, w))
        table[case] = kept + ((int(h), int(w), float(speedup)),)


def depthwise_case_of(x: torch.Tensor, weight: torch.Tensor, stride, dilation, arch: str) -> Optional[Case]:
    """The table key of a depthwise call on `arch`, or None if the kernels cannot run it."""
    dtype = _compute_dtype(x, autocast=True)
    if dtype is None or x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1]:
        return None
    return depthwise_case(arch, dtype, _layout(x), weight.shape[2:], stride, dilation)


def use_triton_depthwise(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> bool:
    """`supports` function of the 'triton' depthwise backend (see the module docstring)."""
    if x.device.type != 'cuda' or not DEPTHWISE_SPEEDUPS or not _has_triton():
        return False
    case = depthwise_case_of(x, weight, stride, dilation, _arch(x.device))
    return case is not None and prefers_triton(DEPTHWISE_SPEEDUPS.get(case), x.shape[2], x.shape[3])


def use_triton_ska(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """`supports` function of the 'triton' SKA backend (see the module docstring)."""
    if x.device.type != 'cuda' or not SKA_SPEEDUPS or not _has_triton():
        return False
    if _compute_dtype(x, autocast=False) is None or weight.dtype not in _KERNEL_DTYPES:
        return False
    k = int(round(math.sqrt(weight.shape[2])))
    case = ska_case(_arch(x.device), _KERNEL_DTYPES[x.dtype], _layout(x), k)
    return prefers_triton(SKA_SPEEDUPS.get(case), x.shape[2], x.shape[3])
