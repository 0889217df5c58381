""" FDConv backbones

Paper: `Frequency Dynamic Convolution for Dense Image Prediction` - https://arxiv.org/abs/2503.18783 (CVPR 2025)

Official code: https://github.com/Linwei-Chen/FDConv (MIT). The authors release FDConv as an mmdet conv layer
inside ResNet-50 (`ResNet_FDConv`) and detection checkpoints only; no ImageNet-trained FDConv classifier
exists. Every model here is a base network whose chosen convs are `lkconv.layers.FDConv` (kernel_num 64, the
paper's setting), and `pretrained=True` loads the base network's ImageNet weights converted on the fly
(`lkconv.layers.convert_state_dict_to_fdconv`): each converted layer starts from its base conv's weights,
with the Kernel Spatial / Frequency Band Modulations at their near-neutral initialisation.

* `fdconv_resnet50`, `fdconv_resnet101`: timm's ResNet with FDConv in conv1 / conv2 / conv3 of every
  bottleneck (stem and shortcut convs plain), as the official `ResNet_FDConv`; state_dict keys are timm's
  (= torchvision's = mmdet's) with `fourier_weight` / `ksm_global` / `ksm_local` / `fbm` in the converted
  convs. Extra parameters over timm's resnet50: 3,647,120, the paper's +3.6M.
* `fdconv_unireplknet_*`, `fdconv_inceptionnext_*`: FDConv replacing the two pointwise projections of every
  block's MLP (the paper's recipe for ConvNeXt-like networks; the exact official layers are unpublished).

Checkpoints that load strictly through the pretrained filter: the base network's (official layouts, as its
own filter accepts them), checkpoints of these models, the official pre-converted ResNet-50
(`resnet50_Convert2FDConv.pth`, official key names), and the official mmdet detection checkpoints (only the
`backbone.` keys are used; they have no classifier, which keeps its initialisation).

Differences from the official models, all deliberate:
* the FDConv layer itself (see `lkconv/layers/fdconv.py`): the output-filter attention starts near neutral,
  batch size 1 trains, FFTs in float32 with the output in the input's dtype;
* ResNet `feature_info` lists the four stages (timm's ResNet also lists the stem);
* in UniRepLKNet's FDConv MLP, re-parameterisation folds the layer scale into the MLP's BatchNorm (a
  dynamic weight cannot absorb it); the GRN bias stays in the GRN.
"""
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import checkpoint_seq, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models.resnet import Bottleneck, ResNet

from ._input import check_image_input
from ..layers import convert_state_dict_to_fdconv, convert_to_fdconv, to_fdconv
from . import inceptionnext, unireplknet
from ._backbone import create_backbone
from .inceptionnext import InceptionNeXt
from .unireplknet import UniRepLKNet, UniRepLKNetMlp

# torch.fx records the input check as one call instead of tracing its shape-dependent branches
torch.fx.wrap('check_image_input')

__all__ = ['FDConvResNet', 'FDConvUniRepLKNet', 'FDConvInceptionNeXt', 'FDConvUniRepLKNetMlp', 'checkpoint_filter_fn']

DEFAULT_KERNEL_NUM = 64  # frequency bands, as in the paper's configs


class FDConvResNet(ResNet):
    """ResNet (timm, bottleneck blocks) with FDConv in conv1 / conv2 / conv3 of every block.

    `fdconv_args` are further `FDConv` options (e.g. dict(param_ratio=2)).
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
        super().__init__(
            Bottleneck, tuple(layers), num_classes=num_classes, in_chans=in_chans, output_stride=output_stride,
            global_pool=global_pool, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
            zero_init_last=zero_init_last, device=device, dtype=dtype)
        self.feature_info = self.feature_info[1:]  # the four stages
        self.min_input_size = 32  # an instance attribute: TorchScript does not see class attributes
        convert_to_fdconv(
            self, include=('layer*.*.conv1', 'layer*.*.conv2', 'layer*.*.conv3'), kernel_num=kernel_num,
            fdconv_args=fdconv_args)

    def _stages(self) -> List[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chans, self.min_input_size)
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    @torch.jit.ignore
    def no_weight_decay(self):
        return set()  # 1-D tensors (norms, biases) already skip weight decay in timm's optimizer factory

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self._stages(), x, flatten=True)
        # the stages one by one: TorchScript cannot iterate a Python list of modules
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Outputs of the four stages at `indices` (None: all, int n: last n), and the final features."""
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        take_indices, max_index = feature_take_indices(4, indices)
        stages = self._stages()
        if stop_early and not torch.jit.is_scripting():
            stages = stages[:max_index + 1]
        intermediates = []
        x = self._stem(x)
        for i, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) after the last requested tap; returns the absolute indices."""
        take_indices, max_index = feature_take_indices(4, indices)
        for name in ('layer1', 'layer2', 'layer3', 'layer4')[max_index + 1:]:
            setattr(self, name, nn.Sequential())  # empty, so checkpoint_seq can still iterate it
        prune_end = max_index < 3
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices


class FDConvUniRepLKNetMlp(nn.Module):
    """UniRepLKNet's block MLP with FDConv 1x1 projections: fc1 -> GELU -> GRN -> fc2 -> BatchNorm.

    Runs on NCHW maps (the GRN on a channels-last view); keys are those of `UniRepLKNetMlp`, with the
    converted projections' `fourier_weight` / `ksm_global` / `ksm_local`.
    """

    def __init__(self, mlp: UniRepLKNetMlp, kernel_num: int = DEFAULT_KERNEL_NUM,
                 fdconv_args: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.fc1 = to_fdconv(mlp.fc1, kernel_num, fdconv_args=fdconv_args)
        self.act = mlp.act
        self.grn = mlp.grn
        self.fc2 = to_fdconv(mlp.fc2, kernel_num, fdconv_args=fdconv_args)
        self.norm = mlp.norm

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


class FDConvUniRepLKNet(UniRepLKNet):
    """UniRepLKNet whose block MLPs project with FDConv (see `FDConvUniRepLKNetMlp`)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (3, 3, 27, 3),
            dims: Sequence[int] = (96, 192, 384, 768),
            kernel_sizes: Optional[Sequence[Sequence[int]]] = None,
            ls_init_value: Optional[float] = 1e-6,
            head_init_scale: float = 1.,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            deploy: bool = False,
            kernel_num: int = DEFAULT_KERNEL_NUM,
            fdconv_args: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, depths=depths, dims=dims,
            kernel_sizes=kernel_sizes, ls_init_value=ls_init_value, head_init_scale=head_init_scale,
            drop_rate=drop_rate, drop_path_rate=drop_path_rate, deploy=deploy, device=device, dtype=dtype)
        for stage in self.stages:
            for block in stage.blocks:
                block.mlp = FDConvUniRepLKNetMlp(block.mlp, kernel_num, fdconv_args)


class FDConvInceptionNeXt(InceptionNeXt):
    """InceptionNeXt whose block MLPs (two 1x1 convs) are FDConv layers."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            output_stride: int = 32,
            depths: Sequence[int] = (3, 3, 9, 3),
            dims: Sequence[int] = (96, 192, 384, 768),
            mlp_ratios: Sequence[float] = (4, 4, 4, 3),
            square_kernel_size: int = 3,
            band_kernel_size: int = 11,
            branch_ratio: float = 0.125,
            ls_init_value: Optional[float] = 1e-6,
            head_mlp_ratio: float = 3.,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            kernel_num: int = DEFAULT_KERNEL_NUM,
            fdconv_args: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, output_stride=output_stride,
            depths=depths, dims=dims, mlp_ratios=mlp_ratios, square_kernel_size=square_kernel_size,
            band_kernel_size=band_kernel_size, branch_ratio=branch_ratio, ls_init_value=ls_init_value,
            head_mlp_ratio=head_mlp_ratio, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
            device=device, dtype=dtype)
        convert_to_fdconv(
            self, include=('stages.*.blocks.*.mlp.fc1', 'stages.*.blocks.*.mlp.fc2'), kernel_num=kernel_num,
            fdconv_args=fdconv_args)


def _resnet_base_filter(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Unwrap timm / torchvision / official FDConv ResNet checkpoints; take the backbone of mmdet ones."""
    for wrapper in ('state_dict', 'model'):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
        own = model.state_dict()
        for key in ('fc.weight', 'fc.bias'):  # detection checkpoints have no classifier
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


def _create_fdconv_unireplknet(variant: str, pretrained: bool = False, **kwargs) -> FDConvUniRepLKNet:
    filter_fn = partial(checkpoint_filter_fn, base_filter=unireplknet.checkpoint_filter_fn)
    return create_backbone(FDConvUniRepLKNet, variant, pretrained, filter_fn, **kwargs)


def _create_fdconv_inceptionnext(variant: str, pretrained: bool = False, **kwargs) -> FDConvInceptionNeXt:
    filter_fn = partial(checkpoint_filter_fn, base_filter=inceptionnext.checkpoint_filter_fn)
    return create_backbone(FDConvInceptionNeXt, variant, pretrained, filter_fn, **kwargs)


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
def fdconv_unireplknet_a(pretrained: bool = False, **kwargs) -> FDConvUniRepLKNet:
    model_args = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))
    return _create_fdconv_unireplknet('fdconv_unireplknet_a', pretrained, **dict(model_args, **kwargs))


@register_model
def fdconv_unireplknet_t(pretrained: bool = False, **kwargs) -> FDConvUniRepLKNet:
    model_args = dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640))
    return _create_fdconv_unireplknet('fdconv_unireplknet_t', pretrained, **dict(model_args, **kwargs))


@register_model
def fdconv_inceptionnext_atto(pretrained: bool = False, **kwargs) -> FDConvInceptionNeXt:
    model_args = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), band_kernel_size=9, branch_ratio=0.25)
    return _create_fdconv_inceptionnext('fdconv_inceptionnext_atto', pretrained, **dict(model_args, **kwargs))


@register_model
def fdconv_inceptionnext_tiny(pretrained: bool = False, **kwargs) -> FDConvInceptionNeXt:
    model_args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    return _create_fdconv_inceptionnext('fdconv_inceptionnext_tiny', pretrained, **dict(model_args, **kwargs))
