"""What every Triton launcher here needs: interpreter detection, device checks and default tile shapes.

Imports triton; only the kernel modules import this file.
"""
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import triton

__all__ = ['TileConfig', 'default_tile', 'device_guard', 'interpreting', 'next_pow2', 'require_kernel_device']


def interpreting() -> bool:
    """True when triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, set before importing triton)."""
    knobs = getattr(triton, 'knobs', None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get('TRITON_INTERPRET', '0') == '1'  # triton < 3.4 has no knobs and reads the variable


def require_kernel_device(t: torch.Tensor) -> None:
    if not (t.is_cuda or interpreting()):
        raise RuntimeError(
            f'Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got a {t.device} tensor')


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else nullcontext()


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


@dataclass(frozen=True)
class TileConfig:
    """A program's tile of a (channels, rows, columns) output grid, and its warps."""
    block_c: int
    block_h: int
    block_w: int
    num_warps: int = 4


# Elements per program. On a GPU these are starting points for tuning; under the interpreter every
# program is a Python loop over numpy arrays, so fewer, larger tiles keep the CPU tests fast.
GPU_TILE, CPU_TILE = 512, 8192
_GPU_MAX_CHANNELS, _GPU_MAX_COLUMNS = 64, 64


def default_tile(c: int, h: int, w: int, channels_last: bool, shrink: int = 1) -> TileConfig:
    """Fill the dimension that is contiguous in memory first: channels for channels_last, columns for NCHW.

    `shrink` divides the element budget, for kernels whose accumulator holds several values per element.
    """
    gpu = not interpreting()
    budget = max(1, (GPU_TILE if gpu else CPU_TILE) // shrink)
    if channels_last:
        bc = min(next_pow2(c), _GPU_MAX_CHANNELS if gpu else budget)
        bw = min(next_pow2(w), max(1, budget // bc))
        bh = min(next_pow2(h), max(1, budget // (bc * bw)))
    else:
        bw = min(next_pow2(w), _GPU_MAX_COLUMNS if gpu else budget)
        bh = min(next_pow2(h), max(1, budget // bw))
        bc = min(next_pow2(c), max(1, budget // (bw * bh)))
    return TileConfig(bc, bh, bw)
