"""Frequency Band Modulation (FDConv, CVPR 2025): spatially varying gains per frequency band of a feature.

The input x is split with square (L-infinity) low-pass masks at cut-offs 0.5/k cycles/pixel,
k in `k_list` = (2, 4, 8): bands x - L2, L2 - L4, L4 - L8 and the remainder L8. Each band except the
lowest is multiplied by its own attention map A_k = 2 * sigmoid(conv3x3(x)) of shape (B, 1, H, W);
with every A_k = 1 (their init) the output equals x:

    y = A2 (x - L2) + A4 (L2 - L4) + A8 (L4 - L8) + L8

The masks are built once on a 64x64 grid and resized with nearest interpolation to each input's
half-spectrum (H, W//2 + 1), exactly as the official layer does (they are not recomputed per size).
The FFTs run in float32; the output is returned in the input's dtype.
"""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ksm import modulation_act

__all__ = ['FrequencyBandModulation', 'band_masks']

_MASK_GRID = 64


def band_masks(k_list: Sequence[int], device=None) -> torch.Tensor:
    """Low-pass masks (len(k_list), 1, 64, 33), bool: max(|fy|, |fx|) < 0.5 / k (+1e-8, compared in float32)."""
    freq_rows = torch.fft.fftfreq(_MASK_GRID, device='cpu')
    freq_cols = torch.fft.rfftfreq(_MASK_GRID, device='cpu')
    rows, cols = torch.meshgrid(freq_rows.abs(), freq_cols.abs(), indexing='ij')
    radius = torch.maximum(rows, cols)
    masks = torch.stack([radius < 0.5 / k + 1e-8 for k in k_list]).unsqueeze(1)
    return masks.to(device)


class FrequencyBandModulation(nn.Module):

    def __init__(
            self,
            in_chs: int,
            k_list: Sequence[int] = (2, 4, 8),
            lowfreq_att: bool = False,
            act: str = 'sigmoid',
            device=None,
            dtype=None,
    ):
        super().__init__()
        if act not in ('sigmoid', 'tanh'):
            raise ValueError(f"FBM act must be 'sigmoid' or 'tanh', got {act!r}")
        self.k_list = tuple(k_list)
        self.lowfreq_att = lowfreq_att
        self.act = act
        self.band_convs = nn.ModuleList([
            nn.Conv2d(in_chs, 1, kernel_size=3, padding=1, device=device, dtype=dtype)
            for _ in range(len(self.k_list) + int(lowfreq_att))
        ])
        for conv in self.band_convs:
            if not conv.weight.is_meta:  # no values to set (and torch's normal_ is slow on meta tensors)
                nn.init.normal_(conv.weight, std=1e-6)
                nn.init.zeros_(conv.bias)
        masks = band_masks(self.k_list, device=self.band_convs[0].weight.device)
        self.register_buffer('masks', masks, persistent=False)

    def init_non_persistent_buffers(self) -> None:
        self.masks = band_masks(self.k_list, device=self.band_convs[0].weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        x32 = x.float()
        spectrum = torch.fft.rfft2(x32, norm='ortho')
        masks = F.interpolate(self.masks.float(), size=[height, width // 2 + 1], mode='nearest')
        out = torch.zeros_like(x32)
        higher = x32
        for i, conv in enumerate(self.band_convs):
            attention = modulation_act(conv(x), self.act, 2.0).float()
            if i < len(self.k_list):
                lower = torch.fft.irfft2(spectrum * masks[i], s=[height, width], norm='ortho')
                out = out + attention * (higher - lower)
                higher = lower
            else:  # the optional attention on the lowest band
                higher = attention * higher
        return (out + higher).to(x.dtype)
