"""The feature pyramid neck of Semantic FPN, as OpenMMLab's `FPN` builds it for the published configs.

Paper: `Feature Pyramid Networks for Object Detection` - https://arxiv.org/abs/1612.03144
Reference implementation: https://github.com/open-mmlab/mmsegmentation `mmseg/models/necks/fpn.py` (Apache-2.0)
(LSNet's `LSNetFPN` is the same neck when, as in its Semantic FPN config, it adds no extra levels).

The configs use it with no norm and no activation and as many outputs as inputs, which is all this module
does: 1x1 `lateral_convs` and 3x3 `fpn_convs`, both with bias (keys `<name>.{i}.conv.weight` / `.bias`), and a
top-down path that adds each level's lateral, upsampled to the next finer level by nearest-neighbour
interpolation, to that level's lateral. torchvision's `FeaturePyramidNetwork` computes the same but names its
weights differently, so the published `neck.*` weights would not load into it.
"""
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct

__all__ = ['FPN']


class FPN(nn.Module):
    """Feature pyramid: one `out_channels`-wide map per input map, at the input's resolution.

    Args:
        in_channels: channels of the input maps, finest first (the backbone's `feature_info.channels()`).
        out_channels: width of every output map (256 in the published configs).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, device=None, dtype=None):
        super().__init__()

        def conv(in_chs: int, kernel_size: int) -> ConvNormAct:  # a bare conv kept under the name `conv`
            return ConvNormAct(in_chs, out_channels, kernel_size, padding=kernel_size // 2, bias=True,
                               apply_norm=False, device=device, dtype=dtype)

        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList([conv(c, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([conv(out_channels, 3) for _ in in_channels])

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode='nearest')
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
