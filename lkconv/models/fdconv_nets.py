""" FDConv backbones

Paper: `Frequency Dynamic Convolution for Dense Image Prediction` - https://arxiv.org/abs/2503.18783 (CVPR 2025)

@inproceedings{chen2025frequency,
  title={Frequency Dynamic Convolution for Dense Image Prediction},
  author={Chen, Linwei and Gu, Lin and Li, Liang and Yan, Chenggang and Fu, Ying},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2025}
}

Official code: https://github.com/Linwei-Chen/FDConv (MIT). The authors release FDConv as an mmdet conv layer
inside ResNet-50 (`ResNet_FDConv`) and detection checkpoints only; no ImageNet-trained FDConv classifier
exists. Every model here is a base network whose chosen convs are `lkconv.layers.FDConv` (kernel_num 64, the
paper's setting), and `pretrained=True` loads the base network's ImageNet weights converted on the fly
(`lkconv.layers.convert_state_dict_to_fdconv`): each converted layer starts from its base conv's weights,
with the Kernel Spatial / Frequency Band Modulations at their neutral initialisation.

* `fdconv_resnet50`, `fdconv_resnet101`: timm's ResNet built with `FDConvBottleneck` blocks, FDConv in
  conv1 / conv2 / conv3 of every bottleneck (stem and shortcut convs plain), as the official `ResNet_FDConv`;
  state_dict keys are timm's (= torchvision's = mmdet's) with `fourier_weight` / `ksm_global` / `ksm_local` /
  `fbm` in the FDConv layers. Extra parameters over timm's resnet50: 3,647,120, the paper's +3.6M.
* `fdconv_unireplknet_*`, `fdconv_inceptionnext_*`: the base model built with an MLP whose two pointwise
  projections are FDConv layers (`mlp_layer`; the paper's recipe for ConvNeXt-like networks, the exact
  official layers are unpublished).

Every FDConv layer is built from a conv initialised as the base network initialises it, with every attention
exactly neutral (`lkconv.layers.to_fdconv`), so an FDConv model starts as its base network would. Where the
FDConv rule does not apply (few channels, other kernel sizes) the conv stays plain.

Checkpoints that load strictly through the pretrained filter: the base network's (official layouts, as its
own filter accepts them), checkpoints of these models, the official pre-converted ResNet-50
(`resnet50_Convert2FDConv.pth`, official key names), and the official mmdet detection checkpoints (only the
`backbone.` keys are used; they have no classifier, which keeps its initialisation).

Differences from the official models, all deliberate:
* the FDConv layer itself (see `lkconv/layers/fdconv/`): the output-filter attention starts neutral,
  batch size 1 trains, FFTs in float32 with the output in the input's dtype;
* ResNet `feature_info` lists the four stages (timm's ResNet also lists the stem);
* in UniRepLKNet's FDConv MLP, re-parameterisation folds the layer scale into the MLP's BatchNorm (a
  dynamic weight cannot absorb it); the GRN bias stays in the GRN.
"""
# Original FDConv code: https://github.com/Linwei-Chen/FDConv, Copyright (c) 2025 Linwei Chen, MIT License
import math
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

import torch
import torch.nn as nn
from timm.layers import create_aa, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models.resnet import ResNet

from ..layers import GlobalResponseNormNHWC, convert_state_dict_to_fdconv, fdconv_applies, to_fdconv
from . import inceptionnext, unireplknet
from ._backbone import StageIntermediates, apply_init, create_backbone
from ._checkpoint import unwrap_state_dict
from ._input import check_image_input
from .inceptionnext import InceptionNeXt
from .unireplknet import UniRepLKNet

# torch.fx records the input check as one call instead of tracing its shape-dependent branches
torch.fx.wrap('check_image_input')

__all__ = ['FDConvResNet', 'FDConvBottleneck', 'FDConvMlp', 'FDConvUniRepLKNetMlp', 'checkpoint_filter_fn']

DEFAULT_KERNEL_NUM = 64  # frequency bands, as in the paper's configs


def _fdconv_from(conv: nn.Conv2d, kernel_num: int, fdconv_args: Optional[Dict[str, Any]]) -> nn.Conv2d:
    """An initialised conv as an FDConv starting from its weights, every attention neutral, where the FDConv
    rule applies to it (as `convert_to_fdconv` decides); otherwise the conv itself."""
    if not fdconv_applies(conv.in_channels, conv.out_channels, conv.kernel_size, conv.groups, conv.padding_mode):
        return conv
    return to_fdconv(conv, kernel_num, fdconv_args=fdconv_args)


def _pointwise_fdconv(
        in_chs: int,
        out_chs: int,
        bias: bool,
        kernel_num: int,
        fdconv_args: Optional[Dict[str, Any]],
        device=None,
        dtype=None,
) -> nn.Conv2d:
    """A 1x1 FDConv for NCHW maps, starting as the pointwise projection of the ConvNeXt-like families at
    initialisation: truncated-normal weight (std 0.02), zero bias."""
    conv = nn.Conv2d(in_chs, out_chs, 1, bias=bias, device=device, dtype=dtype)
    trunc_normal_(conv.weight, std=.02)
    if bias:
        nn.init.zeros_(conv.bias)
    return _fdconv_from(conv, kernel_num, fdconv_args)


def _resnet_conv(in_chs: int, out_chs: int, kernel_size: int, device=None, dtype=None, **conv_args) -> nn.Conv2d:
    """A bias-free conv initialised as timm's ResNet initialises its convs (Kaiming normal, fan-out)."""
    conv = nn.Conv2d(in_chs, out_chs, kernel_size, bias=False, device=device, dtype=dtype, **conv_args)
    nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
    return conv


class FDConvBottleneck(nn.Module):
    """timm's ResNet `Bottleneck` (1x1 -> 3x3 -> 1x1 conv, residual) with FDConv in its three convs, as the
    official `ResNet_FDConv`; its attributes and state_dict keys are those of timm's `Bottleneck`.
    """
    expansion = 4

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            cardinality: int = 1,
            base_width: int = 64,
            reduce_first: int = 1,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            aa_layer: Optional[Type[nn.Module]] = None,
            drop_block: Optional[Callable[[], nn.Module]] = None,
            drop_path: Optional[nn.Module] = None,
            kernel_num: int = DEFAULT_KERNEL_NUM,
            fdconv_args: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            inplanes: Input channels.
            planes: Bottleneck width before `cardinality` / `base_width`; the output has `4 * planes` channels.
            stride: Stride of the 3x3 conv.
            downsample: Shortcut projection (None: identity).
            cardinality: Groups of the 3x3 conv (a grouped conv stays plain: FDConv needs groups = 1).
            base_width: Width factor of the bottleneck, `planes * base_width / 64 * cardinality`.
            reduce_first: Reduction of the first conv's width.
            dilation: Dilation of the 3x3 conv in later blocks of the stage.
            first_dilation: Dilation of the 3x3 conv in this block (None: `dilation`).
            act_layer: Activation layer.
            norm_layer: Normalisation layer.
            aa_layer: Anti-aliasing layer for the strided conv (None: none).
            drop_block: DropBlock layer factory (None: none).
            drop_path: Stochastic depth module (None: none).
            kernel_num: Frequency bands of the FDConv weights.
            fdconv_args: Further `FDConv` options (e.g. dict(param_ratio=2)).
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        width = int(math.floor(planes * (base_width / 64)) * cardinality)
        first_planes = width // reduce_first
        outplanes = planes * self.expansion
        first_dilation = first_dilation or dilation
        use_aa = aa_layer is not None and (stride == 2 or first_dilation != dilation)
        fdconv = partial(_fdconv_from, kernel_num=kernel_num, fdconv_args=fdconv_args)

        self.conv1 = fdconv(_resnet_conv(inplanes, first_planes, 1, **dd))
        self.bn1 = norm_layer(first_planes, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = fdconv(_resnet_conv(
            first_planes, width, 3, stride=1 if use_aa else stride, padding=first_dilation, dilation=first_dilation,
            groups=cardinality, **dd))
        self.bn2 = norm_layer(width, **dd)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act2 = act_layer(inplace=True)
        self.aa = create_aa(aa_layer, channels=width, stride=stride, enable=use_aa, **dd)
        self.conv3 = fdconv(_resnet_conv(width, outplanes, 1, **dd))
        self.bn3 = norm_layer(outplanes, **dd)
        self.act3 = act_layer(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation
        self.drop_path = drop_path

    def zero_init_last(self) -> None:
        """Zero the last BatchNorm's weight, so that the block starts as its shortcut (timm's ResNet init)."""
        if getattr(self.bn3, 'weight', None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.drop_block(self.bn2(self.conv2(x))))
        x = self.aa(x)
        x = self.bn3(self.conv3(x))
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act3(x + shortcut)


def _init_resnet_conv(module: nn.Module, name: str = '') -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')


class FDConvResNet(StageIntermediates, ResNet):
    """timm's ResNet built with `FDConvBottleneck` blocks, with lkconv's input check and stage features.

    `feature_info`, `forward_intermediates` and `features_only` cover the four stages `layer1`..`layer4`.
    """
    early_pool = False

    def __init__(
            self,
            layers: Sequence[int] = (3, 4, 6, 3),
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            output_stride: int = 32,
            zero_init_last: bool = True,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            kernel_num: int = DEFAULT_KERNEL_NUM,
            fdconv_args: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            layers: Number of blocks in each stage.
            in_chans: Number of input image channels.
            num_classes: Number of classes of the classifier (0: no classifier).
            global_pool: Global pooling type of the head ('': none).
            output_stride: Stride of the last feature map, 32, 16 or 8 (the later stages dilate instead).
            zero_init_last: Start every block as its shortcut (zero last BatchNorm weight).
            drop_rate: Dropout rate before the classifier.
            drop_path_rate: Stochastic depth rate of the last block.
            kernel_num: Frequency bands of the FDConv weights.
            fdconv_args: Further `FDConv` options (e.g. dict(param_ratio=2)).
        """
        if output_stride not in (8, 16, 32):
            raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride}')
        super().__init__(
            block=FDConvBottleneck, layers=tuple(layers), num_classes=num_classes, in_chans=in_chans,
            output_stride=output_stride, global_pool=global_pool, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
            zero_init_last=zero_init_last, block_args=dict(kernel_num=kernel_num, fdconv_args=fdconv_args),
            device=device, dtype=dtype)
        self.feature_info = self.feature_info[1:]  # timm's entries of the four stages (it also lists the stem)
        self.min_input_size = 32  # an instance attribute: TorchScript does not see class attributes

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """timm's ResNet init: Kaiming-normal convs (FDConv layers keep the init they were built with) and,
        with `zero_init_last`, a zero last BatchNorm weight in every block."""
        apply_init(self, _init_resnet_conv)
        if zero_init_last:
            for module in self.modules():
                if hasattr(module, 'zero_init_last'):
                    module.zero_init_last()

    @torch.jit.ignore
    def no_weight_decay(self):
        return set()  # 1-D tensors (norms, biases) already skip weight decay in timm's optimizer factory

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False):
        """timm's ResNet `reset_classifier`; a ResNet head is pooling and classifier only, so `reset_other`
        (dropping the head's other layers, as in the other lkconv models) has nothing to drop."""
        super().reset_classifier(num_classes, global_pool)

    def _forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chans, self.min_input_size)
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def _stage_list(self) -> List[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _forward_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(stage, x)
        return stage(x)

    def _prune_stages(self, num_stages: int, prune_norm: bool) -> None:
        # there is no norm after the last stage; a dropped stage becomes empty, which the forward passes skip
        for name in ('layer1', 'layer2', 'layer3', 'layer4')[num_stages:]:
            setattr(self, name, nn.Sequential())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self._stage_list(), x, flatten=True)
        # the stages one by one: TorchScript cannot iterate a Python list of modules
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


class FDConvUniRepLKNetMlp(nn.Module):
    """UniRepLKNet's block MLP with FDConv 1x1 projections: fc1 -> GELU -> GRN -> fc2 -> BatchNorm.

    Runs on NCHW maps (the GRN on a channels-last view); keys are those of `UniRepLKNetMlp`, with the
    FDConv projections' `fourier_weight` / `ksm_global` / `ksm_local`. A `mlp_layer` of `UniRepLKNet`.
    """

    def __init__(
            self,
            dim: int,
            hidden_dim: int,
            deploy: bool = False,
            kernel_num: int = DEFAULT_KERNEL_NUM,
            fdconv_args: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Input and output channels.
            hidden_dim: Hidden channels.
            deploy: Build the re-parameterised form (GRN without bias, biased `fc2`, no BatchNorm).
            kernel_num: Frequency bands of the FDConv weights.
            fdconv_args: Further `FDConv` options.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        fdconv = dict(kernel_num=kernel_num, fdconv_args=fdconv_args, **dd)
        self.fc1 = _pointwise_fdconv(dim, hidden_dim, bias=True, **fdconv)
        self.act = nn.GELU()
        self.grn = GlobalResponseNormNHWC(hidden_dim, bias=not deploy, **dd)
        self.fc2 = _pointwise_fdconv(hidden_dim, dim, bias=deploy, **fdconv)
        self.norm = nn.Identity() if deploy else nn.BatchNorm2d(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = self.grn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.norm(self.fc2(x))

    @torch.no_grad()
    def reparameterize(self, out_scale: Optional[torch.Tensor] = None) -> None:
        """Fold a per-channel output scale (the block's layer scale) into the BatchNorm's affine terms."""
        if out_scale is None:
            return
        if not isinstance(self.norm, nn.BatchNorm2d):
            raise RuntimeError('an output scale can only be folded into the MLP BatchNorm')
        self.norm.weight.mul_(out_scale)
        self.norm.bias.mul_(out_scale)


class FDConvMlp(nn.Module):
    """timm's `ConvMlp` (1x1 conv -> act -> 1x1 conv) with FDConv projections; same keys. A `mlp_layer` of
    `InceptionNeXt`."""

    def __init__(
            self,
            in_features: int,
            hidden_features: int,
            act_layer: Type[nn.Module] = nn.GELU,
            kernel_num: int = DEFAULT_KERNEL_NUM,
            fdconv_args: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_features: Input and output channels.
            hidden_features: Hidden channels.
            act_layer: Activation layer.
            kernel_num: Frequency bands of the FDConv weights.
            fdconv_args: Further `FDConv` options.
        """
        super().__init__()
        fdconv = dict(kernel_num=kernel_num, fdconv_args=fdconv_args, device=device, dtype=dtype)
        self.fc1 = _pointwise_fdconv(in_features, hidden_features, bias=True, **fdconv)
        self.act = act_layer()
        self.fc2 = _pointwise_fdconv(hidden_features, in_features, bias=True, **fdconv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _resnet_base_filter(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Unwrap timm / torchvision / official FDConv ResNet checkpoints, and the backbone of mmdet ones."""
    state_dict = unwrap_state_dict(state_dict)
    own = model.state_dict()
    for key in ('fc.weight', 'fc.bias'):  # detection checkpoints have no classifier: it keeps its initialisation
        if key in own and key not in state_dict:
            state_dict[key] = own[key]
    return state_dict


def checkpoint_filter_fn(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        base_filter: Optional[Callable] = None,
) -> Dict[str, torch.Tensor]:
    """A base-network checkpoint (mapped by `base_filter`) converted for the FDConv layers of `model`."""
    if base_filter is not None:
        state_dict = base_filter(state_dict, model)
    return convert_state_dict_to_fdconv(state_dict, model)


def _create_fdconv_resnet(variant: str, pretrained: bool = False, **kwargs) -> FDConvResNet:
    # the stages are timm's `layer1..4` Sequentials, which the feature wrapper must not flatten
    feature_cfg = {'flatten_sequential': False, **(kwargs.pop('feature_cfg', None) or {})}
    filter_fn = partial(checkpoint_filter_fn, base_filter=_resnet_base_filter)
    return create_backbone(FDConvResNet, variant, pretrained, filter_fn, feature_cfg=feature_cfg, **kwargs)


def _create_with_fdconv_mlp(
        model_cls: Type[nn.Module],
        mlp_cls: Type[nn.Module],
        base_filter: Callable,
        variant: str,
        pretrained: bool = False,
        kernel_num: int = DEFAULT_KERNEL_NUM,
        fdconv_args: Optional[Dict[str, Any]] = None,
        **kwargs,
) -> nn.Module:
    """`model_cls` (which takes an `mlp_layer`) with the FDConv MLP `mlp_cls`; pretrained weights are the base
    network's, mapped by `base_filter` and converted for the FDConv layers."""
    mlp_layer = partial(mlp_cls, kernel_num=kernel_num, fdconv_args=fdconv_args)
    filter_fn = partial(checkpoint_filter_fn, base_filter=base_filter)
    return create_backbone(model_cls, variant, pretrained, filter_fn, mlp_layer=mlp_layer, **kwargs)


_create_fdconv_unireplknet = partial(
    _create_with_fdconv_mlp, UniRepLKNet, FDConvUniRepLKNetMlp, unireplknet.checkpoint_filter_fn)
_create_fdconv_inceptionnext = partial(
    _create_with_fdconv_mlp, InceptionNeXt, FDConvMlp, inceptionnext.checkpoint_filter_fn)


def _cfg(base: str, **kwargs) -> Dict[str, Any]:
    """The base network's pretrained cfg (weights, preprocessing, licence), credited to FDConv."""
    cfg = get_pretrained_cfg(base).to_dict()
    for key in ('architecture', 'tag'):
        cfg.pop(key, None)
    cfg.update(
        paper_ids='arXiv:2503.18783',
        paper_name='Frequency Dynamic Convolution for Dense Image Prediction',
        origin_url='https://github.com/Linwei-Chen/FDConv',
        min_input_size=(3, 32, 32),
        **kwargs,
    )
    return cfg


default_cfgs = generate_default_cfgs({
    'fdconv_resnet50.a1_in1k': _cfg('resnet50.a1_in1k'),
    'fdconv_resnet50.tv_in1k': _cfg('resnet50.tv_in1k'),
    'fdconv_resnet101.a1h_in1k': _cfg('resnet101.a1h_in1k'),
    'fdconv_resnet101.tv_in1k': _cfg('resnet101.tv_in1k'),
    'fdconv_unireplknet_a.in1k': _cfg('unireplknet_a.in1k'),
    'fdconv_unireplknet_t.in1k': _cfg('unireplknet_t.in1k'),
    'fdconv_inceptionnext_atto.sail_in1k': _cfg('inceptionnext_atto.sail_in1k'),
    'fdconv_inceptionnext_tiny.sail_in1k': _cfg('inceptionnext_tiny.sail_in1k'),
})


@register_model
def fdconv_resnet50(pretrained: bool = False, **kwargs) -> FDConvResNet:
    model_args = dict(layers=(3, 4, 6, 3))
    return _create_fdconv_resnet('fdconv_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def fdconv_resnet101(pretrained: bool = False, **kwargs) -> FDConvResNet:
    model_args = dict(layers=(3, 4, 23, 3))
    return _create_fdconv_resnet('fdconv_resnet101', pretrained, **dict(model_args, **kwargs))


@register_model
def fdconv_unireplknet_a(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))
    return _create_fdconv_unireplknet('fdconv_unireplknet_a', pretrained, **dict(model_args, **kwargs))


@register_model
def fdconv_unireplknet_t(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640))
    return _create_fdconv_unireplknet('fdconv_unireplknet_t', pretrained, **dict(model_args, **kwargs))


@register_model
def fdconv_inceptionnext_atto(pretrained: bool = False, **kwargs) -> InceptionNeXt:
    model_args = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), band_kernel_size=9, branch_ratio=0.25)
    return _create_fdconv_inceptionnext('fdconv_inceptionnext_atto', pretrained, **dict(model_args, **kwargs))


@register_model
def fdconv_inceptionnext_tiny(pretrained: bool = False, **kwargs) -> InceptionNeXt:
    model_args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    return _create_fdconv_inceptionnext('fdconv_inceptionnext_tiny', pretrained, **dict(model_args, **kwargs))
