""" InceptionNeXt

Paper: `InceptionNeXt: When Inception Meets ConvNeXt` - https://arxiv.org/abs/2303.16900 (CVPR 2024)

@inproceedings{yu2024inceptionnext,
  title={InceptionNeXt: When Inception Meets ConvNeXt},
  author={Yu, Weihao and Zhou, Pan and Yan, Shuicheng and Wang, Xinchao},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2024}
}

Official code and weights: https://github.com/sail-sg/inceptionnext (Apache-2.0). timm ships the same
architecture as `inception_next_*` (class `MetaNeXt`); lkconv registers its own `inceptionnext_*` names
and never touches timm's.

The state_dict layout is the official one (which is also timm's), so the authors' release files and
timm's Hub copies load strictly with no key conversion beyond unwrapping `model` / `state_dict` containers.

Differences from the official implementation, all deliberate:
* The token mixer is `lkconv.layers.InceptionDWConv2d`, whose convolutions are `DepthwiseConv2d`
  (backend dispatch, e.g. Triton on CUDA); parameters and outputs are those of the official `nn.Conv2d`s.
* The block MLP is an argument of the model (`mlp_layer`, as in timm's MetaNeXt), so that variants such as
  the FDConv one (`fdconv_nets`) are the same model with another MLP.
* `output_stride` 8 / 16 dilates the last stages instead of striding them, as in timm's port; the
  official code has no such option. At the default 32 the network is the official one.
* The default cfgs use the official evaluation crop (0.875 at 224, also for base; 1.0 at 384) and the
  classifier name `head.fc2` (the official cfg names a non-existent `head.fc`). timm evaluates base at
  224 with crop 0.95.
* The classification head is timm's `MlpClassifierHead` (pool -> fc1 -> GELU -> LayerNorm -> fc2, the
  official `MlpHead` with the same keys); as in timm it cannot drop its pooling, so `early_pool = True`:
  `reset_classifier(n, '')` keeps the current pooling (timm's MetaNeXt asserts instead), and
  `global_pool=''` at construction raises ValueError.
* The constructor rejects unknown arguments and validates its settings.
"""
# Original InceptionNeXt code and weights: https://github.com/sail-sg/inceptionnext
# Licensed under the Apache License 2.0 (see the LICENSE file of that repository)
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ConvMlp, DropPath, create_conv2d
from timm.models import generate_default_cfgs, register_model
# the official MlpHead (pool -> fc1 -> act -> LayerNorm -> fc2) exists in timm only in its InceptionNeXt port
from timm.models.inception_next import MlpClassifierHead

from ..layers import InceptionDWConv2d
from ._backbone import (
    BackboneStage, StagedBackbone, apply_init, check_stage_settings, create_backbone, drop_path_schedule,
    init_convnext_style,
)
from ._checkpoint import unwrap_state_dict

__all__ = ['InceptionNeXt', 'InceptionNeXtBlock']


class InceptionNeXtBlock(nn.Module):
    """MetaNeXt block: x + DropPath(gamma * MLP(BN(InceptionDWConv2d(x))))."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.,
            square_kernel_size: int = 3,
            band_kernel_size: int = 11,
            branch_ratio: float = 0.125,
            dilation: int = 1,
            ls_init_value: Optional[float] = 1e-6,
            drop_path: float = 0.,
            mlp_layer: Callable[..., nn.Module] = ConvMlp,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Number of channels.
            mlp_ratio: MLP hidden width as a multiple of `dim`.
            square_kernel_size: Kernel size of the token mixer's square branch.
            band_kernel_size: Length of the token mixer's band kernels.
            branch_ratio: Fraction of the channels in each convolved branch of the token mixer.
            dilation: Dilation of the token mixer's convs.
            ls_init_value: Initial layer-scale value (None or 0: no layer scale).
            drop_path: Stochastic depth rate.
            mlp_layer: The MLP, built as `mlp_layer(dim, hidden_dim, act_layer=nn.GELU, device=..., dtype=...)`.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.token_mixer = InceptionDWConv2d(
            dim, square_kernel_size, band_kernel_size, branch_ratio, dilation=dilation, **dd)
        self.norm = nn.BatchNorm2d(dim, **dd)
        self.mlp = mlp_layer(dim, int(mlp_ratio * dim), act_layer=nn.GELU, **dd)
        self.gamma = nn.Parameter(torch.full((dim,), float(ls_init_value), **dd)) if ls_init_value else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.token_mixer(x)))
        if self.gamma is not None:
            y = y * self.gamma.reshape(1, -1, 1, 1)
        return x + self.drop_path(y)


def _downsample(in_chs: int, out_chs: int, stride: int, dilation: Tuple[int, int], device=None, dtype=None):
    """BN -> 2x2 conv between stages. `dilation` is (this conv's, the stage's blocks'): a dilated stage keeps
    stride 1 and pads the conv to 'same' so the resolution is preserved."""
    return nn.Sequential(
        nn.BatchNorm2d(in_chs, device=device, dtype=dtype),
        create_conv2d(
            in_chs, out_chs, kernel_size=2, stride=stride, dilation=dilation[0],
            padding='same' if dilation[1] > 1 else 0, bias=True, device=device, dtype=dtype),
    )


class InceptionNeXt(StagedBackbone):
    """InceptionNeXt (MetaNeXt with the Inception depthwise token mixer): 4x4 patch stem, four stages of
    MetaNeXt blocks, MLP head (pool -> fc1 -> GELU -> LayerNorm -> fc2) of width `head_mlp_ratio * C4`.
    """
    early_pool = True  # the head has layers after its pooling, so forward() cannot give unpooled maps

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
            mlp_layer: Callable[..., nn.Module] = ConvMlp,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Number of input image channels.
            num_classes: Number of classes of the classifier (0: no classifier).
            global_pool: Global pooling type of the head (it cannot be disabled: layers follow it).
            output_stride: Stride of the last feature map, 32, 16 or 8 (the later stages dilate instead).
            depths: Number of blocks in each stage.
            dims: Feature dimension of each stage.
            mlp_ratios: MLP hidden width of each stage's blocks as a multiple of its dimension.
            square_kernel_size: Kernel size of the token mixer's square branch.
            band_kernel_size: Length of the token mixer's band kernels.
            branch_ratio: Fraction of the channels in each convolved branch of the token mixer.
            ls_init_value: Initial layer-scale value (None or 0: no layer scale).
            head_mlp_ratio: Hidden width of the MLP head as a multiple of the last dimension.
            drop_rate: Dropout rate in the head.
            drop_path_rate: Stochastic depth rate of the last block.
            mlp_layer: The blocks' MLP, built as `mlp_layer(dim, hidden_dim, act_layer=..., device=..., dtype=...)`.
        """
        super().__init__(in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate)
        dd = dict(device=device, dtype=dtype)
        check_stage_settings(depths=depths, dims=dims, mlp_ratios=mlp_ratios)
        if output_stride not in (8, 16, 32):
            raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride}')
        if not global_pool:
            raise ValueError("InceptionNeXt's MLP head follows the pooling, which cannot be disabled (global_pool='')")
        self.global_pool = global_pool

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4, **dd),
            nn.BatchNorm2d(dims[0], **dd),
        )
        block_kwargs = dict(
            square_kernel_size=square_kernel_size, band_kernel_size=band_kernel_size,
            branch_ratio=branch_ratio, ls_init_value=ls_init_value, mlp_layer=mlp_layer,
        )
        dp_rates = drop_path_schedule(drop_path_rate, depths)
        stages, reductions = [], []
        stride, dilation = 4, 1
        for i, (dim, mlp_ratio) in enumerate(zip(dims, mlp_ratios)):
            first_dilation = dilation
            stage_stride = 1
            if i > 0:
                # past the requested output stride a stage dilates its convs instead of striding
                if stride < output_stride:
                    stage_stride = 2
                    stride *= 2
                else:
                    dilation *= 2
            stages.append(BackboneStage(
                downsample=_downsample(
                    dims[i - 1], dim, stage_stride, (first_dilation, dilation), **dd) if i > 0 else None,
                blocks=[
                    InceptionNeXtBlock(dim, mlp_ratio, dilation=dilation, drop_path=dp, **block_kwargs, **dd)
                    for dp in dp_rates[i]
                ],
            ))
            reductions.append(stride)
        self._set_stages(stages, dims, reductions)
        self.norm_pre = nn.Identity()
        self.head = MlpClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, mlp_ratio=head_mlp_ratio, drop=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features
        apply_init(self, init_convnext_style)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc2

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False):
        if global_pool == '':
            global_pool = None  # early pool: the head cannot drop its pooling, so '' keeps the current one
        super().reset_classifier(num_classes, global_pool, reset_other=reset_other)
        if global_pool is not None:
            self.global_pool = global_pool  # the head does the pooling; keep the attribute in step with it


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official and timm checkpoints share this model's keys: only unwrap containers and DDP prefixes."""
    return unwrap_state_dict(state_dict)


def _create_inceptionnext(variant: str, pretrained: bool = False, **kwargs) -> InceptionNeXt:
    return create_backbone(InceptionNeXt, variant, pretrained, checkpoint_filter_fn, **kwargs)


_RELEASE_URL = 'https://github.com/sail-sg/inceptionnext/releases/download/model/'


def _cfg(release_file: str, timm_name: str, **kwargs):
    # timm's Hub copy (safetensors) is preferred by timm when both locations are given; the authors'
    # release file is the same weights as a bare state_dict
    return {
        'url': _RELEASE_URL + release_file,
        'hf_hub_id': f'timm/{timm_name}',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'min_input_size': (3, 32, 32),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': 'head.fc2', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2303.16900',
        'paper_name': 'InceptionNeXt: When Inception Meets ConvNeXt',
        'origin_url': 'https://github.com/sail-sg/inceptionnext',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'inceptionnext_atto.sail_in1k': _cfg('inceptionnext_atto.pth', 'inception_next_atto.sail_in1k'),
    'inceptionnext_tiny.sail_in1k': _cfg('inceptionnext_tiny.pth', 'inception_next_tiny.sail_in1k'),
    'inceptionnext_small.sail_in1k': _cfg('inceptionnext_small.pth', 'inception_next_small.sail_in1k'),
    'inceptionnext_base.sail_in1k': _cfg('inceptionnext_base.pth', 'inception_next_base.sail_in1k'),
    'inceptionnext_base.sail_in1k_384': _cfg(
        'inceptionnext_base_384.pth', 'inception_next_base.sail_in1k_384',
        input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
})


@register_model
def inceptionnext_atto(pretrained: bool = False, **kwargs) -> InceptionNeXt:
    model_args = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), band_kernel_size=9, branch_ratio=0.25)
    return _create_inceptionnext('inceptionnext_atto', pretrained, **dict(model_args, **kwargs))


@register_model
def inceptionnext_tiny(pretrained: bool = False, **kwargs) -> InceptionNeXt:
    model_args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    return _create_inceptionnext('inceptionnext_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def inceptionnext_small(pretrained: bool = False, **kwargs) -> InceptionNeXt:
    model_args = dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
    return _create_inceptionnext('inceptionnext_small', pretrained, **dict(model_args, **kwargs))


@register_model
def inceptionnext_base(pretrained: bool = False, **kwargs) -> InceptionNeXt:
    model_args = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
    return _create_inceptionnext('inceptionnext_base', pretrained, **dict(model_args, **kwargs))
