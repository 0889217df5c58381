"""Effective receptive field (ERF): how much each input pixel moves the centre of the last feature map.

The analysis of RepLKNet (Ding et al., "Scaling Up Your Kernels to 31x31", CVPR 2022) made this the
picture of what a large kernel buys. Here:

* the ERF map of a model over a set of images is the mean, over the images, of |d y / d x| summed over
  the input channels, where y is the centre position (H // 2, W // 2) of `forward_features`, summed over
  its channels;
* the high-contribution area ratio at a threshold t is the area of the smallest square centred on the
  image centre that holds a fraction t of the map's total, as a fraction of the image area. A model
  whose ratios are larger spreads its dependence over more of the image.
"""
from typing import Dict, Iterable, Sequence

import torch
import torch.nn as nn

__all__ = ['erf_map', 'feature_map', 'area_ratio', 'area_ratios', 'DEFAULT_THRESHOLDS']

DEFAULT_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's last spatial feature map as (B, C, H, W); ValueError if it has none (or `x` does not fit)."""
    features = model.forward_features(x) if hasattr(model, 'forward_features') else model(x)
    if features.dim() != 4:
        raise ValueError(f'the ERF needs a spatial feature map (B, C, H, W); '
                         f'{type(model).__name__} gives shape {list(features.shape)}')
    if getattr(model, 'output_fmt', 'NCHW') == 'NHWC':
        features = features.permute(0, 3, 1, 2)
    return features


def erf_map(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """ERF of `model` (used in eval mode) over image batches (B, C, H, W): a float64 (H, W) map on the CPU."""
    model.eval()
    total, count = None, 0
    for x in batches:
        x = x.detach().clone().requires_grad_(True)
        features = feature_map(model, x)
        centre = features[:, :, features.shape[2] // 2, features.shape[3] // 2].sum()
        grad, = torch.autograd.grad(centre, x)
        contribution = grad.abs().sum(dim=1).sum(dim=0).double().cpu()
        total = contribution if total is None else total + contribution
        count += x.shape[0]
    if total is None:
        raise ValueError('no images to compute the ERF from')
    return total / count


def area_ratio(erf: torch.Tensor, threshold: float) -> float:
    """Area fraction of the smallest centred square holding `threshold` of the ERF's total contribution."""
    if not 0 < threshold <= 1:
        raise ValueError(f'threshold must be in (0, 1], got {threshold}')
    h, w = erf.shape
    cy, cx = h // 2, w // 2
    goal = threshold * float(erf.sum())
    for r in range(max(h, w)):
        top, bottom, left, right = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
        if float(erf[top:bottom, left:right].sum()) >= goal * (1 - 1e-12):
            return (bottom - top) * (right - left) / (h * w)
    return 1.0


def area_ratios(erf: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Dict[float, float]:
    return {t: area_ratio(erf, t) for t in thresholds}
