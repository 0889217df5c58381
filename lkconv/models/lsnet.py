""" LSNet

Paper: `LSNet: See Large, Focus Small` - https://arxiv.org/abs/2503.23135 (CVPR 2025)

@inproceedings{wang2025lsnet,
  title={LSNet: See Large, Focus Small},
  author={Wang, Ao and Chen, Hui and Lin, Zijia and Han, Jungong and Ding, Guiguang},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2025}
}

Official code: https://github.com/THU-MIG/lsnet (= jameslahm/lsnet; the repository has no LICENSE file);
weights (MIT, per the model cards): https://huggingface.co/jameslahm/lsnet

A stride-8 Conv-BN stem, four stages (strides 8/16/32/64) whose blocks alternate a RepVGG depthwise
mixer + SE with an LS convolution (stages 1-3) or a LeViT-style attention (stage 4), each followed by a
Conv-BN FFN; the head is global pooling -> BatchNorm -> Linear (plus a distillation head for `*_distill`).

Differences from the official implementation, all deliberate:
* Module layout follows timm: `stem` (official `patch_embed`), `stages.i.downsample` (official
  `blocks{i+1}.0/1`), `stages.i.blocks.j`, block `mixer`/`se`/`mlp.fc1`/`mlp.fc2` (official
  `ffn.m.pw1/pw2`), attention without the `Residual` wrapper (`mixer.qkv`, `mixer.dw`, `mixer.proj`,
  `mixer.attention_bias.attention_biases`), head `head.norm`/`head.fc` (official `head.bn`/`head.l`).
  Official Conv2d_BN pairs are `lkconv.layers.ConvBn` with keys `conv`/`bn` (official `c`/`bn`), so that
  one fusable Conv-BN type serves the whole package. `checkpoint_filter_fn` maps the released (unfused,
  bare state_dict) checkpoints onto this layout; they load strictly.
* SKA runs in PyTorch everywhere (CPU, any dtype, exportable) through a backend dispatch
  (`lkconv.layers.small_kernel_aggregation`); the official code needs CUDA + Triton and computes bf16 in fp64.
* The authors' detection/segmentation backbone is this model with `img_size=896` (bias tables for a 14x14
  grid) and `norm_eval=True` (BatchNorm statistics frozen while fine-tuning); its checkpoints (the
  `backbone.` part of an mmdet/mmseg file) load into it strictly. `lkconv.zoo.downstream` lists them.
* Any input size works: when the stage-4 token grid differs from the one the bias table was built for
  (`img_size`, default 224 -> 4x4), the gathered bias is resized bicubically to the new N x N, as the
  official detection/segmentation backbones do. `attention_bias_idxs` is a computed, non-persistent
  buffer (dropped from official checkpoints); a checkpoint whose bias table was built for another grid is
  resized bicubically on its offset grid when loaded (as the official dense-prediction loaders do).
* The eval-mode attention-bias cache follows timm's LeViT but can never be stale (see
  `lkconv.layers.AttentionBias2d`); the official cache is filled by `eval()` and not refreshed.
* Distilled models average both heads unless `set_distilled_training(True)` is called, in which case
  training-mode forward returns `(head, head_dist)` logits (as timm's LeViT/DeiT; the official model
  always returns the tuple in training). `get_classifier()` returns the main classifier `head.fc`.
* The stage widths are `dims`, as in the other families; `timm.create_model` still accepts the official
  name `embed_dims`.
* The constructor accepts timm's `drop_rate` (dropout before the classifiers) and `drop_path_rate`
  (stochastic depth on the FFN residual); both default to 0 as in the official recipe.
* `timm.utils.reparameterize_model` fuses every Conv-BN, each RepVGG mixer into one 3x3 depthwise conv,
  and the head BatchNorms into their Linear layers. LS conv's output BN, LKP's `cv4`/GroupNorm and SE stay.
  `deploy=True` builds that fused form directly; it loads the official fused checkpoints (the official
  `fuse()` / `replace_batchnorm` output: `X.c` + `X.bn` -> `X`, a RepVGG `mixer` -> one conv, `head.bn` +
  `head.l` -> `head`) strictly, and computes what the fused training form computes. In the deploy form the
  first conv is `stem.0` (the cfg's `first_conv` names the training form's `stem.0.conv`), so timm cannot
  adapt fused weights to another `in_chans`.
* timm's RepViT `RepVggDw` (legacy form) and the `NormLinear` heads of RepViT / LeViT compute what the RepVGG
  mixer and the BN-Linear head compute, but with other keys (`conv.c` for `conv.conv`; `bn` / `l` or `bn` /
  `linear` for `norm` / `fc`) and plain `nn.Conv2d` depthwise convs (no backend dispatch), so they are not used.
"""
# Original LSNet code: https://github.com/THU-MIG/lsnet (no licence file); weights: MIT, per the model cards
import re
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, NormMlpClassifierHead, SEModule, get_device_dtype, make_divisible, to_2tuple, trunc_normal_,
)
from timm.models import generate_default_cfgs, register_model

from ..kernels.geometry import conv_output_size
from ..layers import (
    AttentionBias2d, ConvBn, DepthwiseConv2d, LSConv, conv_with_weights, fuse_bn_scale, fuse_conv_bn, merge_kernels,
)
from ._backbone import BackboneStage, StagedBackbone, check_stage_settings, create_backbone, drop_path_schedule
from ._checkpoint import unwrap_state_dict

__all__ = ['LSNet', 'LSNetBlock', 'LSNetAttention', 'RepVggDw']


def _conv_bn(
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        depthwise: bool = False,
        bn_weight_init: float = 1.,
        deploy: bool = False,
        device=None,
        dtype=None,
) -> nn.Module:
    """Bias-free conv ('same' padding) + BatchNorm (deploy: one conv with bias, the fused pair); depthwise
    convs are `DepthwiseConv2d` (backend dispatch)."""
    dd = dict(device=device, dtype=dtype)
    if depthwise:
        if in_chs != out_chs:
            raise ValueError(f'a depthwise conv keeps its channels, got {in_chs} -> {out_chs}')
        conv = DepthwiseConv2d(in_chs, kernel_size, stride=stride, bias=deploy, **dd)
    else:
        conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=deploy, **dd)
    if deploy:
        return conv
    conv_bn = ConvBn(conv, **dd)
    nn.init.constant_(conv_bn.bn.weight, bn_weight_init)
    return conv_bn


class RepVggDw(nn.Module):
    """3x3 depthwise Conv-BN + 1x1 depthwise Conv-BN + identity; `fuse()` gives one biased 3x3 depthwise conv."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = _conv_bn(dim, dim, 3, depthwise=True, **dd)
        self.conv1 = _conv_bn(dim, dim, 1, depthwise=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x) + x

    @torch.no_grad()
    def fuse(self) -> DepthwiseConv2d:
        w3, b3 = fuse_conv_bn(self.conv.conv.weight, None, self.conv.bn)
        w1, b1 = fuse_conv_bn(self.conv1.conv.weight, None, self.conv1.bn)
        # the identity is a 1x1 depthwise kernel of ones
        weight, bias = merge_kernels([(w3, b3, 1), (w1, b1, 1), (torch.ones_like(w1), torch.zeros_like(b1), 1)], 3)
        return conv_with_weights(self.conv.conv, weight, bias)


class LSNetAttention(nn.Module):
    """Stage-4 attention with its residual: x + proj(ReLU(softmax(q^T k * scale + bias) v)).

    q and k have `key_dim` channels per head, v has dim / num_heads; a 3x3 depthwise Conv-BN refines q.
    """

    def __init__(
            self,
            dim: int,
            key_dim: int = 16,
            num_heads: int = 4,
            resolution: Union[int, Tuple[int, int]] = 4,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype, deploy=deploy)
        if dim % num_heads:
            raise ValueError(f'attention dim {dim} must be divisible by num_heads={num_heads}')
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = dim // num_heads
        self.scale = key_dim ** -0.5
        qk_dim = num_heads * key_dim
        self.qkv = _conv_bn(dim, 2 * qk_dim + dim, **dd)
        self.dw = _conv_bn(qk_dim, qk_dim, 3, depthwise=True, **dd)
        self.attention_bias = AttentionBias2d(num_heads, resolution, device=device, dtype=dtype)
        self.act = nn.ReLU()
        self.proj = _conv_bn(dim, dim, bn_weight_init=0., **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        N = H * W
        qk_dim = self.num_heads * self.key_dim
        q, k, v = self.qkv(x).split([qk_dim, qk_dim, C], dim=1)
        q = self.dw(q).reshape(B, self.num_heads, self.key_dim, N)
        k = k.reshape(B, self.num_heads, self.key_dim, N)
        v = v.reshape(B, self.num_heads, self.val_dim, N)
        attn = (q.transpose(-2, -1) @ k) * self.scale + self.attention_bias((H, W))
        attn = attn.softmax(dim=-1)
        out = (v @ attn.transpose(-2, -1)).reshape(B, C, H, W)
        return x + self.proj(self.act(out))


class LSNetMlp(nn.Module):
    """1x1 Conv-BN -> ReLU -> 1x1 Conv-BN (its BN weight starts at 0, so each block starts as identity)."""

    def __init__(self, dim: int, hidden_dim: int, deploy: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype, deploy=deploy)
        self.fc1 = _conv_bn(dim, hidden_dim, **dd)
        self.act = nn.ReLU()
        self.fc2 = _conv_bn(hidden_dim, dim, bn_weight_init=0., **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LSNetBlock(nn.Module):
    """x <- SE(mixer(x)); x <- x + FFN(x). Every mixer carries its own identity path.

    mixer: 'repvgg' (RepVGG depthwise + SE), 'ls' (LS convolution) or 'attn' (attention).
    """

    def __init__(
            self,
            dim: int,
            mixer: str = 'repvgg',
            num_heads: int = 4,
            key_dim: int = 16,
            attn_resolution: Union[int, Tuple[int, int]] = 4,
            mlp_ratio: float = 2.,
            drop_path: float = 0.,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.se = nn.Identity()
        if mixer == 'repvgg':
            # deploy: the 3x3 + 1x1 + identity branches fused into one depthwise conv
            self.mixer = DepthwiseConv2d(dim, 3, bias=True, **dd) if deploy else RepVggDw(dim, **dd)
            self.se = SEModule(dim, rd_channels=make_divisible(dim * 0.25, 8, round_limit=0.), **dd)
        elif mixer == 'ls':
            self.mixer = LSConv(dim, deploy=deploy, **dd)
        elif mixer == 'attn':
            self.mixer = LSNetAttention(
                dim, key_dim=key_dim, num_heads=num_heads, resolution=attn_resolution, deploy=deploy, **dd)
        else:
            raise ValueError(f"LSNet mixer must be 'repvgg', 'ls' or 'attn', got '{mixer}'")
        self.mlp = LSNetMlp(dim, int(dim * mlp_ratio), deploy=deploy, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.mixer(x))
        return x + self.drop_path(self.mlp(x))


def _downsample(in_chs: int, out_chs: int, deploy: bool = False, device=None, dtype=None) -> nn.Module:
    """3x3 stride-2 depthwise Conv-BN -> 1x1 Conv-BN, between stages."""
    dd = dict(deploy=deploy, device=device, dtype=dtype)
    return nn.Sequential(_conv_bn(in_chs, in_chs, 3, stride=2, depthwise=True, **dd), _conv_bn(in_chs, out_chs, **dd))


class BnLinearHead(NormMlpClassifierHead):
    """Global pool -> BatchNorm -> dropout -> Linear (the official BN_Linear after pooling).

    The BatchNorm is a `BatchNorm2d` on the pooled (B, C, 1, 1) map: the same function and state_dict as
    the official BatchNorm1d on (B, C), and it also works unpooled (`global_pool=''`).
    `reparameterize()` folds the BatchNorm into the classifier; `deploy=True` builds the folded head.
    """

    def __init__(self, in_features: int, num_classes: int, pool_type: str = 'avg', drop_rate: float = 0.,
                 deploy: bool = False, device=None, dtype=None):
        super().__init__(in_features, num_classes, pool_type=pool_type, drop_rate=drop_rate,
                         norm_layer=nn.Identity if deploy else nn.BatchNorm2d, device=device, dtype=dtype)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if not isinstance(self.norm, nn.BatchNorm2d) or not isinstance(self.fc, (nn.Linear, nn.Conv2d)):
            return  # no classifier to fold into (num_classes=0) or already folded
        scale, shift = fuse_bn_scale(self.norm)
        weight = self.fc.weight.reshape(self.fc.weight.shape[0], -1)
        bias = (self.fc.bias if self.fc.bias is not None else weight.new_zeros(weight.shape[0])) + weight @ shift
        self.fc.weight.copy_((weight * scale[None, :]).reshape(self.fc.weight.shape))
        if self.fc.bias is None:
            self.fc.bias = nn.Parameter(bias)
        else:
            self.fc.bias.copy_(bias)
        self.norm = nn.Identity().train(self.training)


class LSNet(StagedBackbone):
    """LSNet: stride-8 Conv-BN stem, four stages (RepVGG+SE / LS conv, attention in the last), BN-Linear head.

    `img_size` only sets the token grid the stage-4 attention bias table is built for; any input size runs.
    `distillation=True` adds the `head_dist` classifier of the distilled (DeiT-style) models.
    `deploy=True` builds the re-parameterised form directly (for loading fused checkpoints);
    `timm.utils.reparameterize_model` turns a trained model into it.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            img_size: Union[int, Tuple[int, int]] = 224,
            depths: Sequence[int] = (0, 2, 8, 10),
            dims: Sequence[int] = (64, 128, 256, 384),
            stage_mixers: Sequence[str] = ('ls', 'ls', 'ls', 'attn'),
            num_heads: int = 4,
            key_dim: int = 16,
            mlp_ratio: float = 2.,
            distillation: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_eval: bool = False,
            deploy: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Number of input image channels.
            num_classes: Number of classes of the classifier (0: no classifier).
            global_pool: Global pooling type of the head ('': none).
            img_size: Input size the stage-4 attention bias table is built for (the authors' detection and
                segmentation backbones: 896, a 14x14 table, whatever the image size).
            depths: Number of blocks in each stage (a stage after the first adds a downsample before them).
            dims: Feature dimension of each stage.
            stage_mixers: Mixer of each stage's odd blocks: 'ls' (LS convolution) or 'attn' (attention);
                even blocks are RepVGG + SE.
            num_heads: Attention heads.
            key_dim: Query / key channels per attention head.
            mlp_ratio: FFN hidden width as a multiple of the stage dimension.
            distillation: Add the distillation classifier `head_dist`.
            drop_rate: Dropout rate before the classifiers.
            drop_path_rate: Stochastic depth rate of the last block (on the FFN residual).
            norm_eval: Keep every BatchNorm in eval mode when training (frozen statistics), as the authors'
                detection and segmentation backbones.
            deploy: Build the re-parameterised (fused) form.
        """
        super().__init__(in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate)
        dd = dict(device=device, dtype=dtype)
        check_stage_settings(depths=depths, dims=dims, stage_mixers=stage_mixers)
        self.distillation = distillation
        self.distilled_training = False
        self.deploy = deploy
        self.norm_eval = norm_eval

        self.stem = nn.Sequential(
            _conv_bn(in_chans, dims[0] // 4, 3, stride=2, deploy=deploy, **dd),
            nn.ReLU(),
            _conv_bn(dims[0] // 4, dims[0] // 2, 3, stride=2, deploy=deploy, **dd),
            nn.ReLU(),
            _conv_bn(dims[0] // 2, dims[0], 3, stride=2, deploy=deploy, **dd),
        )
        grid = [_down(_down(_down(s))) for s in to_2tuple(img_size)]  # token grid after the stride-8 stem
        dp_rates = drop_path_schedule(drop_path_rate, depths)
        stages = []
        for i, (dim, mixer) in enumerate(zip(dims, stage_mixers)):
            if i > 0:
                grid = [_down(s) for s in grid]
            stages.append(BackboneStage(
                downsample=_downsample(dims[i - 1], dim, deploy=deploy, **dd) if i > 0 else None,
                blocks=[
                    LSNetBlock(
                        dim, mixer='repvgg' if j % 2 == 0 else mixer, num_heads=num_heads, key_dim=key_dim,
                        attn_resolution=tuple(grid), mlp_ratio=mlp_ratio, drop_path=dp, deploy=deploy, **dd)
                    for j, dp in enumerate(dp_rates[i])
                ],
            ))
        self._set_stages(stages, dims, reductions=[8 * 2 ** i for i in range(len(dims))])
        self.norm_pre = nn.Identity()
        self.head = BnLinearHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, deploy=deploy, **dd)
        self.head_hidden_size = self.head.num_features
        self.head_dist: Optional[BnLinearHead] = None
        if distillation and num_classes > 0:
            self.head_dist = BnLinearHead(
                self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, deploy=deploy, **dd)
        for head in (self.head, self.head_dist):
            if head is not None:
                _init_classifier(head)

    @torch.jit.ignore
    def no_weight_decay(self):
        # relative position biases are not decayed (as in timm's LeViT)
        return {name for name, _ in self.named_parameters() if name.endswith('attention_biases')}

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """With distillation heads: make training-mode forward return (head, head_dist) logits."""
        self.distilled_training = enable

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False):
        super().reset_classifier(num_classes, global_pool, reset_other=reset_other)
        if not self.distillation:
            return
        if num_classes <= 0:
            self.head_dist = None
            return
        if self.head_dist is None:
            self.head_dist = BnLinearHead(
                self.num_features, num_classes, pool_type=self.head.global_pool.pool_type,
                drop_rate=self.drop_rate, **get_device_dtype(self)).train(self.training)
        # the distillation head mirrors the main one (its norm removed where the main head's is)
        reset_other = reset_other or isinstance(self.head.norm, nn.Identity)
        self.head_dist.reset(num_classes, global_pool, reset_other=reset_other, in_features=self.num_features,
                             **get_device_dtype(self))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if pre_logits or self.head_dist is None:
            return self.head(x, pre_logits=pre_logits)
        x, x_dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x, x_dist  # separate predictions, for a distillation loss
        return (x + x_dist) / 2


def _down(size: int) -> int:
    """Output size of a 3x3 stride-2 conv with padding 1 (LSNet's every downsampling)."""
    return conv_output_size(size, kernel=3, stride=2, padding=1, dilation=1)


def _init_classifier(head: BnLinearHead) -> None:
    if isinstance(head.fc, nn.Linear):
        trunc_normal_(head.fc.weight, std=.02)
        nn.init.zeros_(head.fc.bias)


# official key fragments inside a block -> ours (after `.c.` -> `.conv.`)
_BLOCK_KEY_MAP = (
    (r'^mixer\.m\.attention_biases$', 'mixer.attention_bias.attention_biases'),
    (r'^mixer\.m\.proj\.1\.', 'mixer.proj.'),
    (r'^mixer\.m\.', 'mixer.'),
    (r'^ffn\.m\.pw1\.', 'mlp.fc1.'),
    (r'^ffn\.m\.pw2\.', 'mlp.fc2.'),
)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map an official LSNet checkpoint (bare, or under `model`/`state_dict`; training or fused form) onto
    this implementation's keys.

    The computed `attention_bias_idxs` buffers are dropped; bias tables built for another token grid are
    resized bicubically on their offset grid to the model's, except that a backbone-only checkpoint's larger
    tables (a detection/segmentation backbone's) are refused with the `img_size` that fits them. A checkpoint whose form (fused or not) differs
    from the model's raises ValueError naming the `deploy` setting that fits it.
    """
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith(('patch_embed.', 'blocks')) for k in state_dict):
        state_dict = _map_official_keys(state_dict)
    _check_form(state_dict, model)
    model_sd = model.state_dict()
    backbone_only = not any(k.startswith('head.') for k in state_dict)
    for key, value in state_dict.items():
        if key.endswith('attention_biases') and key in model_sd and value.shape != model_sd[key].shape:
            if backbone_only and value.shape[1] > model_sd[key].shape[1]:
                # a detection/segmentation backbone's table, which shrinking would change: build the model for it
                raise ValueError(
                    f'these backbone weights hold attention bias tables for a {_side(value)}x{_side(value)} token grid '
                    f'(the authors\' detection/segmentation backbone), the model one for {_side(model_sd[key])}x'
                    f'{_side(model_sd[key])}: create it with img_size={64 * _side(value)} '
                    f'(lkconv.zoo.downstream.downstream_backbone_args gives the backbone\'s arguments)')
            resolution = model.get_submodule(key[:-len('.attention_biases')]).resolution
            state_dict[key] = _resize_bias_table(value, resolution)
    return state_dict


def _map_official_keys(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        if key.endswith('attention_bias_idxs'):
            continue
        key = re.sub(r'\.c\.weight$', '.conv.weight', key)
        key = re.sub(r'^patch_embed\.', 'stem.', key)
        key = re.sub(r'^(head|head_dist)\.bn\.', r'\1.norm.', key)
        key = re.sub(r'^(head|head_dist)\.l\.', r'\1.fc.', key)
        key = re.sub(r'^(head|head_dist)\.(weight|bias)$', r'\1.fc.\2', key)  # fused BN_Linear
        block = re.match(r'^blocks(\d+)\.(\d+)\.', key)
        if block:
            stage, idx, rest = int(block[1]) - 1, int(block[2]), key[block.end():]
            if stage > 0 and idx < 2:
                key = f'stages.{stage}.downsample.{idx}.{rest}'
            else:
                for pattern, repl in _BLOCK_KEY_MAP:
                    rest = re.sub(pattern, repl, rest)
                key = f'stages.{stage}.blocks.{idx - 2 if stage > 0 else idx}.{rest}'
        out[key] = value
    return out


def _check_form(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> None:
    fused = 'stem.0.weight' in state_dict  # the first Conv-BN as one conv
    if 'stem.0.conv.weight' not in state_dict and not fused:
        return  # no stem: not a whole-model checkpoint, leave the verdict to strict loading
    deploy = getattr(model, 'deploy', False)
    name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or 'lsnet_t'
    if fused and not deploy:
        raise ValueError(
            'this LSNet checkpoint is in the fused (deploy) form: each Conv-BN pair is one conv with a bias. '
            f"Create the model in that form with deploy=True, e.g. timm.create_model('{name}', deploy=True, "
            'pretrained=True, pretrained_cfg_overlay=dict(file=...))')
    if deploy and not fused:
        raise ValueError(
            'this LSNet checkpoint is in the training (unfused) form, but the model was created with deploy=True. '
            'Create it without deploy=True, load the checkpoint, then fuse with timm.utils.reparameterize_model')


def _side(table: torch.Tensor) -> int:
    return int(round(table.shape[1] ** 0.5))


def _resize_bias_table(table: torch.Tensor, resolution: Tuple[int, int]) -> torch.Tensor:
    heads, offsets = table.shape
    side = int(round(offsets ** 0.5))
    if side * side != offsets:
        raise ValueError(f'cannot resize a non-square attention bias table of {offsets} offsets')
    grid = table.float().reshape(1, heads, side, side)
    grid = F.interpolate(grid, size=tuple(resolution), mode='bicubic', align_corners=False)
    return grid.reshape(heads, -1).to(table.dtype)


def _create_lsnet(variant: str, pretrained: bool = False, **kwargs) -> LSNet:
    if 'embed_dims' in kwargs:
        # the official name of `dims`, which configs and recorded model arguments may still pass
        kwargs['dims'] = kwargs.pop('embed_dims')
    return create_backbone(LSNet, variant, pretrained, checkpoint_filter_fn, **kwargs)


def _cfg(filename: str = '', **kwargs):
    return {
        'hf_hub_id': 'jameslahm/lsnet' if filename else '',
        'hf_hub_filename': filename or None,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (4, 4), 'min_input_size': (3, 32, 32),
        # official evaluation: Resize(256, bicubic) + CenterCrop(224)
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0.conv', 'classifier': 'head.fc', 'license': 'mit',
        'paper_ids': 'arXiv:2503.23135', 'paper_name': 'LSNet: See Large, Focus Small',
        'origin_url': 'https://github.com/THU-MIG/lsnet',
        **kwargs,
    }


def _distill_cfg(filename: str):
    return _cfg(filename, classifier=('head.fc', 'head_dist.fc'))


default_cfgs = generate_default_cfgs({
    'lsnet_t.in1k': _cfg('lsnet_t.pth'),
    'lsnet_s.in1k': _cfg('lsnet_s.pth'),
    'lsnet_b.in1k': _cfg('lsnet_b.pth'),
    'lsnet_t_distill.in1k': _distill_cfg('lsnet_t_distill.pth'),
    'lsnet_s_distill.in1k': _distill_cfg('lsnet_s_distill.pth'),
    'lsnet_b_distill.in1k': _distill_cfg('lsnet_b_distill.pth'),
})

_LSNET_T = dict(depths=(0, 2, 8, 10), dims=(64, 128, 256, 384))
_LSNET_S = dict(depths=(1, 2, 8, 10), dims=(96, 192, 320, 448))
_LSNET_B = dict(depths=(4, 6, 8, 10), dims=(128, 256, 384, 512))


@register_model
def lsnet_t(pretrained: bool = False, **kwargs) -> LSNet:
    return _create_lsnet('lsnet_t', pretrained, **dict(_LSNET_T, **kwargs))


@register_model
def lsnet_s(pretrained: bool = False, **kwargs) -> LSNet:
    return _create_lsnet('lsnet_s', pretrained, **dict(_LSNET_S, **kwargs))


@register_model
def lsnet_b(pretrained: bool = False, **kwargs) -> LSNet:
    return _create_lsnet('lsnet_b', pretrained, **dict(_LSNET_B, **kwargs))


@register_model
def lsnet_t_distill(pretrained: bool = False, **kwargs) -> LSNet:
    return _create_lsnet('lsnet_t_distill', pretrained, **dict(_LSNET_T, distillation=True, **kwargs))


@register_model
def lsnet_s_distill(pretrained: bool = False, **kwargs) -> LSNet:
    return _create_lsnet('lsnet_s_distill', pretrained, **dict(_LSNET_S, distillation=True, **kwargs))


@register_model
def lsnet_b_distill(pretrained: bool = False, **kwargs) -> LSNet:
    return _create_lsnet('lsnet_b_distill', pretrained, **dict(_LSNET_B, distillation=True, **kwargs))
