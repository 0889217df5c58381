"""Global Response Normalization (ConvNeXt-V2), channels-last, with an optional bias."""
import torch
import torch.nn as nn
from timm.layers import register_notrace_function

__all__ = ['GlobalResponseNormNHWC']


class GlobalResponseNormNHWC(nn.Module):
    """GRN on (N, H, W, C): x + weight * (x * Nx) [+ bias], Nx = ||x||_HW / mean_C(||x||_HW).

    Unlike `timm.layers.GlobalResponseNorm` the bias can be absent (it folds into the next linear layer on
    re-parameterisation) and the parameters keep the official (1, 1, 1, C) shape, so that optimiser rules
    based on parameter rank (no weight decay on 1-D tensors) treat them as the official recipes do.
    """

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, dim, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.weight * (x * _response_ratio(x, self.eps))
        if self.bias is not None:
            x = x + self.bias
        return x


def _response_ratio(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nx = ||x||_HW / (mean_C ||x||_HW + eps) of an (N, H, W, C) map, in x's dtype.

    For float16 / bfloat16 the norm is taken in float32 and the ratio (near 1) cast back: in float16
    ||x||_HW passes 65504 on detection-size maps (e.g. 200x304 at an RMS of 270), and inf / inf would turn
    the whole block into NaN. float32 and float64 use the formula directly.
    """
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        gx = torch.linalg.vector_norm(x, 2, dim=[1, 2], keepdim=True, dtype=torch.float32)
        return (gx / (gx.mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    return gx / (gx.mean(dim=-1, keepdim=True) + eps)


# fx records the dtype-dependent ratio as one call instead of tracing its branch
torch.fx.wrap('_response_ratio')
register_notrace_function(_response_ratio)
