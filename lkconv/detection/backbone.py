"""`TimmFpnBackbone` (a timm feature extractor + a feature pyramid) and the torchvision detector arguments that
depend on its strides."""
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import freeze_batch_norm_2d, get_norm_layer
from timm.models._features import FeatureGetterNet
from timm.utils import freeze
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from ..models._input import check_image_input
from .pyramid import FeaturePyramid, StridedConvLevels

__all__ = ['TimmFpnBackbone', 'anchor_generator_for', 'roi_align_for', 'faster_rcnn_kwargs']

STRIDED_CONV_LEVELS = ('on_input', 'on_output')
EXTRA_LEVELS = ('maxpool', 'p6p7', 'none') + STRIDED_CONV_LEVELS


class TimmFpnBackbone(nn.Module):
    """A timm model's feature maps through a feature pyramid: `forward(images)` -> OrderedDict of maps, all
    `out_channels` wide, finest first: the finer levels 'up{n}' ... 'up1' (if any), the model's levels '0', '1',
    ..., then the extra levels.

    Args:
        model_name: any timm model that supports `features_only` (lkconv's once `lkconv` is imported).
        pretrained: load the model's pretrained weights, as `timm.create_model(pretrained=True)`.
        out_indices: the model's feature levels fed to the pyramid, in timm's numbering (an int n: the last n).
            Default: the last four.
        out_channels: width of every pyramid level.
        extra_levels: levels added after the last one, each at twice its stride: 'maxpool' (one max-pooled
            level, torchvision's R-CNNs and mmdet's FPN without extra convs), 'p6p7' (torchvision's RetinaNet /
            FCOS: two 3x3 stride-2 convs from the last pyramid level, a ReLU between them), 'on_input' /
            'on_output' (mmdet's `add_extra_convs`: `num_extra_levels` 3x3 stride-2 convs, the first on the
            model's last map or on the last pyramid level, named 'down1', 'down2', ...) or 'none'.
        frozen_stages: freeze the stem and the model's first `frozen_stages` feature levels (counted over all
            of its levels, as `out_indices` counts them): their parameters stop training, their BatchNorms
            become FrozenBatchNorm2d and they stay in eval mode. 0 freezes nothing.
        freeze_bn: turn every BatchNorm of the model into FrozenBatchNorm2d (fixed statistics and affine terms,
            as torchvision's detection backbones do), the usual choice for a few images per device.
        model_args: further `timm.create_model` arguments, e.g. dict(drop_path_rate=0.1) or
            dict(pretrained_cfg_overlay=dict(file='checkpoint.pth')).
        num_extra_levels: how many levels 'on_input' / 'on_output' add. Default: 1.
        relu_before_extra_convs: a ReLU before every 'on_input' / 'on_output' conv but the first, as mmdet's
            option of that name.
        extra_fine_levels: levels added before the first one, each at half its stride: a 2x2 stride-2
            transposed conv of the finest lateral (after the top-down sum), then a 3x3 conv, as LSNet's
            `LSNetFPN(num_extra_trans_convs=n)`. 1 gives LSNet a stride-4 level 'up1'.
        norm_layer: a norm after every pyramid conv (lateral, output, extra and finer levels; their convs lose
            their bias), as mmdet's `norm_cfg`: a timm norm name ('batchnorm', 'groupnorm' for 32 groups) or a
            callable taking the channel count, e.g. `functools.partial(nn.GroupNorm, 32)`. None: no norm. The
            'p6p7' convs are torchvision's and stay unnormalised.

    Attributes read by the helpers below: `out_channels`, `strides` (one per output map), `level_names` (the
    finer levels and the model's levels: every level but the extra ones), `fine_level_names` (the finer ones
    alone), `extra_level_names`, `image_mean` / `image_std` (the model's input normalisation) and
    `size_divisible` (the largest stride of the model's levels: images padded to it give every level but the
    extra ones an exact stride).
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
            *,  # the pyramid's options: keyword-only, so that the positions of the ones above stay
            num_extra_levels: Optional[int] = None,
            relu_before_extra_convs: bool = False,
            extra_fine_levels: int = 0,
            norm_layer: Union[str, Callable[[int], nn.Module], None] = None,
    ):
        super().__init__()
        _check_extra_levels(extra_levels, num_extra_levels, relu_before_extra_convs)
        if extra_fine_levels < 0:
            raise ValueError(f'extra_fine_levels must be 0 or more, got {extra_fine_levels}')
        norm_layer = _resolve_norm_layer(norm_layer)
        out_indices = out_indices if isinstance(out_indices, int) else tuple(out_indices)
        self.body = timm.create_model(
            model_name, pretrained=pretrained, features_only=True, out_indices=out_indices, **(model_args or {}))
        info = self.body.feature_info
        reductions, channels = info.reduction(), info.channels()
        if reductions[0] % 2 ** extra_fine_levels:
            halvings = (reductions[0] & -reductions[0]).bit_length() - 1  # times the stride halves to a whole one
            raise ValueError(
                f'extra_fine_levels={extra_fine_levels} is too many: the finest level has stride {reductions[0]}, '
                f'which allows at most {halvings} finer levels')

        extra, self.extra_level_names = _extra_block(
            extra_levels, num_extra_levels or 1, relu_before_extra_convs, channels[-1], out_channels, norm_layer)
        self.fpn = FeaturePyramid(channels, out_channels, extra, norm_layer, finer_levels=extra_fine_levels)
        self.fine_level_names = self.fpn.finer_blocks.names if self.fpn.finer_blocks is not None else []
        self._input_names = [str(i) for i in range(len(reductions))]
        self.level_names = self.fine_level_names + self._input_names
        fine_strides = [reductions[0] >> k for k in range(extra_fine_levels, 0, -1)]
        extra_strides = [reductions[-1] << (i + 1) for i in range(len(self.extra_level_names))]
        self.strides = fine_strides + reductions + extra_strides
        self.size_divisible = max(reductions)
        self.out_channels = out_channels

        cfg = self.body.pretrained_cfg
        self.image_mean = list(cfg.get('mean', IMAGENET_DEFAULT_MEAN))
        self.image_std = list(cfg.get('std', IMAGENET_DEFAULT_STD))
        self.in_chans = getattr(self.body, 'in_chans', 3)
        # below its declared minimum a model has no valid output; otherwise each level needs one pixel
        min_size = cfg.get('min_input_size')
        self.min_input_size = max(min_size[1:]) if min_size else max(reductions)

        self.frozen_modules = self._freeze_leading_levels(frozen_stages)
        if freeze_bn:
            freeze_batch_norm_2d(self.body)

    def _freeze_leading_levels(self, count: int) -> List[str]:
        """Freeze the feature extractor's modules up to the module of level `count - 1`; returns their names."""
        if count <= 0:
            return []
        info = self.body.feature_info
        units = self._units_in_order()
        level_modules = [self._unit_name(info.get('module', i)) for i in range(len(info.info))]
        held = [i + 1 for i, name in enumerate(level_modules) if name in units]
        if count > len(level_modules) or level_modules[count - 1] not in units:
            raise ValueError(
                f'frozen_stages={count} is out of range: this backbone holds feature levels up to '
                f'frozen_stages={max(held)} (levels after the last of out_indices are not built)')
        names = units[:units.index(level_modules[count - 1]) + 1]
        freeze(self.body, submodules=names)
        for name in names:
            self.body.get_submodule(name).eval()
        return names

    def _units_in_order(self) -> List[str]:
        """The extractor's modules in the order they run, named relative to it.

        timm's list wrapper holds each level's module as a child (dots flattened to underscores); its 'getter'
        wrapper (models with feature norms or frozen BatchNorm statistics) holds the model as `model`, whose
        stages are the items of its `stages` Sequential."""
        if not isinstance(self.body, FeatureGetterNet):
            return [name for name, _ in self.body.named_children()]
        units = []
        for name, child in self.body.model.named_children():
            nested = isinstance(child, nn.Sequential) and name == 'stages'
            units += [f'model.{name}.{i}' for i in range(len(child))] if nested else [f'model.{name}']
        return units

    def _unit_name(self, level_module: str) -> str:
        if isinstance(self.body, FeatureGetterNet):
            return f'model.{level_module}'
        return level_module.replace('.', '_')

    def train(self, mode: bool = True) -> 'TimmFpnBackbone':
        super().train(mode)
        for name in self.frozen_modules:  # frozen stages keep eval-mode dropout / drop path
            self.body.get_submodule(name).eval()
        return self

    def forward(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        features = self.body(check_image_input(x, self.in_chans, self.min_input_size))
        return self.fpn(OrderedDict(zip(self._input_names, features)))


def _check_extra_levels(kind: str, count: Optional[int], relu_before_extra_convs: bool) -> None:
    if kind not in EXTRA_LEVELS:
        raise ValueError(f"extra_levels must be one of {EXTRA_LEVELS}, got '{kind}'")
    if kind not in STRIDED_CONV_LEVELS:
        if count is not None:
            raise ValueError(
                f"num_extra_levels={count} needs extra_levels='on_input' or 'on_output' (strided convs); "
                f"extra_levels='{kind}' adds a fixed number of levels")
        if relu_before_extra_convs:
            raise ValueError(
                f"relu_before_extra_convs needs extra_levels='on_input' or 'on_output', got '{kind}'")
    elif count is not None and count < 1:
        raise ValueError(f"num_extra_levels must be at least 1, got {count} (extra_levels='none' adds no level)")


def _resolve_norm_layer(norm_layer: Union[str, Callable[[int], nn.Module], None]) -> Optional[Callable]:
    if not isinstance(norm_layer, str):
        return norm_layer
    try:
        return get_norm_layer(norm_layer)
    except KeyError:
        raise ValueError(
            f"unknown norm_layer '{norm_layer}': use a timm norm name such as 'batchnorm' or 'groupnorm', "
            'or a callable taking the channel count') from None


def _extra_block(
        kind: str,
        count: int,
        relu_between: bool,
        in_channels: int,
        out_channels: int,
        norm_layer: Optional[Callable],
) -> Tuple[Optional[ExtraFPNBlock], List[str]]:
    """The pyramid's extra block for `extra_levels=kind` and the names of the levels it adds."""
    if kind == 'maxpool':
        return LastLevelMaxPool(), ['pool']
    if kind == 'p6p7':  # from the pyramid's last level (P5, in == out), as RetinaNet v2
        return LastLevelP6P7(out_channels, out_channels), ['p6', 'p7']
    if kind == 'none':
        return None, []
    source = kind[len('on_'):]
    block = StridedConvLevels(in_channels, out_channels, count, source, norm_layer, relu_between)
    return block, block.names


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
    """RoI Align over `backbone.level_names`: the finer levels and the model's, not the extra coarser ones, as
    torchvision's R-CNN heads leave out the max-pooled level.

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
