"""Global Response Normalization (ConvNeXt-V2), channels-last, with an optional bias."""
import torch
import torch.nn as nn

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
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        x = x + self.weight * (x * nx)
        if self.bias is not None:
            x = x + self.bias
        return x
