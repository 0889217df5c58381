""" VAN (Visual Attention Network)

Paper: `Visual Attention Network` - https://arxiv.org/abs/2202.09741 (Computational Visual Media 2023)

@article{guo2023visual,
  title={Visual Attention Network},
  author={Guo, Meng-Hao and Lu, Cheng-Ze and Liu, Zheng-Ning and Cheng, Ming-Ming and Hu, Shi-Min},
  journal={Computational Visual Media},
  year={2023}
}

Official code and weights: https://github.com/Visual-Attention-Network/VAN-Classification (Apache-2.0),
ImageNet-1k weights mirrored at https://huggingface.co/Visual-Attention-Network; OpenMMLab's converted
weights: https://github.com/open-mmlab/mmpretrain/tree/main/configs/van

Differences from the official implementation, all deliberate:
* Module layout follows timm: `stem` (= `patch_embed1`), `stages.i.downsample` (= `patch_embed{i+1}`),
  `stages.i.blocks.j` (= `block{i+1}.{j}`), `stages.i.norm` (= `norm{i+1}`), `head.fc` (= `head`); inside
  a block `attn.proj_in`/`attn.lka`/`attn.proj_out`, `mlp.conv_dw` and `ls1.gamma`/`ls2.gamma` (the layer
  scales). `checkpoint_filter_fn` maps both the authors' checkpoints and OpenMMLab's converted ones.
* The stage-end LayerNorm runs channels-first on NCHW maps (`LayerNorm2d`) instead of on flattened
  tokens; it is the same function, and being a module inside each stage it makes `features_only` and
  `forward_intermediates` see exactly the official stage outputs (after the norm).
* `drop_rate` is timm's classifier dropout (the official code has none and uses `drop_rate` inside the MLP;
  that dropout is `proj_drop_rate` here). Both default to 0 as in the official models.
* The patch embeddings are `ConvBn` (fusable by `timm.utils.reparameterize_model`).

Weights: B0-B3 are the authors' ImageNet-1k checkpoints; B4 (1k and 22k), B5 and B6 (22k only) are OpenMMLab's
conversions, so `van_b5`/`van_b6` default to a 21841-class head (pass `num_classes=1000` for the 1k layout).
"""
# Original VAN code and weights: https://github.com/Visual-Attention-Network/VAN-Classification
# Licensed under the Apache License 2.0 (see the LICENSE file of that repository)
import math
import re
from typing import Dict, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, LayerScale2d, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from ..layers import ConvBn, DepthwiseConv2d, LargeKernelAttention
from ._backbone import (
    BackboneStage, StagedBackbone, apply_init, check_stage_settings, create_backbone, drop_path_schedule,
)
from ._checkpoint import unwrap_state_dict

__all__ = ['VAN']


class VanMlp(nn.Module):
    """1x1 conv -> depthwise 3x3 conv -> GELU -> 1x1 conv, with dropout after the activation and the output."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0., device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Conv2d(dim, hidden_dim, kernel_size=1, **dd)
        self.conv_dw = DepthwiseConv2d(hidden_dim, 3, **dd)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_dim, dim, kernel_size=1, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.conv_dw(self.fc1(x))))
        return self.drop2(self.fc2(x))


class VanAttention(nn.Module):
    """1x1 conv -> GELU -> Large Kernel Attention -> 1x1 conv, plus a shortcut from the (normalised) input."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.proj_in = nn.Conv2d(dim, dim, kernel_size=1, **dd)
        self.act = nn.GELU()
        self.lka = LargeKernelAttention(dim, **dd)
        self.proj_out = nn.Conv2d(dim, dim, kernel_size=1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.lka(self.act(self.proj_in(x)))) + x


class VanBlock(nn.Module):
    """Two pre-BatchNorm residual branches (attention, MLP), each with a layer scale and drop path."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.,
            ls_init_value: float = 1e-2,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.BatchNorm2d(dim, **dd)
        self.attn = VanAttention(dim, **dd)
        self.ls1 = LayerScale2d(dim, ls_init_value, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim, **dd)
        self.mlp = VanMlp(dim, int(dim * mlp_ratio), drop=proj_drop, **dd)
        self.ls2 = LayerScale2d(dim, ls_init_value, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _patch_embed(in_chs: int, out_chs: int, kernel_size: int, stride: int, device=None, dtype=None) -> ConvBn:
    """Overlapping patch embedding: a padded strided conv + BatchNorm (the stem, and each stage's downsample)."""
    conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, device=device, dtype=dtype)
    return ConvBn(conv, device=device, dtype=dtype)


class VAN(StagedBackbone):
    """VAN: 7x7/s4 patch embedding, four stages of LKA blocks each ending in a LayerNorm, avg pool + linear head."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (3, 3, 12, 3),
            dims: Sequence[int] = (64, 128, 320, 512),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            ls_init_value: float = 1e-2,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Number of input image channels.
            num_classes: Number of classes of the classifier (0: no classifier).
            global_pool: Global pooling type of the head ('': none).
            depths: Number of blocks in each stage.
            dims: Feature dimension of each stage.
            mlp_ratios: MLP hidden width of each stage's blocks as a multiple of its dimension.
            ls_init_value: Initial value of the layer scales.
            drop_rate: Dropout rate before the classifier.
            proj_drop_rate: Dropout rate inside the MLPs (the official `drop_rate`).
            drop_path_rate: Stochastic depth rate of the last block.
        """
        super().__init__(in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate)
        dd = dict(device=device, dtype=dtype)
        check_stage_settings(depths=depths, dims=dims, mlp_ratios=mlp_ratios)

        self.stem = _patch_embed(in_chans, dims[0], 7, 4, **dd)
        dp_rates = drop_path_schedule(drop_path_rate, depths)
        stages = []
        for i, (dim, mlp_ratio) in enumerate(zip(dims, mlp_ratios)):
            stages.append(BackboneStage(
                downsample=_patch_embed(dims[i - 1], dim, 3, 2, **dd) if i > 0 else None,
                blocks=[VanBlock(dim, mlp_ratio, ls_init_value, proj_drop_rate, dp, **dd) for dp in dp_rates[i]],
                norm=LayerNorm2d(dim, eps=1e-6, **dd),
            ))
        self._set_stages(stages, dims, reductions=[4 * 2 ** i for i in range(len(dims))])
        self.norm_pre = nn.Identity()  # the last stage already ends in its LayerNorm
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features
        apply_init(self, _init_weights)


def _init_weights(module: nn.Module, name: str = '') -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        # as the official code: He-normal over fan-out (kernel area * out channels / groups)
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0., math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# OpenMMLab (mmpretrain `tools/model_converters/van2mmpretrain.py`) -> official key fragments
_OPENMMLAB_TO_OFFICIAL = (
    (r'^blocks(\d+)\.', r'block\1.'),
    (r'^patch_embed(\d+)\.projection\.', r'patch_embed\1.proj.'),
    (r'\.spatial_gating_unit\.DW_conv\.', '.spatial_gating_unit.conv0.'),
    (r'\.spatial_gating_unit\.DW_D_conv\.', '.spatial_gating_unit.conv_spatial.'),
    (r'\.mlp\.dwconv\.', '.mlp.dwconv.dwconv.'),
    (r'^head\.fc\.', 'head.'),
)

# official key fragments inside a block -> ours
_BLOCK_KEY_MAP = (
    ('layer_scale_1', 'ls1.gamma'),
    ('layer_scale_2', 'ls2.gamma'),
    ('attn.proj_1.', 'attn.proj_in.'),
    ('attn.proj_2.', 'attn.proj_out.'),
    ('attn.spatial_gating_unit.conv0.', 'attn.lka.conv_local.'),
    ('attn.spatial_gating_unit.conv_spatial.', 'attn.lka.conv_dilated.'),
    ('attn.spatial_gating_unit.conv1.', 'attn.lka.conv_pw.'),
    ('mlp.dwconv.dwconv.', 'mlp.conv_dw.'),
)


def _official_key_to_ours(key: str) -> str:
    m = re.match(r'^patch_embed(\d+)\.(proj|norm)\.(.*)$', key)
    if m:
        stage, part, rest = int(m[1]) - 1, m[2], m[3]
        prefix = 'stem.' if stage == 0 else f'stages.{stage}.downsample.'
        return prefix + ('conv.' if part == 'proj' else 'bn.') + rest
    m = re.match(r'^block(\d+)\.(\d+)\.(.*)$', key)
    if m:
        rest = m[3]
        for old, new in _BLOCK_KEY_MAP:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        return f'stages.{int(m[1]) - 1}.blocks.{m[2]}.{rest}'
    m = re.match(r'^norm(\d+)\.(.*)$', key)
    if m:
        return f'stages.{int(m[1]) - 1}.norm.{m[2]}'
    return re.sub(r'^head\.', 'head.fc.', key)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map a VAN checkpoint onto this implementation's keys.

    Accepts the authors' files (timm-train `.pth.tar`, weights under `state_dict`), OpenMMLab's converted
    files (`backbone.` prefix, `blocks{s}`, `projection`, `DW_conv`/`DW_D_conv`, `head.fc`), the authors'
    segmentation checkpoints (VAN-Segmentation: official keys under `backbone.`), bare or wrapped, with or
    without a `module.` prefix, and checkpoints already in this layout.
    """
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith(('stem.', 'stages.')) for k in state_dict):
        return state_dict  # already in this layout
    out = {}
    mmpretrain = any(k.startswith('blocks1.') for k in state_dict)  # the official layout has `block1.`
    for key, value in state_dict.items():
        if mmpretrain:
            for pattern, repl in _OPENMMLAB_TO_OFFICIAL:
                key = re.sub(pattern, repl, key)
        out[_official_key_to_ours(key)] = value
    return out


def _create_van(variant: str, pretrained: bool = False, **kwargs) -> VAN:
    return create_backbone(VAN, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(**kwargs):
    # VAN was trained and evaluated with timm 0.4.12's ViT defaults: mean = std = 0.5, crop 0.9, bicubic
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'min_input_size': (3, 32, 32),
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'mean': IMAGENET_INCEPTION_MEAN, 'std': IMAGENET_INCEPTION_STD,
        'first_conv': 'stem.conv', 'classifier': 'head.fc', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2202.09741', 'paper_name': 'Visual Attention Network',
        'origin_url': 'https://github.com/Visual-Attention-Network/VAN-Classification',
        **kwargs,
    }


def _official(size: str, filename: str):
    # the authors' timm-train checkpoints, mirrored on the Hugging Face Hub by the authors' organisation
    return _cfg(hf_hub_id=f'Visual-Attention-Network/VAN-{size}-original', hf_hub_filename=filename)


def _openmmlab(filename: str, **kwargs):
    # the authors' B4-B6 weights as converted by OpenMMLab (mmcls 0.x). The 22k ones have no ImageNet-1k
    # fine-tune; the authors' ImageNet-22k script trains a 21841-class head (not checked against the files)
    return _cfg(
        url='https://download.openmmlab.com/mmclassification/v0/van/' + filename,
        origin_url='https://github.com/open-mmlab/mmpretrain/tree/mmcls-0.x/configs/van', **kwargs)


default_cfgs = generate_default_cfgs({
    'van_b0.in1k': _official('Tiny', 'van_tiny_754.pth.tar'),
    'van_b1.in1k': _official('Small', 'van_small_811.pth.tar'),
    'van_b2.in1k': _official('Base', 'van_base_828.pth.tar'),
    'van_b3.in1k': _official('Large', 'van_large_839.pth.tar'),
    'van_b4.in1k': _openmmlab('van-b4_3rdparty_in1k_20220909-f4665b92.pth'),
    'van_b4.in22k': _openmmlab('van-b4_3rdparty_in21k_20220909-db926b18.pth', num_classes=21841),
    'van_b5.in22k': _openmmlab('van-b5_3rdparty_in21k_20220909-18e904e3.pth', num_classes=21841),
    'van_b6.in22k': _openmmlab('van-b6_3rdparty_in21k_20220909-96c2cb3a.pth', num_classes=21841),
})


@register_model
def van_b0(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(depths=(3, 3, 5, 2), dims=(32, 64, 160, 256))
    return _create_van('van_b0', pretrained, **dict(model_args, **kwargs))


@register_model
def van_b1(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(depths=(2, 2, 4, 2), dims=(64, 128, 320, 512))
    return _create_van('van_b1', pretrained, **dict(model_args, **kwargs))


@register_model
def van_b2(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(depths=(3, 3, 12, 3), dims=(64, 128, 320, 512))
    return _create_van('van_b2', pretrained, **dict(model_args, **kwargs))


@register_model
def van_b3(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(depths=(3, 5, 27, 3), dims=(64, 128, 320, 512))
    return _create_van('van_b3', pretrained, **dict(model_args, **kwargs))


@register_model
def van_b4(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(depths=(3, 6, 40, 3), dims=(64, 128, 320, 512))
    return _create_van('van_b4', pretrained, **dict(model_args, **kwargs))


@register_model
def van_b5(pretrained: bool = False, **kwargs) -> VAN:
    model_args = dict(depths=(3, 3, 24, 3), dims=(96, 192, 480, 768))
    return _create_van('van_b5', pretrained, **dict(model_args, **kwargs))


@register_model
def van_b6(pretrained: bool = False, **kwargs) -> VAN:
    # stage-3 width 384 as the official code (some OpenMMLab docs quote the 480-wide 283.9M model)
    model_args = dict(depths=(6, 6, 90, 6), dims=(96, 192, 384, 768))
    return _create_van('van_b6', pretrained, **dict(model_args, **kwargs))
