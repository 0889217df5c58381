""" InceptionNeXt

Paper: `InceptionNeXt: When Inception Meets ConvNeXt` - https://arxiv.org/abs/2303.16900 (CVPR 2024)

Official code and weights: https://github.com/sail-sg/inceptionnext (Apache-2.0). timm ships the same
architecture as `inception_next_*` (class `MetaNeXt`); lkconv registers its own `inceptionnext_*` names
and never touches timm's.

The state_dict layout is the official one (which is also timm's), so the authors' release files and
timm's Hub copies load strictly with no key conversion beyond unwrapping `model` / `state_dict` containers.

Differences from the official implementation, all deliberate:
* The token mixer is `lkconv.layers.InceptionDWConv2d`, whose convolutions are `DepthwiseConv2d`
  (backend dispatch, e.g. Triton on CUDA); parameters and outputs are those of the official `nn.Conv2d`s.
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
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ConvMlp, DropPath, calculate_drop_path_rates, create_conv2d, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq
# the official MlpHead (pool -> fc1 -> act -> LayerNorm -> fc2) exists in timm only in its InceptionNeXt port
from timm.models.inception_next import MlpClassifierHead

from ..layers import InceptionDWConv2d
from ._backbone import StagedBackbone, create_backbone

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
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.token_mixer = InceptionDWConv2d(
            dim, square_kernel_size, band_kernel_size, branch_ratio, dilation=dilation, **dd)
        self.norm = nn.BatchNorm2d(dim, **dd)
        self.mlp = ConvMlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU, **dd)
        self.gamma = nn.Parameter(torch.full((dim,), float(ls_init_value), **dd)) if ls_init_value else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.token_mixer(x)))
        if self.gamma is not None:
            y = y * self.gamma.reshape(1, -1, 1, 1)
        return x + self.drop_path(y)


class InceptionNeXtStage(nn.Module):
    """Optional downsample (BN -> 2x2 conv) followed by `depth` blocks.

    `dilation` is (downsample conv dilation, block dilation); a dilated stage keeps stride 1 and pads its
    2x2 conv to 'same' so the resolution is preserved.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            downsample: bool = True,
            stride: int = 2,
            dilation: Tuple[int, int] = (1, 1),
            drop_path_rates: Optional[Sequence[float]] = None,
            block_kwargs: Optional[Dict] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        if downsample:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(in_chs, **dd),
                create_conv2d(
                    in_chs, out_chs, kernel_size=2, stride=stride, dilation=dilation[0],
                    padding='same' if dilation[1] > 1 else 0, bias=True, **dd),
            )
        else:
            self.downsample = nn.Identity()
        drop_path_rates = drop_path_rates or [0.] * depth
        self.blocks = nn.Sequential(*[
            InceptionNeXtBlock(out_chs, dilation=dilation[1], drop_path=dp, **(block_kwargs or {}), **dd)
            for dp in drop_path_rates
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


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
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if not len(depths) == len(dims) == len(mlp_ratios):
            raise ValueError(
                f'depths {tuple(depths)}, dims {tuple(dims)} and mlp_ratios {tuple(mlp_ratios)} '
                f'must have the same length')
        if output_stride not in (8, 16, 32):
            raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride}')
        if not global_pool:
            raise ValueError("InceptionNeXt's MLP head follows the pooling, which cannot be disabled (global_pool='')")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.min_input_size = 32

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4, **dd),
            nn.BatchNorm2d(dims[0], **dd),
        )
        block_kwargs = dict(
            square_kernel_size=square_kernel_size, band_kernel_size=band_kernel_size,
            branch_ratio=branch_ratio, ls_init_value=ls_init_value,
        )
        dp_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info = [], []
        stride, dilation = 4, 1
        for i, (depth, dim, mlp_ratio) in enumerate(zip(depths, dims, mlp_ratios)):
            first_dilation = dilation
            stage_stride = 1
            if i > 0:
                # past the requested output stride a stage dilates its convs instead of striding
                if stride < output_stride:
                    stage_stride = 2
                    stride *= 2
                else:
                    dilation *= 2
            stages.append(InceptionNeXtStage(
                dims[i - 1] if i > 0 else dim, dim, depth, downsample=i > 0, stride=stage_stride,
                dilation=(first_dilation, dilation), drop_path_rates=dp_rates[i],
                block_kwargs=dict(block_kwargs, mlp_ratio=mlp_ratio), **dd,
            ))
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = dims[-1]
        self.norm_pre = nn.Identity()
        self.head = MlpClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, mlp_ratio=head_mlp_ratio, drop=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features
        self.apply(_init_weights)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc2

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False):
        if global_pool == '':
            global_pool = None  # early pool: the head cannot drop its pooling, so '' keeps the current one
        super().reset_classifier(num_classes, global_pool, reset_other=reset_other)
        if global_pool is not None:
            self.global_pool = global_pool  # the head does the pooling; keep the attribute in step with it


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official and timm checkpoints share this model's keys: only unwrap containers and DDP prefixes."""
    for wrapper in ('model', 'state_dict'):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}


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
