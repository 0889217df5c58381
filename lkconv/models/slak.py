""" SLaK (Sparse Large Kernel Network)

Paper: `More ConvNets in the 2020s: Scaling up Kernels Beyond 51x51 using Sparsity`
- https://arxiv.org/abs/2207.03620 (ICLR 2023)

@inproceedings{liu2023more,
  title={More ConvNets in the 2020s: Scaling up Kernels Beyond 51x51 using Sparsity},
  author={Liu, Shiwei and Chen, Tianlong and Chen, Xiaohan and Chen, Xuxi and Xiao, Qiao and Wu, Boqian and
          K{\"a}rkk{\"a}inen, Tommi and Pechenizkiy, Mykola and Mocanu, Decebal Constantin and Wang, Zhangyang},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2023}
}

Official code and weights: https://github.com/VITA-Group/SLaK (MIT License), built on ConvNeXt
(https://github.com/facebookresearch/ConvNeXt, Copyright (c) Meta Platforms, Inc. and affiliates, MIT License).

SLaK is ConvNeXt with each block's 7x7 depthwise conv replaced by a decomposed large kernel
(`lkconv.layers.DecomposedLargeKernelConv`: a K x 5 and a 5 x K band plus a 5 x 5 kernel, each with its own
BatchNorm; K = 51/49/47/13 per stage) and every stage 1.3x wider (widths truncated: `int(dim * 1.3)`).
The published models were trained with dynamic sparsity: about 40% of every weight matrix and kernel is
zero. They are dense tensors here, like in the checkpoints; the README's parameter and FLOP figures count
only the non-zeros (`lkconv bench` reports both).

Differences from the official implementation, all deliberate:
* Module layout follows timm (`stem`, `stages.i.downsample`, `stages.i.blocks.j`, `head.norm`, `head.fc`, block
  `large_kernel`/`norm`/`mlp.fc1`/`mlp.fc2`/`gamma`; kernel branches `tall` (official `LoRA1`), `wide`
  (`LoRA2`), `small` (`small_conv`), `square` (`lkb_origin`, `lkb_reparam`)); `checkpoint_filter_fn` maps
  official checkpoints onto it, so they load strictly.
* The class defaults are the released models' settings (width factor 1.3, decomposed kernels
  51/49/47/13 + 5), where the official class defaults to width 1.0 and no decomposition.
* The bands are padded per axis ((K//2, 2) and (2, K//2)), which is what the official CUDA extension
  computes; no custom CUDA extension is needed (depthwise convs dispatch through
  `lkconv.layers.DepthwiseConv2d`).
* Re-parameterisation (`timm.utils.reparameterize_model`) also works for the decomposed kernels, which the
  official `merge_kernel` cannot merge: BNs fold into the kernels and the 5 x 5 kernel into the tall band
  (two convs, 2*K*5 taps per channel); `decompose=False` merges into one K x K conv as the official code does.
* BatchNorm instead of SyncBatchNorm (identical in eval mode; use `train.sync_bn` for multi-GPU training).

Official checkpoints are training-script files (`model`, `model_ema`, `optimizer`, ..., and `args`, an
`argparse.Namespace`). They load with `torch.load(weights_only=True)` and only `argparse.Namespace` allow-listed:
pretrained weights always go through timm's `load_state_dict`, which does exactly that (weights given by URL are
downloaded to a file of their own first). As for every checkpoint timm loads, the EMA weights (`model_ema`) are
used when the file has them, else `model`; `timm.models.load_checkpoint(model, path, use_ema=False,
filter_fn=checkpoint_filter_fn)` loads `model` instead. The files are shared through Google Drive (300 epochs)
and SURFdrive (SLaK-T, 120 epochs); where a download is refused (quota, sign-in), fetch the file by hand and
pass `pretrained_cfg_overlay=dict(file=PATH)`.
"""
# Original SLaK code and weights: https://github.com/VITA-Group/SLaK
# Licensed under the MIT License (see the LICENSE file of that repository)
import re
from functools import partial
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, Mlp, NormMlpClassifierHead
from timm.models import generate_default_cfgs, register_model

from ..layers import DecomposedLargeKernelConv
from ._backbone import (
    BackboneStage, StagedBackbone, apply_init, check_stage_settings, create_backbone, drop_path_schedule,
    init_convnext_style,
)
from ._checkpoint import fetch_url_weights, unwrap_state_dict

__all__ = ['SLaK', 'SLaKBlock', 'checkpoint_filter_fn']



class SLaKBlock(nn.Module):
    """Decomposed large-kernel depthwise conv -> LayerNorm -> MLP (4x, GELU) -> layer scale, residual.

    The norm, MLP and layer scale run channels-last, as in ConvNeXt.
    """

    def __init__(
            self,
            dim: int,
            kernel_size: int,
            small_kernel: int = 5,
            decompose: bool = True,
            branch_bn: bool = True,
            drop_path: float = 0.,
            ls_init_value: Optional[float] = 1e-6,
            mlp_ratio: int = 4,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Number of channels.
            kernel_size: Large kernel size K of the depthwise conv.
            small_kernel: Small kernel size s (the bands' short side and the small kernel).
            decompose: K x s and s x K bands instead of one K x K kernel.
            branch_bn: A BatchNorm after each depthwise branch.
            drop_path: Stochastic depth rate.
            ls_init_value: Initial layer-scale value (None or 0: no layer scale).
            mlp_ratio: MLP hidden width as a multiple of `dim`.
            deploy: Build the re-parameterised depthwise conv.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.large_kernel = DecomposedLargeKernelConv(
            dim, kernel_size, small_kernel, decompose=decompose, bn=branch_bn, deploy=deploy, **dd)
        self.norm = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, dim * mlp_ratio, act_layer=nn.GELU, **dd)
        use_ls = ls_init_value is not None and ls_init_value > 0
        self.gamma = nn.Parameter(torch.full((dim,), float(ls_init_value), **dd)) if use_ls else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.large_kernel(x).permute(0, 2, 3, 1)))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


def _downsample(in_chs: int, out_chs: int, device=None, dtype=None) -> nn.Module:
    """LayerNorm -> 2x2 stride-2 conv, between stages."""
    return nn.Sequential(
        LayerNorm2d(in_chs, eps=1e-6, device=device, dtype=dtype),
        nn.Conv2d(in_chs, out_chs, kernel_size=2, stride=2, device=device, dtype=dtype),
    )


class SLaK(StagedBackbone):
    """SLaK: ConvNeXt's 4x4 patchify stem and four stages, with decomposed large-kernel blocks.

    `deploy=True` builds the re-parameterised form directly (for loading re-parameterised checkpoints);
    `timm.utils.reparameterize_model` turns a trained model into it.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (3, 3, 9, 3),
            dims: Sequence[int] = (96, 192, 384, 768),
            width_factor: float = 1.3,
            kernel_sizes: Sequence[int] = (51, 49, 47, 13),
            small_kernel: int = 5,
            decompose: bool = True,
            branch_bn: bool = True,
            ls_init_value: Optional[float] = 1e-6,
            head_init_scale: float = 1.,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Number of input image channels.
            num_classes: Number of classes of the classifier (0: no classifier).
            global_pool: Global pooling type of the head.
            depths: Number of blocks in each stage.
            dims: Nominal feature dimension of each stage; stage i has `int(dims[i] * width_factor)` channels.
            width_factor: Width multiplier of every stage (the result is truncated, as in the official code).
            kernel_sizes: Large depthwise kernel size K of each stage (odd).
            small_kernel: Small kernel size s shared by all stages (odd): the bands are K x s and s x K, and
                an s x s branch is added where s < K.
            decompose: Two bands per block (SLaK) instead of one K x K kernel.
            branch_bn: A BatchNorm after each depthwise branch (the official `bn`).
            ls_init_value: Initial layer-scale value (None or 0: no layer scale).
            head_init_scale: Factor on the initial classifier weights and bias.
            drop_rate: Dropout rate before the classifier.
            drop_path_rate: Stochastic depth rate of the last block.
            deploy: Build the re-parameterised form.
        """
        super().__init__(in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate)
        dd = dict(device=device, dtype=dtype)
        check_stage_settings(depths=depths, dims=dims, kernel_sizes=kernel_sizes)
        if not width_factor > 0:
            raise ValueError(f'width_factor must be positive, got {width_factor}')
        widths = [int(d * width_factor) for d in dims]
        if min(widths) < 1:
            raise ValueError(f'dims {tuple(dims)} x width_factor {width_factor} leave a stage without channels')
        self.deploy = deploy

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], kernel_size=4, stride=4, **dd),
            LayerNorm2d(widths[0], eps=1e-6, **dd),
        )
        dp_rates = drop_path_schedule(drop_path_rate, depths)
        stages = []
        for i, (depth, width, kernel_size) in enumerate(zip(depths, widths, kernel_sizes)):
            stages.append(BackboneStage(
                downsample=_downsample(widths[i - 1], width, **dd) if i > 0 else None,
                blocks=[
                    SLaKBlock(
                        width, kernel_size, small_kernel, decompose=decompose, branch_bn=branch_bn,
                        drop_path=dp_rates[i][j], ls_init_value=ls_init_value, deploy=deploy, **dd)
                    for j in range(depth)
                ],
            ))
        self._set_stages(stages, widths, reductions=[4 * 2 ** i for i in range(len(widths))])
        self.norm_pre = nn.Identity()
        self.head = NormMlpClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
            norm_layer=partial(LayerNorm2d, eps=1e-6), **dd,
        )
        self.head_hidden_size = self.head.num_features
        apply_init(self, partial(init_convnext_style, head_init_scale=head_init_scale))


# official key fragments inside a block -> ours (`Decom1`/`Decom2`: the band names of an earlier revision)
_BLOCK_KEY_MAP = (
    (r'large_kernel\.(LoRA1|Decom1)\.', 'large_kernel.tall.'),
    (r'large_kernel\.(LoRA2|Decom2)\.', 'large_kernel.wide.'),
    (r'large_kernel\.small_conv\.', 'large_kernel.small.'),
    (r'large_kernel\.(lkb_origin|lkb_reparam)\.', 'large_kernel.square.'),
    (r'pwconv1\.', 'mlp.fc1.'),
    (r'pwconv2\.', 'mlp.fc2.'),
)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map an official SLaK checkpoint (training form, or `merge_kernel` deploy form) onto this implementation.

    A training-script file is unwrapped as timm's `load_state_dict` does: `model_ema` if present, else
    `state_dict` or `model`.
    """
    if isinstance(state_dict.get('model_ema'), dict):
        state_dict = state_dict['model_ema']
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.0.weight' in state_dict:
        return state_dict  # already in this layout
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r'^downsample_layers\.0\.', 'stem.', key)
        key = re.sub(r'^downsample_layers\.(\d+)\.', r'stages.\1.downsample.', key)
        key = re.sub(r'^head\.', 'head.fc.', key)
        key = re.sub(r'^norm\.', 'head.norm.', key)
        block = re.match(r'^stages\.(\d+)\.(\d+)\.', key)
        if block:
            rest = key[block.end():]
            for pattern, repl in _BLOCK_KEY_MAP:
                rest = re.sub('^' + pattern, repl, rest)
            key = f'stages.{block[1]}.blocks.{block[2]}.{rest}'
        out[key] = value
    return out


def _create_slak(variant: str, pretrained: bool = False, **kwargs) -> SLaK:
    if pretrained:
        fetch_url_weights(variant, kwargs)  # share links: see fetch_url_weights
    return create_backbone(SLaK, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(url: str = '', **kwargs):
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'min_input_size': (3, 32, 32),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': 'head.fc', 'license': 'mit',
        'paper_ids': 'arXiv:2207.03620',
        'paper_name': 'More ConvNets in the 2020s: Scaling up Kernels Beyond 51x51 using Sparsity',
        'origin_url': 'https://github.com/VITA-Group/SLaK',
        **kwargs,
    }


def _google_drive(file_id: str, top1: str):
    # the direct-download endpoint: Drive's share page would need a confirmation click for files this large
    return _cfg(
        f'https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t',
        notes=(f'ImageNet-1k top-1 {top1}, 300 epochs at 40% sparsity',))


def _surfdrive(share: str, top1: str, epochs: int):
    return _cfg(
        f'https://surfdrive.surf.nl/files/index.php/s/{share}/download',
        notes=(f'ImageNet-1k top-1 {top1}, {epochs} epochs at 40% sparsity',))


default_cfgs = generate_default_cfgs({
    'slak_tiny.in1k': _google_drive('1Iut2f5FMS_77jGPYoUJDQzDIXOsax1u4', '82.5'),
    'slak_tiny.in1k_120ep': _surfdrive('WiQYWNclJ9bW5XV', '81.6', 120),
    'slak_small.in1k': _google_drive('1etM6KQbnlsgDAZ37adsQJ3UI8Bbv2AVe', '83.8'),
    'slak_base.in1k': _google_drive('1duUxUD3RSblQ6eDHd0n-u0aulwGypf1j', '84.0'),
})


@register_model
def slak_tiny(pretrained: bool = False, **kwargs) -> SLaK:
    model_args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    return _create_slak('slak_tiny', pretrained, **dict(model_args, **kwargs))


@register_model
def slak_small(pretrained: bool = False, **kwargs) -> SLaK:
    model_args = dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
    return _create_slak('slak_small', pretrained, **dict(model_args, **kwargs))


@register_model
def slak_base(pretrained: bool = False, **kwargs) -> SLaK:
    model_args = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
    return _create_slak('slak_base', pretrained, **dict(model_args, **kwargs))
