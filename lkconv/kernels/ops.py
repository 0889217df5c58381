"""The Triton kernels as PyTorch custom ops, and the backend functions registered in `lkconv.backends`.

Ops (namespace `lkconv`), each with a fake implementation, so that torch.compile traces them as single
graph nodes with known output shapes and strides, and FakeTensor / meta propagation works:

    depthwise_conv2d(x, weight, bias, stride, padding, dilation)         autograd: the two ops below
    depthwise_conv2d_input_grad(grad, x, weight, stride, padding, dilation)
    depthwise_conv2d_weight_grad(grad, x, weight, stride, padding, dilation)
    ska(x, weight)                                                       autograd: the two ops below
    ska_input_grad(grad, weight)
    ska_weight_grad(grad, x, weight)

(The gradient ops take `x` / `weight` for their shape, dtype and layout; they read only what the formula
needs.) These are `torch.library.custom_op`s rather than `triton_op`s: a `triton_op` lets Inductor look
inside the kernel, but its compile path cannot run under the CPU interpreter that tests the kernels.

Defining the ops imports no Triton: the kernel modules are imported on the first real (non-fake) call.
Autocast: `F.conv2d` runs in the autocast dtype, so `triton_depthwise_conv2d` casts its inputs the same
way before calling the op; SKA, like its PyTorch reference, is not an autocast op and keeps its dtypes.
"""
from typing import List, Optional, Sequence

import torch

from .geometry import depthwise_output_shape, empty_in_layout_of

__all__ = ['KERNEL_DTYPES', 'triton_depthwise_conv2d', 'triton_small_kernel_aggregation']

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _depthwise_kernels():
    from . import depthwise_triton  # imports triton
    return depthwise_triton


def _ska_kernels():
    from . import ska_triton  # imports triton
    return ska_triton


# ------------------------------------------------------------------------------- depthwise conv ops

@torch.library.custom_op('lkconv::depthwise_conv2d', mutates_args=())
def _depthwise_conv2d(
        x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
        stride: List[int], padding: List[int], dilation: List[int],
) -> torch.Tensor:
    return _depthwise_kernels().depthwise_forward(x, weight, bias, stride, padding, dilation)


@_depthwise_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation):
    return empty_in_layout_of(x, depthwise_output_shape(x.shape, weight.shape[2:], stride, padding, dilation), x.dtype)


@torch.library.custom_op('lkconv::depthwise_conv2d_input_grad', mutates_args=())
def _depthwise_input_grad(
        grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
        stride: List[int], padding: List[int], dilation: List[int],
) -> torch.Tensor:
    return _depthwise_kernels().depthwise_input_grad(grad, weight, x.shape, stride, padding, dilation)


@_depthwise_input_grad.register_fake
def _(grad, x, weight, stride, padding, dilation):
    return empty_in_layout_of(grad, x.shape, grad.dtype)


@torch.library.custom_op('lkconv::depthwise_conv2d_weight_grad', mutates_args=())
def _depthwise_weight_grad(
        grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
        stride: List[int], padding: List[int], dilation: List[int],
) -> torch.Tensor:
    return _depthwise_kernels().depthwise_weight_grad(grad, x, weight.shape, stride, padding, dilation)


@_depthwise_weight_grad.register_fake
def _(grad, x, weight, stride, padding, dilation):
    return torch.empty(weight.shape, dtype=x.dtype, device=x.device)


def _depthwise_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.geometry = (stride, padding, dilation)
    ctx.has_bias = bias is not None


def _depthwise_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = _depthwise_input_grad(grad, x, weight, *ctx.geometry)
    if ctx.needs_input_grad[1]:
        grad_weight = _depthwise_weight_grad(grad, x, weight, *ctx.geometry)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad.sum((0, 2, 3))
    return grad_x, grad_weight, grad_bias, None, None, None


_depthwise_conv2d.register_autograd(_depthwise_backward, setup_context=_depthwise_setup_context)


# -------------------------------------------------------------------------------------------- SKA ops

@torch.library.custom_op('lkconv::ska', mutates_args=())
def _ska(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _ska_kernels().ska_forward(x, weight)


@_ska.register_fake
def _(x, weight):
    return empty_in_layout_of(x, x.shape, x.dtype)


@torch.library.custom_op('lkconv::ska_input_grad', mutates_args=())
def _ska_input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _ska_kernels().ska_input_grad(grad, weight)


@_ska_input_grad.register_fake
def _(grad, weight):
    return empty_in_layout_of(grad, grad.shape, grad.dtype)


@torch.library.custom_op('lkconv::ska_weight_grad', mutates_args=())
def _ska_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _ska_kernels().ska_weight_grad(grad, x, weight)


@_ska_weight_grad.register_fake
def _(grad, x, weight):
    return torch.empty_like(weight)


def _ska_setup_context(ctx, inputs, output):
    x, weight = inputs
    ctx.save_for_backward(x, weight)


def _ska_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x = _ska_input_grad(grad, weight) if ctx.needs_input_grad[0] else None
    grad_weight = _ska_weight_grad(grad, x, weight) if ctx.needs_input_grad[1] else None
    return grad_x, grad_weight


_ska.register_autograd(_ska_backward, setup_context=_ska_setup_context)


# ----------------------------------------------------------------------------- backend entry points

def _check_dtypes(op: str, *tensors: Optional[torch.Tensor]) -> None:
    for t in tensors:
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise TypeError(f'Triton {op} supports float32, float16 and bfloat16, got {t.dtype}')


def triton_depthwise_conv2d(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
) -> torch.Tensor:
    """`depthwise_conv2d` backend: same arguments and result as `F.conv2d(..., groups=C)`, autocast included."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):  # conv2d is an autocast op: compute in the autocast dtype
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    _check_dtypes('depthwise conv', x, weight, bias)
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f'depthwise conv input, weight and bias must share a dtype, got {x.dtype}, {weight.dtype}'
                        f'{", " + str(bias.dtype) if bias is not None else ""}')
    return _depthwise_conv2d(x, weight, bias, list(stride), list(padding), list(dilation))


def triton_small_kernel_aggregation(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`small_kernel_aggregation` backend: x (B, C, H, W), per-pixel kernels weight (B, C/groups, K*K, H, W)."""
    _check_dtypes('SKA', x, weight)
    return _ska(x, weight)
