"""Feature-pyramid levels that torchvision's `FeaturePyramidNetwork` does not build, as OpenMMLab's necks build them.

- `FeaturePyramid`: torchvision's `FeaturePyramidNetwork` (same modules, same state_dict keys, same maps) that can
  also grow finer levels from its finest merged lateral (`FinerLevels`).
- `FinerLevels`: LSNetFPN's `num_extra_trans_convs` (THU-MIG/lsnet; the option of EfficientViTFPN in
  microsoft/Cream `EfficientViT/downstream/efficientvit_fpn.py`): a 2x2 stride-2 transposed conv of the finest
  lateral after the top-down sum, then a 3x3 conv; each further level upsamples the previous transposed output.
  `upsample.i` / `smooth.i` hold what `extra_trans_convs.i.conv` / `extra_fpn_convs.i.conv` hold there.
- `StridedConvLevels`: mmdet `FPN(add_extra_convs='on_input' | 'on_output')`: 3x3 stride-2 convs above the last
  level, the first on the last backbone map or the last pyramid output, the next ones on the previous extra
  level (with a ReLU in between if asked).

Every conv is followed by the optional norm and has no bias when normed, as in both torchvision and mmdet; new
convs are initialised as torchvision initialises its pyramid (mmdet uses Xavier; pretrained necks overwrite both).
"""
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ['FeaturePyramid', 'FinerLevels', 'StridedConvLevels']

NormLayer = Optional[Callable[[int], nn.Module]]


def _init_like_torchvision_fpn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_uniform_(m.weight, a=1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv3x3(in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer) -> nn.Module:
    return Conv2dNormActivation(
        in_channels, out_channels, kernel_size=3, stride=stride, norm_layer=norm_layer, activation_layer=None)


def _upsample2x(channels: int, norm_layer: NormLayer) -> nn.Module:
    """A 2x2 stride-2 transposed conv (then the norm), laid out as Conv2dNormActivation: exactly doubles H and W."""
    layers = [nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2, bias=norm_layer is None)]
    if norm_layer is not None:
        layers.append(norm_layer(channels))
    return nn.Sequential(*layers)


class FinerLevels(nn.Module):
    """`count` levels finer than the pyramid's finest, each at half the stride of the one before, named
    'up1' (half the stride of the finest level) ... 'up{count}'; `forward` returns them finest first.

    `upsample[i]` is the (i+1)-th transposed conv from the lateral; `smooth[i]` is the 3x3 conv of the i-th level
    counted finest first (with two levels: upsample[0] -> 'up1', upsample[1] -> 'up2', smooth[0] on 'up2').
    """

    def __init__(self, channels: int, count: int, norm_layer: NormLayer = None):
        super().__init__()
        self.upsample = nn.ModuleList(_upsample2x(channels, norm_layer) for _ in range(count))
        self.smooth = nn.ModuleList(_conv3x3(channels, channels, 1, norm_layer) for _ in range(count))
        self.names = [f'up{k}' for k in range(count, 0, -1)]
        _init_like_torchvision_fpn(self)

    def forward(self, finest_lateral: torch.Tensor) -> List[torch.Tensor]:
        upsampled, x = [], finest_lateral
        for upsample in self.upsample:
            x = upsample(x)  # the next transposed conv reads this, not its smoothed level
            upsampled.insert(0, x)
        # smooth[i] makes the i-th level counted finest first, as LSNetFPN indexes its `extra_fpn_convs`
        return [smooth(level) for smooth, level in zip(self.smooth, upsampled)]


class StridedConvLevels(ExtraFPNBlock):
    """`count` levels above the last, each a 3x3 stride-2 conv of the one before, named 'down1' ... 'down{count}'.

    Args:
        in_channels: channels of the last backbone map (read by the first conv when `source='input'`).
        out_channels: the pyramid's width.
        count: how many levels.
        source: 'input' (the last backbone map, mmdet 'on_input') or 'output' (the last pyramid level, 'on_output').
        norm_layer: a norm after each conv, or None.
        relu_between: a ReLU before every conv but the first (mmdet's `relu_before_extra_convs`).
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            count: int,
            source: str,
            norm_layer: NormLayer = None,
            relu_between: bool = False,
    ):
        super().__init__()
        self.source, self.relu_between = source, relu_between
        first = in_channels if source == 'input' else out_channels
        self.convs = nn.ModuleList(
            _conv3x3(first if i == 0 else out_channels, out_channels, 2, norm_layer) for i in range(count))
        self.names = [f'down{k}' for k in range(1, count + 1)]
        _init_like_torchvision_fpn(self)

    def forward(
            self,
            results: List[torch.Tensor],
            x: List[torch.Tensor],
            names: List[str],
    ) -> Tuple[List[torch.Tensor], List[str]]:
        level = x[-1] if self.source == 'input' else results[-1]
        levels = []
        for i, conv in enumerate(self.convs):
            level = conv(F.relu(level) if i > 0 and self.relu_between else level)
            levels.append(level)
        return results + levels, names + self.names


class FeaturePyramid(FeaturePyramidNetwork):
    """torchvision's `FeaturePyramidNetwork` plus `finer_levels` levels below its finest (see `FinerLevels`).

    The lateral, top-down and output convs are torchvision's own modules, so the maps and state_dict keys are
    the same as `FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks, norm_layer)`; `forward`
    is written out only to hand the finest merged lateral, which torchvision keeps internal, to the finer levels.
    Output order: the finer levels (finest first), one level per input, then the extra blocks' levels.
    """

    def __init__(
            self,
            in_channels_list: Sequence[int],
            out_channels: int,
            extra_blocks: Optional[ExtraFPNBlock] = None,
            norm_layer: NormLayer = None,
            finer_levels: int = 0,
    ):
        super().__init__(list(in_channels_list), out_channels, extra_blocks=extra_blocks, norm_layer=norm_layer)
        self.finer_blocks = FinerLevels(out_channels, finer_levels, norm_layer) if finer_levels else None

    def forward(self, x: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        names, inputs = list(x.keys()), list(x.values())
        laterals = [inner(feature) for inner, feature in zip(self.inner_blocks, inputs)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down: each lateral adds the coarser merged one
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode='nearest')
        results = [layer(lateral) for layer, lateral in zip(self.layer_blocks, laterals)]
        if self.finer_blocks is not None:
            results = self.finer_blocks(laterals[0]) + results
            names = self.finer_blocks.names + names
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, inputs, names)
        return OrderedDict(zip(names, results))
