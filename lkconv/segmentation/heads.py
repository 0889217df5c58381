"""Decode heads of OpenMMLab's mmsegmentation in plain PyTorch: UperNet's `UPerHead`, the auxiliary `FCNHead`
and Semantic FPN's `FPNHead`.

Papers: `Unified Perceptual Parsing for Scene Understanding` - https://arxiv.org/abs/1807.10221 (UperNet);
`Pyramid Scene Parsing Network` - https://arxiv.org/abs/1612.01105 (the pyramid pooling UperNet uses);
`Fully Convolutional Networks for Semantic Segmentation` - https://arxiv.org/abs/1411.4038 (FCN);
`Panoptic Feature Pyramid Networks` - https://arxiv.org/abs/1901.02446 (Semantic FPN).

Reference implementation: https://github.com/open-mmlab/mmsegmentation (Apache-2.0), `decode_heads/uper_head.py`,
`psp_head.py`, `fcn_head.py`, `fpn_head.py`. The published UperNet / Semantic FPN checkpoints of the zoo's families
were trained with mmseg 0.x, whose heads compute what these do.

The module names are mmseg's, so the `decode_head.*` / `auxiliary_head.*` weights of those checkpoints load strictly:
mmcv's `ConvModule` (conv without bias -> BatchNorm -> ReLU, keys `<name>.conv.weight`, `<name>.bn.*`) is timm's
`ConvNormAct`, whose keys are the same. Every head takes the backbone's list of feature maps, ends in dropout and
a 1x1 classifier `conv_seg`, and returns logits at the resolution of its finest input; every resize is bilinear
with the head's `align_corners` (False in all but mmseg's 769x769 Cityscapes configs).

For multi-GPU training convert the BatchNorms with `timm.layers.convert_sync_batchnorm(model)` (the configs use
SyncBN; its keys and eval-mode function are those of BatchNorm).
"""
import math
from typing import List, Sequence, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct

__all__ = ['conv_module', 'resize', 'DecodeHead', 'PyramidPooling', 'UperHead', 'FCNHead', 'FPNHead']


def conv_module(
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        norm_layer: Type[nn.Module] = nn.BatchNorm2d,
        act_layer: Type[nn.Module] = nn.ReLU,
        device=None,
        dtype=None,
) -> ConvNormAct:
    """mmcv's `ConvModule` as the heads build it: a same-padded conv without bias, the norm, the activation."""
    return ConvNormAct(in_chs, out_chs, kernel_size, padding=kernel_size // 2, norm_layer=norm_layer,
                       act_layer=act_layer, device=device, dtype=dtype)


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize to `size` (H, W), as every resize of the heads and segmentors."""
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=align_corners)


class DecodeHead(nn.Module):
    """What every decode head ends in (mmseg's `BaseDecodeHead.cls_seg`): channel dropout, then a 1x1 conv with
    bias to `num_classes` logits. Subclasses build their layers and call `classify` last."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.1, align_corners: bool = False,
                 device=None, dtype=None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f'num_classes must be at least 1, got {num_classes}')
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1, device=device, dtype=dtype)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))

    def resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return resize(x, size, self.align_corners)


class PyramidPooling(nn.ModuleList):
    """PSPNet's pyramid pooling: for each pool scale s, average-pool to s x s, a 1x1 conv module, and a resize back
    to the input's size. `forward` returns the list of those maps; entry i is `(AdaptiveAvgPool2d, conv module)`,
    so its conv's keys are `i.1.conv.*` as mmseg's `PPM`."""

    def __init__(self, pool_scales: Sequence[int], in_chs: int, channels: int, align_corners: bool = False,
                 norm_layer: Type[nn.Module] = nn.BatchNorm2d, act_layer: Type[nn.Module] = nn.ReLU,
                 device=None, dtype=None):
        super().__init__([
            nn.Sequential(nn.AdaptiveAvgPool2d(scale),
                          conv_module(in_chs, channels, 1, norm_layer, act_layer, device=device, dtype=dtype))
            for scale in pool_scales])
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [resize(branch(x), x.shape[-2:], self.align_corners) for branch in self]


class UperHead(DecodeHead):
    """UperNet's decode head (mmseg `UPerHead`): a feature pyramid over all input levels whose top level is
    pyramid pooling, fused at the finest level's resolution.

    1. The last level goes through `psp_modules` (pyramid pooling), is concatenated with their outputs and
       reduced by the 3x3 `bottleneck`: that is the top lateral.
    2. The other levels get 1x1 `lateral_convs`; top-down, each lateral adds the resized (already updated)
       lateral above it.
    3. 3x3 `fpn_convs` on all laterals but the top one; all levels are resized to the finest one, concatenated
       and fused by the 3x3 `fpn_bottleneck`, then classified.

    Args:
        in_channels: channels of the feature maps, finest first (the backbone's `feature_info.channels()`).
        num_classes: number of output classes.
        channels: width of every conv module of the head (512 in the published configs).
        pool_scales: output sizes of the pyramid pooling.
        dropout: channel dropout before the classifier.
        align_corners: of every bilinear resize.
        norm_layer, act_layer: of the conv modules.
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            num_classes: int,
            channels: int = 512,
            pool_scales: Sequence[int] = (1, 2, 3, 6),
            dropout: float = 0.1,
            align_corners: bool = False,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__(channels, num_classes, dropout, align_corners, device=device, dtype=dtype)
        dd = dict(norm_layer=norm_layer, act_layer=act_layer, device=device, dtype=dtype)
        self.psp_modules = PyramidPooling(pool_scales, in_channels[-1], channels, align_corners, **dd)
        self.bottleneck = conv_module(in_channels[-1] + len(pool_scales) * channels, channels, 3, **dd)
        self.lateral_convs = nn.ModuleList([conv_module(c, channels, 1, **dd) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([conv_module(channels, channels, 3, **dd) for _ in in_channels[:-1]])
        self.fpn_bottleneck = conv_module(len(in_channels) * channels, channels, 3, **dd)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        laterals.append(self.bottleneck(torch.cat([top, *self.psp_modules(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self.resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [self.resize(x, size) for x in outs[1:]]
        return self.classify(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(DecodeHead):
    """The FCN head (mmseg `FCNHead`) that the UperNet configs attach to one level as an auxiliary head:
    `num_convs` conv modules (`convs.{i}`), optionally the input concatenated back and fused by `conv_cat`,
    then the classifier.

    Args:
        in_chs: channels of the feature map it reads.
        num_classes: number of output classes.
        in_index: which of the feature maps it reads (2, the stride-16 map, in the published configs).
        channels: width of its conv modules (256 in the published configs).
        num_convs: number of conv modules (at least 1).
        kernel_size: of the conv modules.
        concat_input: concatenate the input with the convs' output and fuse them with another conv module.
        dropout, align_corners, norm_layer, act_layer: as `UperHead`.
    """

    def __init__(
            self,
            in_chs: int,
            num_classes: int,
            in_index: int = 2,
            channels: int = 256,
            num_convs: int = 1,
            kernel_size: int = 3,
            concat_input: bool = False,
            dropout: float = 0.1,
            align_corners: bool = False,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__(channels, num_classes, dropout, align_corners, device=device, dtype=dtype)
        if num_convs < 1:
            raise ValueError(f'num_convs must be at least 1, got {num_convs}')
        dd = dict(norm_layer=norm_layer, act_layer=act_layer, device=device, dtype=dtype)
        self.in_index = in_index
        self.convs = nn.Sequential(*[
            conv_module(in_chs if i == 0 else channels, channels, kernel_size, **dd) for i in range(num_convs)])
        self.conv_cat = conv_module(in_chs + channels, channels, kernel_size, **dd) if concat_input else None

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[self.in_index]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.classify(out)


class FPNHead(DecodeHead):
    """Semantic FPN's decode head (mmseg `FPNHead`): one branch per pyramid level (`scale_heads.{i}`) of 3x3 conv
    modules, each followed by a bilinear 2x upsampling, as many as it takes to reach the finest level; the
    branches are summed at the finest level's resolution and classified.

    Only the ratios of `feature_strides` to the first one matter: level i gets log2(stride_i / stride_0)
    conv + upsampling steps (one conv and no upsampling for level 0). LSNet's levels at strides 8..64 with the
    config's (4, 8, 16, 32) therefore build the same head as their real strides, and predict at stride 8.

    Args:
        in_channels: channels of the pyramid levels, finest first (the neck's width, 256, for each).
        feature_strides: strides of the levels, the first the smallest; powers of two.
        num_classes: number of output classes.
        channels: width of the conv modules (128 in the published configs).
        dropout, align_corners, norm_layer, act_layer: as `UperHead`.
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            feature_strides: Sequence[int],
            num_classes: int,
            channels: int = 128,
            dropout: float = 0.1,
            align_corners: bool = False,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__(channels, num_classes, dropout, align_corners, device=device, dtype=dtype)
        if len(feature_strides) != len(in_channels) or min(feature_strides) != feature_strides[0]:
            raise ValueError(f'feature_strides must give one stride per level ({len(in_channels)}), the first '
                             f'the smallest; got {tuple(feature_strides)}')
        dd = dict(norm_layer=norm_layer, act_layer=act_layer, device=device, dtype=dtype)
        self.scale_heads = nn.ModuleList()
        for in_chs, stride in zip(in_channels, feature_strides):
            steps = max(1, int(math.log2(stride) - math.log2(feature_strides[0])))
            layers = []
            for step in range(steps):
                layers.append(conv_module(in_chs if step == 0 else channels, channels, 3, **dd))
                if stride != feature_strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode='bilinear', align_corners=align_corners))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])
        for head, x in zip(self.scale_heads[1:], features[1:]):
            out = out + self.resize(head(x), out.shape[-2:])
        return self.classify(out)
