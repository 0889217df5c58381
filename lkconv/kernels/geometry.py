"""Shapes and memory layouts shared by the Triton launchers and the custom ops' fake implementations.

Both must allocate outputs with the same shape *and strides*: torch.compile plans memory from the fake
implementation, so a layout that differed from the real kernel's output would be a silent bug.
"""
from typing import Sequence, Tuple

import torch

__all__ = ['conv_output_size', 'depthwise_output_shape', 'is_channels_last', 'empty_in_layout_of']


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def depthwise_output_shape(
        x_shape: Sequence[int],
        kernel_size: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
) -> Tuple[int, int, int, int]:
    n, c, h, w = x_shape
    oh = conv_output_size(h, kernel_size[0], stride[0], padding[0], dilation[0])
    ow = conv_output_size(w, kernel_size[1], stride[1], padding[1], dilation[1])
    if oh <= 0 or ow <= 0:
        raise ValueError(f'depthwise conv output would be empty: input {list(x_shape)}, kernel {list(kernel_size)}, '
                         f'stride {list(stride)}, padding {list(padding)}, dilation {list(dilation)}')
    return n, c, oh, ow


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-D tensor whose channels are adjacent in memory (NHWC storage), the layout cuDNN prefers."""
    return t.dim() == 4 and t.shape[1] > 1 and t.stride(1) == 1


def empty_in_layout_of(ref: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised 4-D tensor of `shape` in `ref`'s memory layout (channels_last or contiguous NCHW)."""
    fmt = torch.channels_last if is_channels_last(ref) else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=dtype, device=ref.device, memory_format=fmt)
