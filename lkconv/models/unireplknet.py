""" UniRepLKNet

Paper: `UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point Cloud, Time-Series
and Image Recognition` - https://arxiv.org/abs/2311.15599 (CVPR 2024)

@inproceedings{ding2024unireplknet,
  title={UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point Cloud, Time-Series
         and Image Recognition},
  author={Ding, Xiaohan and Zhang, Yiyuan and Ge, Yixiao and Zhao, Sijie and Song, Lin and Yue, Xiangyu
          and Shan, Ying},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2024}
}

Official code and weights: https://github.com/AILab-CVC/UniRepLKNet (Apache-2.0),
https://huggingface.co/DingXiaoH/UniRepLKNet

Differences from the official implementation, all deliberate:
* Module layout follows timm (`stem`, `stages.i.downsample`, `stages.i.blocks.j`, `head.norm`, `head.fc`,
  block `conv_dw`/`norm`/`se`/`mlp`); `checkpoint_filter_fn` maps official checkpoints (training or deploy
  form, bare or under `model`/`state_dict`) onto it, so they load strictly.
* Dilated Reparam Block branches are named `k{kernel}_d{dilation}` inside one ModuleDict.
* The block MLP is an argument of the model (`mlp_layer`), so that variants such as the FDConv one
  (`fdconv_nets`) are the same model with another MLP.
* The constructor rejects unknown arguments and never prints; no custom CUDA extension is used
  (depthwise convs dispatch through `lkconv.layers.DepthwiseConv2d`).
* The authors' detection/segmentation backbone (`UniRepLKNetBackbone`, whose mode depends on `init_cfg`) is
  this model with `feature_norms=True` as a feature extractor: the output LayerNorms `norm0..3` become
  `feature_norms.0..3`; its checkpoints (the `backbone.` part of an mmdet/mmseg file) load strictly.
"""
# Original UniRepLKNet code and weights: https://github.com/AILab-CVC/UniRepLKNet
# Licensed under the Apache License 2.0 (see the LICENSE file of that repository)
import re
from functools import partial
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, NormMlpClassifierHead, SEModule
from timm.models import generate_default_cfgs, register_model

from ..layers import (
    DILATED_BRANCHES, DepthwiseConv2d, DilatedReparamBlock, GlobalResponseNormNHWC, conv_with_weights,
    fuse_bn_scale, fuse_conv_bn,
)
from ._backbone import (
    BackboneStage, StagedBackbone, apply_init, check_stage_settings, create_backbone, drop_path_schedule,
    init_convnext_style,
)
from ._checkpoint import unwrap_state_dict

__all__ = ['UniRepLKNet', 'UniRepLKNetBlock', 'UniRepLKNetMlp', 'default_kernel_sizes']

# official per-block depthwise kernel sizes, chosen by the depths of the variant
_DEFAULT_KERNEL_SIZES: Dict[Tuple[int, ...], Tuple[Tuple[int, ...], ...]] = {
    (2, 2, 6, 2): ((3, 3), (13, 13), (13,) * 6, (13, 13)),
    (2, 2, 8, 2): ((3, 3), (13, 13), (13,) * 8, (13, 13)),
    (3, 3, 18, 3): ((3, 3, 3), (13, 13, 13), (13, 3) * 9, (13, 13, 13)),
    (3, 3, 27, 3): ((3, 3, 3), (13, 13, 13), (13, 3, 3) * 9, (13, 13, 13)),
}
_SMALL_KERNELS = (3, 5)  # plain depthwise conv; larger kernels use a Dilated Reparam Block


def default_kernel_sizes(depths: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    depths = tuple(depths)
    if depths not in _DEFAULT_KERNEL_SIZES:
        raise ValueError(
            f'no default kernel sizes for depths {depths} (known: {sorted(_DEFAULT_KERNEL_SIZES)}); '
            f'pass kernel_sizes=')
    return _DEFAULT_KERNEL_SIZES[depths]


class UniRepLKNetMlp(nn.Module):
    """Channels-last FFN: Linear -> GELU -> GRN -> Linear (no bias), then BatchNorm back in NCHW.

    `deploy=True` builds the re-parameterised form: GRN without bias, biased `fc2`, no BatchNorm.
    """

    def __init__(self, dim: int, hidden_dim: int, deploy: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Linear(dim, hidden_dim, **dd)
        self.act = nn.GELU()
        self.grn = GlobalResponseNormNHWC(hidden_dim, bias=not deploy, **dd)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=deploy, **dd)
        self.norm = nn.Identity() if deploy else nn.BatchNorm2d(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = self.grn(self.act(self.fc1(x)))
        x = self.fc2(x).permute(0, 3, 1, 2)
        return self.norm(x)

    @torch.no_grad()
    def reparameterize(self, out_scale: Optional[torch.Tensor] = None) -> None:
        """Fold the GRN bias, the output BatchNorm and an optional per-channel output scale into `fc2`."""
        weight = self.fc2.weight
        bias = self.fc2.bias if self.fc2.bias is not None else weight.new_zeros(weight.shape[0])
        if self.grn.bias is not None:
            bias = bias + weight @ self.grn.bias.reshape(-1)
        if isinstance(self.norm, nn.BatchNorm2d):
            scale, shift = fuse_bn_scale(self.norm)
            weight, bias = weight * scale[:, None], bias * scale + shift
        if out_scale is not None:
            weight, bias = weight * out_scale[:, None], bias * out_scale
        fc2 = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
        fc2.weight.copy_(weight)
        fc2.bias.copy_(bias)
        self.fc2 = fc2.train(self.training)
        self.grn.bias = None
        self.norm = nn.Identity()


class UniRepLKNetBlock(nn.Module):
    """Depthwise conv (Dilated Reparam Block for K >= 7) -> BN -> SE -> GRN FFN -> layer scale, residual."""

    def __init__(
            self,
            dim: int,
            kernel_size: int,
            drop_path: float = 0.,
            ls_init_value: Optional[float] = 1e-6,
            mlp_ratio: int = 4,
            mlp_layer: Callable[..., nn.Module] = UniRepLKNetMlp,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Number of channels.
            kernel_size: Depthwise kernel size: 0 (no depthwise conv), 3, 5 or a Dilated Reparam Block size.
            drop_path: Stochastic depth rate.
            ls_init_value: Initial layer-scale value (None or 0: no layer scale).
            mlp_ratio: MLP hidden width as a multiple of `dim`.
            mlp_layer: The MLP, built as `mlp_layer(dim, hidden_dim, deploy=..., device=..., dtype=...)`.
            deploy: Build the re-parameterised form.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if kernel_size != 0 and kernel_size not in _SMALL_KERNELS and kernel_size not in DILATED_BRANCHES:
            raise ValueError(
                f'UniRepLKNet kernel size must be 0, {_SMALL_KERNELS} or one of {sorted(DILATED_BRANCHES)}, '
                f'got {kernel_size}')
        if kernel_size == 0:
            self.conv_dw = nn.Identity()
        elif kernel_size in _SMALL_KERNELS or deploy:
            self.conv_dw = DepthwiseConv2d(dim, kernel_size, bias=deploy, **dd)
        else:
            self.conv_dw = DilatedReparamBlock(dim, kernel_size, **dd)
        self.norm = nn.Identity() if deploy or kernel_size == 0 else nn.BatchNorm2d(dim, **dd)
        self.se = SEModule(dim, rd_channels=dim // 4, **dd)
        self.mlp = mlp_layer(dim, dim * mlp_ratio, deploy=deploy, **dd)
        use_ls = ls_init_value is not None and ls_init_value > 0 and not deploy
        self.gamma = nn.Parameter(torch.full((dim,), float(ls_init_value), **dd)) if use_ls else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.se(self.norm(self.conv_dw(x))))
        if self.gamma is not None:
            y = y * self.gamma.reshape(1, -1, 1, 1)
        return x + self.drop_path(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the deploy form in place: one biased depthwise conv and one biased output linear."""
        if isinstance(self.conv_dw, DilatedReparamBlock):
            self.conv_dw = self.conv_dw.fuse()
        if isinstance(self.norm, nn.BatchNorm2d):
            conv = self.conv_dw
            self.conv_dw = conv_with_weights(conv, *fuse_conv_bn(conv.weight, conv.bias, self.norm))
            self.norm = nn.Identity()
        self.mlp.reparameterize(self.gamma)
        self.gamma = None


def _downsample(in_chs: int, out_chs: int, device=None, dtype=None) -> nn.Module:
    """3x3 stride-2 conv -> LayerNorm, between stages."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=2, padding=1, device=device, dtype=dtype),
        LayerNorm2d(out_chs, eps=1e-6, device=device, dtype=dtype),
    )


class UniRepLKNet(StagedBackbone):
    """UniRepLKNet: a 2-conv stem and four stages of large-kernel blocks, pooled LayerNorm + linear head.

    `deploy=True` builds the re-parameterised form directly (for loading re-parameterised checkpoints);
    `timm.utils.reparameterize_model` turns a trained model into it.
    """

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
            mlp_layer: Callable[..., nn.Module] = UniRepLKNetMlp,
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
            depths: Number of blocks in each stage.
            dims: Feature dimension of each stage.
            kernel_sizes: Depthwise kernel size of every block, one sequence per stage (0: no depthwise
                conv); None takes the official sizes for `depths`.
            ls_init_value: Initial layer-scale value (None or 0: no layer scale).
            head_init_scale: Factor on the initial classifier weights and bias.
            drop_rate: Dropout rate before the classifier.
            drop_path_rate: Stochastic depth rate of the last block.
            mlp_layer: The blocks' MLP: built as `mlp_layer(dim, hidden_dim, deploy=..., device=..., dtype=...)`,
                with a `reparameterize(out_scale)` that folds the layer scale into its output.
            feature_norms: Normalise each stage's feature map handed to dense-prediction heads with a LayerNorm
                of its own (off the main path), as the authors' detection and segmentation backbone (official
                `norm0`..`norm3`).
            deploy: Build the re-parameterised form.
        """
        super().__init__(in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate)
        dd = dict(device=device, dtype=dtype)
        check_stage_settings(depths=depths, dims=dims)
        kernel_sizes = default_kernel_sizes(depths) if kernel_sizes is None else kernel_sizes
        if [len(k) for k in kernel_sizes] != list(depths):
            raise ValueError(f'kernel_sizes {kernel_sizes} do not match depths {tuple(depths)}')
        self.deploy = deploy

        norm_layer = partial(LayerNorm2d, eps=1e-6)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, kernel_size=3, stride=2, padding=1, **dd),
            norm_layer(dims[0] // 2, **dd),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], kernel_size=3, stride=2, padding=1, **dd),
            norm_layer(dims[0], **dd),
        )
        dp_rates = drop_path_schedule(drop_path_rate, depths)
        stages = []
        for i, (dim, stage_kernel_sizes) in enumerate(zip(dims, kernel_sizes)):
            stages.append(BackboneStage(
                downsample=_downsample(dims[i - 1], dim, **dd) if i > 0 else None,
                blocks=[
                    UniRepLKNetBlock(
                        dim, k, drop_path=dp, ls_init_value=ls_init_value, mlp_layer=mlp_layer, deploy=deploy, **dd)
                    for k, dp in zip(stage_kernel_sizes, dp_rates[i])
                ],
            ))
        self._set_stages(stages, dims, reductions=[4 * 2 ** i for i in range(len(dims))])
        if feature_norms:
            self._set_feature_norms(partial(norm_layer, **dd))
        self.norm_pre = nn.Identity()
        self.head = NormMlpClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
            norm_layer=norm_layer, **dd,
        )
        self.head_hidden_size = self.head.num_features
        apply_init(self, partial(init_convnext_style, head_init_scale=head_init_scale))


# official key fragments inside a block -> ours (lk_origin depends on the form, handled separately)
_BLOCK_KEY_MAP = (
    (r'dwconv\.origin_bn\.', 'conv_dw.branches.k{K}_d1.bn.'),
    (r'dwconv\.dil_conv_k(\d+)_(\d+)\.', r'conv_dw.branches.k\1_d\2.conv.'),
    (r'dwconv\.dil_bn_k(\d+)_(\d+)\.', r'conv_dw.branches.k\1_d\2.bn.'),
    (r'dwconv\.', 'conv_dw.'),
    (r'se\.down\.', 'se.fc1.'),
    (r'se\.up\.', 'se.fc2.'),
    (r'pwconv1\.1\.', 'mlp.fc1.'),
    (r'act\.1\.gamma$', 'mlp.grn.weight'),
    (r'act\.1\.beta$', 'mlp.grn.bias'),
    (r'pwconv2\.0\.', 'mlp.fc2.'),
    (r'pwconv2\.2\.', 'mlp.norm.'),
)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map an official UniRepLKNet checkpoint (training or deploy form; classification, or the backbone of a
    detection/segmentation checkpoint with its output norms `norm0..3`) onto this implementation's keys."""
    state_dict = unwrap_state_dict(state_dict)
    if 'stem.0.weight' in state_dict:
        return state_dict  # already in this layout
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r'^downsample_layers\.0\.', 'stem.', key)
        key = re.sub(r'^downsample_layers\.(\d+)\.', r'stages.\1.downsample.', key)
        key = re.sub(r'^head\.', 'head.fc.', key)
        key = re.sub(r'^norm\.', 'head.norm.', key)
        key = re.sub(r'^norm(\d+)\.', r'feature_norms.\1.', key)  # the downstream backbone's output norms
        block = re.match(r'^stages\.(\d+)\.(\d+)\.', key)
        if block:
            prefix, rest = f'stages.{block[1]}.blocks.{block[2]}.', key[block.end():]
            if rest.startswith('dwconv.lk_origin.'):
                trained_form = block[0] + 'dwconv.origin_bn.weight' in state_dict
                kernel = state_dict[block[0] + 'dwconv.lk_origin.weight'].shape[-1]
                target = f'conv_dw.branches.k{kernel}_d1.conv.' if trained_form else 'conv_dw.'
                rest = target + rest[len('dwconv.lk_origin.'):]
            else:
                for pattern, repl in _BLOCK_KEY_MAP:
                    if re.match(pattern, rest):
                        kernel = _large_kernel(state_dict, block[0])
                        rest = re.sub('^' + pattern, repl.replace('{K}', str(kernel)), rest)
                        break
            key = prefix + rest
        out[key] = value
    return out


def _large_kernel(state_dict, official_prefix: str) -> int:
    weight = state_dict.get(official_prefix + 'dwconv.lk_origin.weight')
    return 0 if weight is None else weight.shape[-1]


def _create_unireplknet(variant: str, pretrained: bool = False, **kwargs) -> UniRepLKNet:
    return create_backbone(UniRepLKNet, variant, pretrained, checkpoint_filter_fn, **kwargs)


_HF_REPO = 'DingXiaoH/UniRepLKNet'


def _cfg(filename: str = '', **kwargs):
    return {
        'hf_hub_id': _HF_REPO if filename else '',
        'hf_hub_filename': filename or None,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'min_input_size': (3, 32, 32),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': 'head.fc', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2311.15599',
        'paper_name': 'UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, '
                      'Point Cloud, Time-Series and Image Recognition',
        'origin_url': 'https://github.com/AILab-CVC/UniRepLKNet',
        **kwargs,
    }


def _in1k(variant: str, top1: str):
    return _cfg(f'unireplknet_{variant}_in1k_224_acc{top1}.pth')


def _in22k_ft_384(variant: str, top1: str):
    # the official 384 evaluation resizes the whole image to 384x384 (no crop)
    return _cfg(
        f'unireplknet_{variant}_in22k_to_in1k_384_acc{top1}.pth',
        input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, crop_mode='squash')


def _in22k(variant: str, size: int = 224):
    return _cfg(
        f'unireplknet_{variant}_in22k_pretrain.pth', num_classes=21841,
        input_size=(3, size, size), pool_size=(size // 32, size // 32))


default_cfgs = generate_default_cfgs({
    'unireplknet_a.in1k': _in1k('a', '77.03'),
    'unireplknet_f.in1k': _in1k('f', '78.58'),
    'unireplknet_p.in1k': _in1k('p', '80.23'),
    'unireplknet_n.in1k': _in1k('n', '81.64'),
    'unireplknet_t.in1k': _in1k('t', '83.21'),
    'unireplknet_s.in1k': _in1k('s', '83.91'),
    'unireplknet_s.in22k_ft_in1k_384': _in22k_ft_384('s', '86.44'),
    'unireplknet_s.in22k': _in22k('s'),
    'unireplknet_b.in22k_ft_in1k_384': _in22k_ft_384('b', '87.40'),
    'unireplknet_b.in22k': _in22k('b'),
    'unireplknet_l.in22k_ft_in1k_384': _in22k_ft_384('l', '87.88'),
    'unireplknet_l.in22k': _in22k('l', 192),
    'unireplknet_xl.in22k_ft_in1k_384': _in22k_ft_384('xl', '87.96'),
    'unireplknet_xl.in22k': _in22k('xl', 192),
})


@register_model
def unireplknet_a(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))
    return _create_unireplknet('unireplknet_a', pretrained, **dict(model_args, **kwargs))


@register_model
def unireplknet_f(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384))
    return _create_unireplknet('unireplknet_f', pretrained, **dict(model_args, **kwargs))


@register_model
def unireplknet_p(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512))
    return _create_unireplknet('unireplknet_p', pretrained, **dict(model_args, **kwargs))


@register_model
def unireplknet_n(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640))
    return _create_unireplknet('unireplknet_n', pretrained, **dict(model_args, **kwargs))


@register_model
def unireplknet_t(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640))
    return _create_unireplknet('unireplknet_t', pretrained, **dict(model_args, **kwargs))


@register_model
def unireplknet_s(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
    return _create_unireplknet('unireplknet_s', pretrained, **dict(model_args, **kwargs))


@register_model
def unireplknet_b(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
    return _create_unireplknet('unireplknet_b', pretrained, **dict(model_args, **kwargs))


@register_model
def unireplknet_l(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536))
    return _create_unireplknet('unireplknet_l', pretrained, **dict(model_args, **kwargs))


@register_model
def unireplknet_xl(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    model_args = dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048))
    return _create_unireplknet('unireplknet_xl', pretrained, **dict(model_args, **kwargs))
