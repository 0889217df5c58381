"""Optimizer parameter groups with layer-wise learning-rate decay, as the official training recipes build them.

`layer_decay_param_groups(model, weight_decay, layer_decay, rule=...)` returns a list of parameter groups
(dicts with `params`, `weight_decay`, `lr_scale` or `lr`, and `name`) for any optimizer, for a plain timm
model, its `features_only` wrapper, or a whole detector / segmentor whose backbone is one of these
(`backbone=` names it; every parameter outside it counts as head).

Layer id of a backbone parameter, by `rule`:

* `'unireplknet'` reproduces UniRepLKNet's downstream optimizer constructor
  (`UniRepLKNetLearningRateDecayOptimizerConstructor`, AILab-CVC/UniRepLKNet
  `detection/mmcv_custom/unireplknet_layer_decay_optimizer_constructor.py`, `decay_type='layer_wise'`; the
  segmentation configs name the same constructor). Its grouping is also that of the authors' ImageNet
  fine-tuning (`get_num_layer_for_convnext` in `optim_factory.py`, where num_layers is fixed at 12).
  With N = num_layers (official default 12):

      stem (official downsample_layers.0)                          0
      stage 0 blocks                                               1
      stage 1 downsample and blocks                                2
      stage 2 downsample                                           3
      stage 2 block b                                              3 + b // 3
      stage 3 downsample and blocks                                N
      everything else: output norms (official norm0..3), final
      norm, classifier, and every parameter outside the backbone   N + 1

  lr scale = layer_decay ** (N + 1 - id), times `dw_scale` for depthwise-conv parameters (official `dwconv`,
  here `conv_dw`; dw_scale is 1 in every official config). Nothing checks that stage 2's blocks fit below N:
  the official UniRepLKNet-S ImageNet-22K ADE20K configs use N = 9 with 27 blocks, which gives the last six
  blocks scales of 1 and 1/decay, and this reproduces it.
* `'timm'`: the backbone's own `group_matcher` (timm's layer decay: for lkconv's models, the stem and then
  one layer per block), lr scale = layer_decay ** (top id - id); parameters outside the backbone get the
  id after the backbone's last. It needs a backbone with `group_matcher`, which timm's `features_only`
  wrapper lacks (the unireplknet rule reads the wrapper's names directly).

Weight decay is 0 for a parameter selected by any of:
* `no_weight_decay_1d`: at most one dimension (biases, norm affine terms, layer scales). The official
  UniRepLKNet test also names `.bias` parameters, but all of those are 1-D; UniRepLKNet's GRN keeps the
  official (1, 1, 1, C) shape, so its scale and shift are decayed as the official `gamma` / `beta` are.
* `no_weight_decay`: fnmatch patterns, tried on the full name in `model` and on the backbone parameter's name
  in the plain model's layout (mmcv's `custom_keys={'norm': dict(decay_mult=0.)}` is the pattern `*norm*`);
  the backbone's own `no_weight_decay()` names are added, as timm does.
* `no_weight_decay_norm`: the parameters of normalisation layers (BatchNorm, LayerNorm, GroupNorm,
  InstanceNorm): 'all' of them (mmcv's `norm_decay_mult=0`) or only the 'backbone''s.

`DOWNSTREAM_OPTIM_SETTINGS` holds the optimizer of every official detection / segmentation config of the zoo's
families, by config name; see `downstream_optim_settings`.
"""
import fnmatch
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import FeatureDictNet, group_parameters

from ..utils import did_you_mean

__all__ = [
    'DOWNSTREAM_OPTIM_SETTINGS', 'DownstreamOptimSettings', 'LAYER_DECAY_RULES', 'downstream_optim_settings',
    'layer_decay_param_groups', 'unireplknet_layer_id',
]

LAYER_DECAY_RULES = ('timm', 'unireplknet')
NORM_SCOPES = ('none', 'backbone', 'all')
UNIREPLKNET_NUM_LAYERS = 12  # the official default (every config but the T and S-22K ADE20K ones)

_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
_DEPTHWISE = ('conv_dw', 'dwconv')  # lkconv's and the official name of UniRepLKNet's depthwise convs
_STAGE_PART = re.compile(r'stages\.(\d+)\.(?:downsample|blocks\.(\d+))\.')
_FLATTENED = re.compile(r'^(stem|stages)_')  # `stem_0.`, `stages_0.` of timm's features_only wrapper


def unireplknet_layer_id(name: str, num_layers: int = UNIREPLKNET_NUM_LAYERS) -> int:
    """The official UniRepLKNet layer id of a parameter named as in lkconv's model (`stem.*`,
    `stages.{i}.downsample.*`, `stages.{i}.blocks.{j}.*`); any other name is head (num_layers + 1)."""
    if name.startswith('stem.'):
        return 0
    match = _STAGE_PART.match(name)
    if match is None:
        return num_layers + 1
    stage = int(match[1])
    if stage > 3:
        raise ValueError(f"rule 'unireplknet' knows four stages, got parameter '{name}'")
    if match[2] is None:  # the downsample opening stage 1, 2 or 3
        return (0, 2, 3, num_layers)[stage]
    return (1, 2, 3 + int(match[2]) // 3, num_layers)[stage]


def layer_decay_param_groups(
        model: nn.Module,
        weight_decay: float,
        layer_decay: Optional[float] = None,
        rule: str = 'unireplknet',
        num_layers: Optional[int] = None,
        backbone: Union[str, nn.Module, None] = None,
        no_weight_decay: Sequence[str] = (),
        no_weight_decay_1d: bool = True,
        no_weight_decay_norm: str = 'none',
        dw_scale: float = 1.,
        lr: Optional[float] = None,
) -> List[Dict]:
    """Optimizer parameter groups with layer-wise lr decay and weight decay (see the module docstring).

    Args:
        model: The model to optimize: a timm model, its features_only wrapper, or a model holding one.
        weight_decay: Weight decay of the parameters that have one.
        layer_decay: Decay rate per layer; None: no layer decay (every lr scale 1, groups by weight decay only).
        rule: How backbone parameters map to layers: 'unireplknet' or 'timm'.
        num_layers: Rule 'unireplknet': the official `num_layers` (default 12).
        backbone: The backbone inside `model`, as a module or its name ('backbone', 'backbone.body');
            None: `model` is the backbone.
        no_weight_decay: fnmatch patterns of parameter names without weight decay.
        no_weight_decay_1d: No weight decay for parameters of at most one dimension.
        no_weight_decay_norm: No weight decay for normalisation layers: 'none', 'backbone' or 'all'.
        dw_scale: Extra lr factor of the depthwise-conv parameters (`conv_dw` / `dwconv` in the name).
        lr: The base learning rate: each group gets `lr` times its scale as its own 'lr' instead of an
            'lr_scale' (for schedulers that scale each group's initial lr, as torch's do). Leave it None
            with timm's schedulers, which multiply the lr by each group's 'lr_scale'.

    Frozen parameters (requires_grad False) are left out. Groups are named as the official constructor names
    them: 'layer_{id}_decay' / 'layer_{id}_no_decay' (plus '_dwconv' with a dw_scale other than 1), or
    'decay' / 'no_decay' without layer decay.
    """
    if rule not in LAYER_DECAY_RULES:
        raise ValueError(f"unknown layer decay rule '{rule}'{did_you_mean(rule, LAYER_DECAY_RULES)} "
                         f"(rules: {', '.join(LAYER_DECAY_RULES)})")
    if no_weight_decay_norm not in NORM_SCOPES:
        raise ValueError(f"no_weight_decay_norm must be one of {', '.join(NORM_SCOPES)}, got '{no_weight_decay_norm}'")
    if layer_decay is not None and not layer_decay > 0:
        raise ValueError(f'layer_decay must be positive, got {layer_decay}')
    if num_layers is not None and rule != 'unireplknet':
        raise ValueError(f"num_layers is a setting of rule 'unireplknet', not of rule '{rule}'")
    if num_layers is not None and num_layers < 1:
        raise ValueError(f'num_layers must be at least 1, got {num_layers}')
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    hint = '; a backbone inside the model is named by backbone=' if backbone is None else ''
    prefix, backbone = _find_backbone(model, backbone)
    entries = _trainable_parameters(model, prefix, backbone)
    patterns = list(no_weight_decay) + sorted(getattr(backbone, 'no_weight_decay', set)())

    if layer_decay is None:
        layer_ids, top = {}, 0
    elif rule == 'unireplknet':
        num_layers = UNIREPLKNET_NUM_LAYERS if num_layers is None else num_layers
        layer_ids = {name: unireplknet_layer_id(own, num_layers) if own is not None else num_layers + 1
                     for name, own, _, _ in entries}
        if not any(own is not None and layer_ids[name] <= num_layers for name, own, _, _ in entries):
            raise ValueError(f"rule 'unireplknet' found no stem or stage parameters (stem.*, stages.<i>.*) in "
                             f"{repr(prefix) if prefix else 'the model'}{hint}")
        top = num_layers + 1  # the official scale counts from the head's id, whether or not there is a head
    else:
        own_ids = _timm_layer_ids(backbone)
        head_id = max(own_ids.values(), default=-1) + 1
        layer_ids = {name: own_ids.get(own, head_id) if own is not None else head_id for name, own, _, _ in entries}
        top = max(layer_ids.values(), default=0)

    groups: Dict[str, Dict] = {}
    for name, own, param, module in entries:
        named = any(fnmatch.fnmatch(name, p) or (own is not None and fnmatch.fnmatch(own, p)) for p in patterns)
        norm = isinstance(module, _NORM_LAYERS) and (
            no_weight_decay_norm == 'all' or (no_weight_decay_norm == 'backbone' and own is not None))
        decays = not ((no_weight_decay_1d and param.ndim <= 1) or named or norm)
        group_name = 'decay' if decays else 'no_decay'
        scale = 1.
        if layer_decay is not None:
            group_name = f'layer_{layer_ids[name]}_{group_name}'
            scale = layer_decay ** (top - layer_ids[name])
        if dw_scale != 1 and any(part in name for part in _DEPTHWISE):
            group_name, scale = f'{group_name}_dwconv', scale * dw_scale
        if group_name not in groups:
            group = groups[group_name] = dict(name=group_name, params=[], weight_decay=weight_decay if decays else 0.)
            if lr is None:
                group['lr_scale'] = scale
            else:
                group['lr'] = lr * scale
        groups[group_name]['params'].append(param)
    return list(groups.values())


def _trainable_parameters(model: nn.Module, prefix: str, backbone: nn.Module) -> List[Tuple]:
    """(full name, name in the plain backbone model's layout or None outside the backbone, parameter, the
    module holding it) for every parameter that trains, shared ones once."""
    entries, seen = [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(prefix=module_name, recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                inside = not prefix or name.startswith(prefix + '.')
                own = _plain_model_name(backbone, name[len(prefix) + 1:] if prefix else name) if inside else None
                entries.append((name, own, param, module))
    return entries


def _find_backbone(model: nn.Module, backbone: Union[str, nn.Module, None]) -> Tuple[str, nn.Module]:
    """The backbone's name in `model` ('' for the model itself) and the backbone."""
    if backbone is None:
        return '', model
    if isinstance(backbone, str):
        try:
            return backbone, model.get_submodule(backbone)
        except AttributeError:
            names = [name for name, _ in model.named_modules() if name and name.count('.') < 2]
            raise ValueError(f"the model has no submodule '{backbone}'{did_you_mean(backbone, names)}") from None
    for name, module in model.named_modules():
        if module is backbone:
            return name, module
    raise ValueError('backbone is not a submodule of the model')


def _plain_model_name(backbone: nn.Module, name: str) -> str:
    """A backbone parameter's name as the plain timm model names it. timm's features_only wrapper flattens the
    model's top-level sequences (`stages_0.` for `stages.0.`, `stem_bn.` for `stem.bn.`); its
    forward_intermediates-based one holds the model as `model`."""
    if isinstance(backbone, FeatureDictNet):
        return _FLATTENED.sub(r'\1.', name, count=1)
    if name.startswith('model.') and hasattr(getattr(backbone, 'model', None), 'group_matcher'):
        return name[len('model.'):]
    return name


def _timm_layer_ids(backbone: nn.Module) -> Dict[str, int]:
    """timm's layer id of every parameter of the backbone, by its name in the plain model's layout."""
    model = backbone if hasattr(backbone, 'group_matcher') else getattr(backbone, 'model', None)
    if not hasattr(model, 'group_matcher'):
        raise ValueError(f"rule 'timm' needs the backbone's group_matcher(), which {type(backbone).__name__} does "
                         f"not have (a features_only wrapper has none); use rule 'unireplknet' for UniRepLKNet, "
                         f"or a plain timm model")
    return group_parameters(model, model.group_matcher(coarse=False), reverse=True)


# ---------------------------------------------------------------------------------------- official settings

@dataclass(frozen=True)
class DownstreamOptimSettings:
    """The optimizer of an official detection / segmentation config: AdamW (betas 0.9, 0.999) with lr and
    weight decay over the parameter groups `param_groups` builds (see `layer_decay_param_groups`)."""
    lr: float
    weight_decay: float
    layer_decay: Optional[float] = None
    rule: str = 'timm'
    num_layers: Optional[int] = None
    no_weight_decay: Tuple[str, ...] = ()
    no_weight_decay_1d: bool = False
    no_weight_decay_norm: str = 'none'

    def param_groups(self, model: nn.Module, backbone: Union[str, nn.Module, None] = None,
                     lr: Optional[float] = None) -> List[Dict]:
        return layer_decay_param_groups(
            model, self.weight_decay, self.layer_decay, rule=self.rule, num_layers=self.num_layers,
            backbone=backbone, no_weight_decay=self.no_weight_decay, no_weight_decay_1d=self.no_weight_decay_1d,
            no_weight_decay_norm=self.no_weight_decay_norm, lr=lr)

    def create_optimizer(self, model: nn.Module, backbone: Union[str, nn.Module, None] = None) -> torch.optim.AdamW:
        """AdamW over `param_groups`, each group with its own scaled lr (for any lr scheduler)."""
        return torch.optim.AdamW(self.param_groups(model, backbone, lr=self.lr), lr=self.lr, betas=(0.9, 0.999),
                                 weight_decay=self.weight_decay)


def _unireplknet(decay: float, num_layers: int = UNIREPLKNET_NUM_LAYERS) -> DownstreamOptimSettings:
    return DownstreamOptimSettings(1e-4, 0.05, decay, 'unireplknet', num_layers, no_weight_decay_1d=True)


# VAN-Segmentation UperNet: custom_keys absolute_pos_embed / relative_position_bias_table / norm, decay_mult 0.
# In the official backbone 'norm' names exactly its normalisation layers; lkconv's names its patch-embed
# BatchNorms `bn`, hence the backbone's norm layers by type, and the names for the heads.
_VAN_UPERNET = DownstreamOptimSettings(
    6e-5, 0.01, no_weight_decay=('*absolute_pos_embed*', '*relative_position_bias_table*', '*norm*'),
    no_weight_decay_norm='backbone')
_VAN_SEMANTIC_FPN = DownstreamOptimSettings(2e-4, 1e-4)
_LSNET_DETECTION = DownstreamOptimSettings(1e-4, 0.05, no_weight_decay=('*attention_biases*',))
_LSNET_SEMANTIC_FPN = DownstreamOptimSettings(2e-4, 1e-4)
# RepLKNet-pytorch: paramwise_cfg=dict(norm_decay_mult=0), no layer decay
_REPLKNET_UPERNET = DownstreamOptimSettings(2e-4, 0.05, no_weight_decay_norm='all')
_REPLKNET_CASCADE = DownstreamOptimSettings(4e-4, 0.05, no_weight_decay_norm='all')

DOWNSTREAM_OPTIM_SETTINGS: Dict[str, DownstreamOptimSettings] = {
    # AILab-CVC/UniRepLKNet detection/configs/coco, segmentation/configs/ade20k
    'casc_mask_rcnn_unireplknet_t_in1k_fpn_3x_coco': _unireplknet(0.8),
    'casc_mask_rcnn_unireplknet_s_in1k_fpn_3x_coco': _unireplknet(0.8),
    'casc_mask_rcnn_unireplknet_s_in22k_fpn_3x_coco': _unireplknet(0.8),
    'casc_mask_rcnn_unireplknet_b_in22k_fpn_3x_coco': _unireplknet(0.8),
    'casc_mask_rcnn_unireplknet_l_in22k_fpn_3x_coco': _unireplknet(0.7),
    'casc_mask_rcnn_unireplknet_xl_in22k_fpn_3x_coco': _unireplknet(0.7),
    'upernet_unireplknet_t_512_160k_ade20k': _unireplknet(1.0, 9),
    'upernet_unireplknet_s_512_160k_ade20k': _unireplknet(0.9),
    'upernet_unireplknet_s_in22k_512_160k_ade20k': _unireplknet(0.9, 9),
    'upernet_unireplknet_s_in22k_640_160k_ade20k': _unireplknet(0.9, 9),
    'upernet_unireplknet_b_in22k_640_160k_ade20k': _unireplknet(0.9),
    'upernet_unireplknet_l_in22k_640_160k_ade20k': _unireplknet(0.85),
    # Visual-Attention-Network/VAN-Segmentation configs/upernet, configs/sem_fpn
    **{f'upernet_van_b{i}_512x512_160k_ade20k': _VAN_UPERNET for i in range(5)},
    **{f'upernet_van_b{i}_512x512_160k_ade20k_22k': _VAN_UPERNET for i in (4, 5, 6)},
    **{f'fpn_van_b{i}_ade20k_40k': _VAN_SEMANTIC_FPN for i in range(5)},
    # THU-MIG/lsnet detection/configs, segmentation/configs/sem_fpn
    **{f'{head}_lsnet_{v}_fpn_1x_coco': _LSNET_DETECTION for head in ('retinanet', 'mask_rcnn') for v in 'tsb'},
    **{f'fpn_lsnet_{v}_ade20k_40k': _LSNET_SEMANTIC_FPN for v in 'tsb'},
    # DingXiaoH/RepLKNet-pytorch segmentation/configs, detection/configs
    'RepLKNet-31B_1Kpretrain_upernet_160k_ade20k_512': _REPLKNET_UPERNET,
    'RepLKNet-31B_22Kpretrain_upernet_160k_ade20k_640': _REPLKNET_UPERNET,
    'RepLKNet-31L_22Kpretrain_upernet_160k_ade20k_640': _REPLKNET_UPERNET,
    'RepLKNet-XL_MegData73M_upernet_160k_ade20k_640': _REPLKNET_UPERNET,
    'RepLKNet-31B_1Kpretrain_upernet_80k_cityscapes_769': _REPLKNET_UPERNET,
    'RepLKNet-31B_1Kpretrain_cascade_mask_rcnn_3x_coco': _REPLKNET_CASCADE,
    'RepLKNet-31B_22Kpretrain_cascade_mask_rcnn_3x_coco': _REPLKNET_CASCADE,
    'RepLKNet-31L_cascade_mask_rcnn_3x_coco': _REPLKNET_CASCADE,
    'RepLKNet-XL_MegData73Mpretrain_cascade_mask_rcnn_3x_coco': _REPLKNET_CASCADE,
}


def downstream_optim_settings(config: str) -> DownstreamOptimSettings:
    """The optimizer settings of an official detection / segmentation config, by its file name (with or
    without `.py`), e.g. 'upernet_unireplknet_t_512_160k_ade20k'."""
    name = config[:-len('.py')] if config.endswith('.py') else config
    if name not in DOWNSTREAM_OPTIM_SETTINGS:
        raise ValueError(f"no official config '{config}'{did_you_mean(name, DOWNSTREAM_OPTIM_SETTINGS)}")
    return DOWNSTREAM_OPTIM_SETTINGS[name]
