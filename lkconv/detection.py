"""Detection and segmentation backbones: a timm feature extractor followed by torchvision's feature pyramid.

torchvision's `BackboneWithFPN` reaches the feature maps through `IntermediateLayerGetter`, which needs the
maps to be outputs of top-level children run in order; timm models do not have that shape. `TimmFpnBackbone`
composes `timm.create_model(name, features_only=True, out_indices=...)` with
`torchvision.ops.FeaturePyramidNetwork` instead, for lkconv's models and timm's alike.

Everything a torchvision detector needs that depends on the backbone's strides (UniRepLKNet, InceptionNeXt,
VAN and FDConv nets: 4/8/16/32; LSNet: 8/16/32/64) is read from the backbone, never written by hand:

    backbone = TimmFpnBackbone('lsnet_t', pretrained=True)
    model = torchvision.models.detection.FasterRCNN(backbone, num_classes=91, **faster_rcnn_kwargs(backbone))
"""
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import freeze_batch_norm_2d
from timm.utils import freeze
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from .models._input import check_image_input

__all__ = ['TimmFpnBackbone', 'anchor_generator_for', 'roi_align_for', 'faster_rcnn_kwargs']

EXTRA_LEVELS = ('maxpool', 'p6p7', 'none')


class TimmFpnBackbone(nn.Module):
    """A timm model's feature maps through a feature pyramid: `forward(images)` -> OrderedDict of maps,
    all `out_channels` wide, keyed '0', '1', ... (the model's levels) then the extra levels.

    Args:
        model_name: any timm model that supports `features_only` (lkconv's once `lkconv` is imported).
        pretrained: load the model's pretrained weights, as `timm.create_model(pretrained=True)`.
        out_indices: the model's feature levels fed to the pyramid, in timm's numbering (an int n: the last n).
            Default: the last four.
        out_channels: width of every pyramid level.
        extra_levels: levels added after the last one, each at twice its stride: 'maxpool' (one max-pooled
            level, torchvision's R-CNNs), 'p6p7' (two strided 3x3 convs, RetinaNet / FCOS) or 'none'.
        frozen_stages: freeze the stem and the model's first `frozen_stages` feature levels (counted over all
            of its levels, as `out_indices` counts them): their parameters stop training, their BatchNorms
            become FrozenBatchNorm2d and they stay in eval mode. 0 freezes nothing.
        freeze_bn: turn every BatchNorm of the model into FrozenBatchNorm2d (fixed statistics and affine terms,
            as torchvision's detection backbones do), the usual choice for a few images per device.
        model_args: further `timm.create_model` arguments, e.g. dict(drop_path_rate=0.1) or
            dict(pretrained_cfg_overlay=dict(file='checkpoint.pth')).

    Attributes read by the helpers below: `out_channels`, `strides` (one per output map), `level_names` (the
    model's levels), `extra_level_names`, `image_mean` / `image_std` (the model's input normalisation) and
    `size_divisible` (the largest stride of the model's levels: images padded to it give every level an exact
    stride).
    """

    def __init__(
            self,
            model_name: str,
            pretrained: bool = False,
            out_indices: Union[int, Sequence[int]] = 4,
            out_channels: int = 256,
            extra_levels: str = 'maxpool',
            frozen_stages: int = 0,
            freeze_bn: bool = False,
            model_args: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        if extra_levels not in EXTRA_LEVELS:
            raise ValueError(f"extra_levels must be one of {EXTRA_LEVELS}, got '{extra_levels}'")
        out_indices = out_indices if isinstance(out_indices, int) else tuple(out_indices)
        self.body = timm.create_model(
            model_name, pretrained=pretrained, features_only=True, out_indices=out_indices, **(model_args or {}))
        info = self.body.feature_info
        reductions = info.reduction()
        self.level_names = [str(i) for i in range(len(reductions))]
        self.extra_level_names = dict(maxpool=['pool'], p6p7=['p6', 'p7'], none=[])[extra_levels]
        self.strides = reductions + [reductions[-1] * 2 ** (i + 1) for i in range(len(self.extra_level_names))]
        self.size_divisible = max(reductions)
        self.out_channels = out_channels

        cfg = self.body.pretrained_cfg
        self.image_mean = list(cfg.get('mean', IMAGENET_DEFAULT_MEAN))
        self.image_std = list(cfg.get('std', IMAGENET_DEFAULT_STD))
        self.in_chans = getattr(self.body, 'in_chans', 3)
        # below its declared minimum a model has no valid output; otherwise each level needs one pixel
        min_size = cfg.get('min_input_size')
        self.min_input_size = max(min_size[1:]) if min_size else max(reductions)

        extra: Optional[ExtraFPNBlock] = None
        if extra_levels == 'maxpool':
            extra = LastLevelMaxPool()
        elif extra_levels == 'p6p7':
            extra = LastLevelP6P7(out_channels, out_channels)  # from the pyramid's last level (P5), as RetinaNet v2
        self.fpn = FeaturePyramidNetwork(info.channels(), out_channels, extra_blocks=extra)

        self.frozen_modules = self._freeze_leading_levels(frozen_stages)
        if freeze_bn:
            freeze_batch_norm_2d(self.body)

    def _freeze_leading_levels(self, count: int) -> List[str]:
        """Freeze the feature extractor's children up to the module of level `count - 1`; returns their names."""
        if count <= 0:
            return []
        info = self.body.feature_info
        children = [name for name, _ in self.body.named_children()]
        # timm's feature wrappers hold each level's module as a child, dots flattened to underscores
        level_modules = [info.get('module', i).replace('.', '_') for i in range(len(info.info))]
        held = [i + 1 for i, name in enumerate(level_modules) if name in children]
        if count > len(level_modules) or level_modules[count - 1] not in children:
            raise ValueError(
                f'frozen_stages={count} is out of range: this backbone holds feature levels up to '
                f'frozen_stages={max(held)} (levels after the last of out_indices are not built)')
        last = level_modules[count - 1]
        names = children[:children.index(last) + 1]
        freeze(self.body, submodules=names)
        for name in names:
            self.body.get_submodule(name).eval()
        return names

    def train(self, mode: bool = True) -> 'TimmFpnBackbone':
        super().train(mode)
        for name in self.frozen_modules:  # frozen stages keep eval-mode dropout / drop path
            self.body.get_submodule(name).eval()
        return self

    def forward(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        features = self.body(check_image_input(x, self.in_chans, self.min_input_size))
        return self.fpn(OrderedDict(zip(self.level_names, features)))


def anchor_generator_for(
        backbone: TimmFpnBackbone,
        sizes: Optional[Sequence[Sequence[int]]] = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> AnchorGenerator:
    """An AnchorGenerator with one size tuple per output map of `backbone`.

    Default sizes are 8x each map's stride: torchvision's (32, 64, 128, 256, 512) for strides 4..64, and
    (64, ..., 1024) for LSNet's 8..128, keeping the anchor-to-stride ratio the RPN was tuned for. Pass `sizes`
    to cover another range of object sizes (e.g. ((32,), (64,), (128,), (256,), (512,)) for LSNet).
    """
    if sizes is None:
        sizes = [(8 * stride,) for stride in backbone.strides]
    if len(sizes) != len(backbone.strides):
        raise ValueError(f'{len(sizes)} anchor size tuples for {len(backbone.strides)} feature maps')
    sizes = tuple(tuple(s) for s in sizes)
    return AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))


def roi_align_for(backbone: TimmFpnBackbone, output_size: int = 7, sampling_ratio: int = 2) -> MultiScaleRoIAlign:
    """RoI Align over the model's levels (not the extra ones), as torchvision's R-CNN heads use them.

    The level scales are inferred from the maps, so any strides work; use output_size=14 for a mask head.
    """
    return MultiScaleRoIAlign(backbone.level_names, output_size, sampling_ratio)


def faster_rcnn_kwargs(
        backbone: TimmFpnBackbone,
        anchor_sizes: Optional[Sequence[Sequence[int]]] = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> Dict[str, Any]:
    """The `FasterRCNN` / `MaskRCNN` arguments that depend on the backbone: anchors per level, RoI pooling over
    its levels, its input normalisation, and padding to its largest stride (LSNet needs 64, not torchvision's 32,
    for the anchors of its last level to be placed at the right stride)."""
    return dict(
        rpn_anchor_generator=anchor_generator_for(backbone, anchor_sizes, aspect_ratios),
        box_roi_pool=roi_align_for(backbone),
        image_mean=backbone.image_mean,
        image_std=backbone.image_std,
        size_divisible=backbone.size_divisible,
    )
