""" RepLKNet

Paper: `Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs`
    - https://arxiv.org/abs/2203.06717 (CVPR 2022)

@inproceedings{ding2022scaling,
  title={Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs},
  author={Ding, Xiaohan and Zhang, Xiangyu and Han, Jungong and Ding, Guiguang},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={11963--11975},
  year={2022}
}

Official code: https://github.com/DingXiaoH/RepLKNet-pytorch (MIT); weights on Google Drive and Baidu Netdisk
(links in that repository's README).

Differences from the official implementation, all deliberate:
* Module layout follows timm: the transition after stage i is `stages.{i+1}.downsample`, the final BatchNorm is
  `norm_pre` and the classifier `head.fc`. Inside the stem and the stages the official names are kept
  (`stem.k.conv/bn`, `prelkb_bn`, `pw1`, `large_kernel.lkb_origin/small_conv/lkb_reparam`, `pw2`, `preffn_bn`).
  `checkpoint_filter_fn` maps official checkpoints (training or re-parameterised form, bare or under
  `model`/`state_dict`) onto it, so they load strictly.
* `deploy=True` is the official `small_kernel_merged=True`; `timm.utils.reparameterize_model` does what the
  official `structural_reparam()` does (only the large-kernel units are merged).
* Plain BatchNorm2d (the official default swaps in SyncBatchNorm process-wide: same keys, same eval math);
  timm's `convert_sync_batchnorm` does that for distributed training.
* The official downstream mode (`num_classes=None, out_indices=...`) is timm's `features_only=True`; XL's
  `norm_intermediate_features=True` (a BatchNorm on each returned feature map, official `stages.i.norm`, here
  `feature_norms.i`) is `feature_norms=True`, read through `forward_intermediates` (the `features_only`
  wrapper is then timm's 'getter'). The classifier and final norm stay (a feature extractor drops them).
* `group_matcher` gives the official layer-decay groups for any depths (the official code hard-codes them for
  depths (2, 2, 18, 2): 14 groups).
* Depthwise convs dispatch through `lkconv.layers` (no custom CUDA extension); the constructor never prints.
"""
# Original RepLKNet code and weights: https://github.com/DingXiaoH/RepLKNet-pytorch
# Copyright (c) 2022 Xiaohan Ding. Licensed under the MIT License (see the LICENSE file of that repository)
import re
from functools import partial
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import ClassifierHead, ConvNormAct, DropPath
from timm.models import generate_default_cfgs, register_model

from ..layers import ReparamLargeKernelConv
from ._backbone import (
    BackboneStage, StagedBackbone, check_stage_settings, create_backbone, drop_path_schedule,
)
from ._checkpoint import fetch_url_weights, unwrap_state_dict

__all__ = ['RepLKNet', 'RepLKBlock', 'ConvFFN']


class RepLKBlock(nn.Module):
    """Pre-BN residual block: BN -> 1x1 conv-BN-ReLU -> large-kernel depthwise conv -> ReLU -> 1x1 conv-BN."""

    def __init__(
            self,
            dim: int,
            dw_dim: int,
            kernel_size: int,
            small_kernel_size: Optional[int],
            drop_path: float = 0.,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Number of input and output channels.
            dw_dim: Number of channels of the large-kernel depthwise conv.
            kernel_size: Large kernel size.
            small_kernel_size: Size of the parallel small kernel (None: no small branch).
            drop_path: Stochastic depth rate.
            deploy: Build the re-parameterised form.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.prelkb_bn = nn.BatchNorm2d(dim, **dd)
        self.pw1 = ConvNormAct(dim, dw_dim, 1, **dd)
        self.large_kernel = ReparamLargeKernelConv(dw_dim, kernel_size, small_kernel_size, deploy=deploy, **dd)
        self.lk_nonlinear = nn.ReLU()
        self.pw2 = ConvNormAct(dw_dim, dim, 1, apply_act=False, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw1(self.prelkb_bn(x))
        y = self.pw2(self.lk_nonlinear(self.large_kernel(y)))
        return x + self.drop_path(y)


class ConvFFN(nn.Module):
    """Pre-BN residual FFN of 1x1 convs: BN -> conv-BN -> GELU -> conv-BN."""

    def __init__(self, dim: int, hidden_dim: int, drop_path: float = 0., device=None, dtype=None):
        """
        Args:
            dim: Number of input and output channels.
            hidden_dim: Number of hidden channels.
            drop_path: Stochastic depth rate.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.preffn_bn = nn.BatchNorm2d(dim, **dd)
        self.pw1 = ConvNormAct(dim, hidden_dim, 1, apply_act=False, **dd)
        self.nonlinear = nn.GELU()
        self.pw2 = ConvNormAct(hidden_dim, dim, 1, apply_act=False, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x))))
        return x + self.drop_path(y)


def _stem(in_chans: int, dim: int, device=None, dtype=None) -> nn.Module:
    """Stride 4: 3x3 conv s2, 3x3 depthwise, 1x1 conv, 3x3 depthwise s2; each conv-BN-ReLU."""
    dd = dict(device=device, dtype=dtype)
    return nn.Sequential(
        ConvNormAct(in_chans, dim, 3, stride=2, **dd),
        ConvNormAct(dim, dim, 3, groups=dim, **dd),
        ConvNormAct(dim, dim, 1, **dd),
        ConvNormAct(dim, dim, 3, stride=2, groups=dim, **dd),
    )


def _transition(in_chs: int, out_chs: int, device=None, dtype=None) -> nn.Module:
    """Between stages: 1x1 conv-BN-ReLU, then 3x3 depthwise stride-2 conv-BN-ReLU."""
    dd = dict(device=device, dtype=dtype)
    return nn.Sequential(
        ConvNormAct(in_chs, out_chs, 1, **dd),
        ConvNormAct(out_chs, out_chs, 3, stride=2, groups=out_chs, **dd),
    )


class RepLKNet(StagedBackbone):
    """RepLKNet: a 4-conv stem, four stages of (RepLK block, ConvFFN) pairs with transitions between them, a final
    BatchNorm, average pooling and a linear classifier. BatchNorm throughout, every conv bias-free.

    `deploy=True` builds the re-parameterised form directly (for loading re-parameterised checkpoints);
    `timm.utils.reparameterize_model` turns a trained model into it.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 2, 18, 2),
            dims: Sequence[int] = (128, 256, 512, 1024),
            large_kernel_sizes: Sequence[int] = (31, 29, 27, 13),
            small_kernel_size: Optional[int] = 5,
            dw_ratio: float = 1.,
            ffn_ratio: float = 4.,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            feature_norms: bool = False,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Number of input image channels.
            num_classes: Number of classes of the classifier (0: no classifier).
            global_pool: Global pooling type of the head.
            depths: Number of (RepLK block, ConvFFN) pairs in each stage.
            dims: Feature dimension of each stage.
            large_kernel_sizes: Large depthwise kernel size of each stage (odd).
            small_kernel_size: Size of the small kernel trained in parallel with every large one and merged into
                it for deployment (odd, at most the smallest large kernel); None or 0 for no small kernel (0
                also passes through `timm.create_model`, which drops arguments that are None).
            dw_ratio: Width of the large-kernel depthwise convs as a multiple of the stage dimension.
            ffn_ratio: Hidden width of the ConvFFNs as a multiple of the stage dimension.
            drop_rate: Dropout rate before the classifier.
            drop_path_rate: Stochastic depth rate of the last pair (the two blocks of a pair share their rate).
            feature_norms: Normalise each stage's feature map handed to dense-prediction heads with a BatchNorm
                of its own (off the main path), as the official downstream RepLKNet-XL.
            deploy: Build the re-parameterised form (each large-kernel unit one conv with bias).
        """
        super().__init__(in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate)
        dd = dict(device=device, dtype=dtype)
        check_stage_settings(depths=depths, dims=dims, large_kernel_sizes=large_kernel_sizes)
        if dw_ratio <= 0 or ffn_ratio <= 0:
            raise ValueError(f'dw_ratio and ffn_ratio must be positive, got {dw_ratio} and {ffn_ratio}')
        self.deploy = deploy
        small_kernel_size = small_kernel_size or None

        self.stem = _stem(in_chans, dims[0], **dd)
        dp_rates = drop_path_schedule(drop_path_rate, depths)
        stages = []
        for i, (dim, kernel_size) in enumerate(zip(dims, large_kernel_sizes)):
            blocks = []
            for dp in dp_rates[i]:
                blocks.append(RepLKBlock(
                    dim, int(dim * dw_ratio), kernel_size, small_kernel_size, drop_path=dp, deploy=deploy, **dd))
                blocks.append(ConvFFN(dim, int(dim * ffn_ratio), drop_path=dp, **dd))
            stages.append(BackboneStage(
                downsample=_transition(dims[i - 1], dim, **dd) if i > 0 else None,
                blocks=blocks,
            ))
        self._set_stages(stages, dims, reductions=[4 * 2 ** i for i in range(len(dims))])
        if feature_norms:
            self._set_feature_norms(partial(nn.BatchNorm2d, **dd))
        self.norm_pre = nn.BatchNorm2d(self.num_features, **dd)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head_hidden_size = self.head.num_features
        # initialisation: PyTorch's defaults, as the official code

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """The official layer-decay groups: the stem; each stage with the transition after it, except the third
        stage, in groups of two (RepLK block, ConvFFN) pairs, the last of which takes the transition after it;
        then the final norm and the head (unmatched, so last). For depths (2, 2, 18, 2): 14 groups."""
        if coarse:
            return super().group_matcher(coarse=True)
        blocks, group = [], 0
        for i, stage in enumerate(self.stages):
            if i > 0:  # a transition belongs to the group before it
                blocks.append((rf'^stages\.{i}\.downsample\.', (group,)))
            num_blocks = len(stage.blocks)
            chunk = 4 if i == 2 else max(num_blocks, 1)
            for start in range(0, num_blocks, chunk):
                group += 1
                indices = '|'.join(str(b) for b in range(start, min(start + chunk, num_blocks)))
                blocks.append((rf'^stages\.{i}\.blocks\.(?:{indices})\.', (group,)))
        blocks.append((r'^feature_norms\.', (group + 1,)))  # as the final norm and head: the last group
        return dict(stem=r'^stem\.', blocks=blocks)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map an official RepLKNet checkpoint (training or re-parameterised form) onto this implementation's keys.

    Only the places differ: transition i -> `stages.{i+1}.downsample`, `norm` -> `norm_pre`, `head` -> `head.fc`,
    the downstream feature norms `stages.i.norm` -> `feature_norms.i`; stem and block keys are the official ones.
    """
    state_dict = unwrap_state_dict(state_dict)
    if 'norm_pre.weight' in state_dict or any(k.startswith('stages.1.downsample.') for k in state_dict):
        return state_dict  # already in this layout
    out = {}
    for key, value in state_dict.items():
        transition = re.match(r'^transitions\.(\d+)\.', key)
        if transition:
            key = f'stages.{int(transition[1]) + 1}.downsample.' + key[transition.end():]
        key = re.sub(r'^stages\.(\d+)\.norm\.', r'feature_norms.\1.', key)
        key = re.sub(r'^norm\.', 'norm_pre.', key)
        key = re.sub(r'^head\.', 'head.fc.', key)
        out[key] = value
    return out


def _create_replknet(variant: str, pretrained: bool = False, **kwargs) -> RepLKNet:
    if pretrained:
        fetch_url_weights(variant, kwargs)  # Google Drive links: see fetch_url_weights
    return create_backbone(RepLKNet, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(drive_id: str = '', filename: str = '', **kwargs):
    """A cfg whose weights are the official file `filename`, shared on Google Drive under `drive_id`."""
    return {
        # (url, file name): the download is kept under the official file name
        'url': (f'https://drive.google.com/uc?export=download&id={drive_id}', filename) if drive_id else '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'min_input_size': (3, 32, 32),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0.conv', 'classifier': 'head.fc', 'license': 'mit',
        'paper_ids': 'arXiv:2203.06717',
        'paper_name': 'Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs',
        'origin_url': 'https://github.com/DingXiaoH/RepLKNet-pytorch',
        'notes': (f'Official file {filename}, on Google Drive (https://drive.google.com/file/d/{drive_id}/view) and '
                  f'Baidu Netdisk (code lknt). Google Drive may answer a direct download of a large file with a '
                  f'confirmation page: then download it by hand and pass pretrained_cfg_overlay=dict(file=...).'),
        **kwargs,
    }


def _cfg_384(drive_id: str, filename: str, **kwargs):
    # the official evaluation at 384 resizes the whole image to 384x384 (no crop)
    return _cfg(drive_id, filename, input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, crop_mode='squash',
                **kwargs)


def _cfg_in22k(drive_id: str, filename: str, **kwargs):
    # ImageNet-22K in the fall11 21,841-class layout (not Google's 21,843)
    return _cfg(drive_id, filename, num_classes=21841, **kwargs)


# RepLKNet-XL was trained and evaluated with mean = std = 0.5
_XL_NORM = dict(mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD)

default_cfgs = generate_default_cfgs({
    'replknet_31b.in1k': _cfg('1azQUiCxK9feYVkkrPqwVPBtNsTzDrX7S', 'RepLKNet-31B_ImageNet-1K_224.pth'),
    'replknet_31b.in1k_384': _cfg_384('1vo-P3XB6mRLUeDzmgv90dOu73uCeLfZN', 'RepLKNet-31B_ImageNet-1K_384.pth'),
    'replknet_31b.in22k_ft_in1k': _cfg(
        '1DslZ2voXZQR1QoFY9KnbsHAeF84hzS0s', 'RepLKNet-31B_ImageNet-22K-to-1K_224.pth'),
    'replknet_31b.in22k_ft_in1k_384': _cfg_384(
        '1Sc46BWdXXm2fVP-K_hKKU_W8vAB-0duX', 'RepLKNet-31B_ImageNet-22K-to-1K_384.pth'),
    'replknet_31b.in22k': _cfg_in22k('1PYJiMszZYNrkZOeYwjccvxX8UHMALB7z', 'RepLKNet-31B_ImageNet-22K.pth'),
    'replknet_31l.in22k_ft_in1k_384': _cfg_384(
        '1JYXoNHuRvC33QV1pmpzMTKEni1hpWfBl', 'RepLKNet-31L_ImageNet-22K-to-1K_384.pth'),
    'replknet_31l.in22k': _cfg_in22k('16jcPsPwo5rko7ojWS9k_W-svHX-iFknY', 'RepLKNet-31L_ImageNet-22K.pth'),
    'replknet_xl.megdata73m_ft_in1k_320': _cfg(
        '1tPC60El34GntXByIRHb-z-Apm4Y5LX1T', 'RepLKNet-XL_MegData73M_ImageNet1K.pth',
        input_size=(3, 320, 320), pool_size=(10, 10), **_XL_NORM),
    # the pretraining head's size and resolution are not published (a third-party port describes a 21k head)
    'replknet_xl.megdata73m': _cfg_in22k(
        '1CBHAEUlCzoHfiAQmMIjZhDMAIyHUmAAj', 'RepLKNet-XL_MegData73M_pretrain.pth', **_XL_NORM),
})


@register_model
def replknet_31b(pretrained: bool = False, **kwargs) -> RepLKNet:
    model_args = dict(
        depths=(2, 2, 18, 2), dims=(128, 256, 512, 1024), large_kernel_sizes=(31, 29, 27, 13), small_kernel_size=5)
    return _create_replknet('replknet_31b', pretrained, **dict(model_args, **kwargs))


@register_model
def replknet_31l(pretrained: bool = False, **kwargs) -> RepLKNet:
    model_args = dict(
        depths=(2, 2, 18, 2), dims=(192, 384, 768, 1536), large_kernel_sizes=(31, 29, 27, 13), small_kernel_size=5)
    return _create_replknet('replknet_31l', pretrained, **dict(model_args, **kwargs))


@register_model
def replknet_xl(pretrained: bool = False, **kwargs) -> RepLKNet:
    model_args = dict(
        depths=(2, 2, 18, 2), dims=(256, 512, 1024, 2048), large_kernel_sizes=(27, 27, 27, 13),
        small_kernel_size=None, dw_ratio=1.5)
    return _create_replknet('replknet_xl', pretrained, **dict(model_args, **kwargs))
