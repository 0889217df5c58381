"""Layer-wise lr decay: the official UniRepLKNet rule reproduced parameter by parameter on the names of the
official downstream checkpoint, the other official downstream settings, and the training-config path."""
import re
from typing import Dict, Tuple

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from timm.models import FeatureListNet
from timm.optim import create_optimizer_v2, param_groups_layer_decay
from timm.scheduler import create_scheduler_v2

from lkconv.models import (
    DOWNSTREAM_OPTIM_SETTINGS, downstream_optim_settings, layer_decay_param_groups, unireplknet, van,
)
from lkconv.training.config import ConfigError, load_config
from lkconv.training.train import create_train_model, create_train_optimizer
from helpers import TINY_UNIREPLKNET

BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


# ------------------------------------------------------------------- the official rule, transcribed
# AILab-CVC/UniRepLKNet detection/mmcv_custom/unireplknet_layer_decay_optimizer_constructor.py:
# `get_layer_id` and `UniRepLKNetLearningRateDecayOptimizerConstructor.add_params` (decay_type 'layer_wise'),
# applied to the names of the whole mm model (`backbone.` + the official backbone's keys, heads).

def official_layer_id(name: str, max_layer_id: int) -> int:
    parts = name.split('.')
    if name.startswith('backbone.downsample_layers'):
        return {0: 0, 1: 2, 2: 3, 3: max_layer_id}[int(parts[2])]
    if name.startswith('backbone.stages'):
        stage, block = int(parts[2]), int(parts[3])
        return {0: 1, 1: 2, 2: 3 + block // 3, 3: max_layer_id}[stage]
    return max_layer_id + 1


def official_groups(shapes: Dict[str, torch.Size], decay_rate: float, num_layers: int, weight_decay: float,
                    dw_scale: float = 1.) -> Dict[str, Tuple[str, float, float]]:
    """name -> (group name, lr scale, weight decay)."""
    groups = {}
    for name, shape in shapes.items():
        no_decay = len(shape) == 1 or name.endswith('.bias')
        layer_id = official_layer_id(name, num_layers)
        group = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        scale = decay_rate ** (num_layers + 2 - layer_id - 1)
        if dw_scale != 1 and 'dwconv' in name:
            group, scale = f'{group}_dwconv', scale * dw_scale
        groups[name] = (group, scale, 0. if no_decay else weight_decay)
    return groups


# ------------------------------------------------------------------------------------------- helpers

def parameter_tree(shapes: Dict[str, torch.Size]) -> nn.Module:
    """A module holding a (meta) parameter of each shape under each dotted name."""
    root = nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split('.')
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(torch.empty(shape, device='meta')))
    return root


def features_only(name: str) -> nn.Module:
    return timm.create_model(name, features_only=True, device='meta')


def with_feature_norms(backbone: nn.Module) -> nn.Module:
    """The downstream backbone's four output LayerNorms as `feature_norms` (official `norm0..3`)."""
    if 'feature_norms' not in dict(backbone.named_children()):
        backbone.add_module('feature_norms', nn.ModuleList(
            LayerNorm2d(c, eps=1e-6, device='meta') for c in backbone.feature_info.channels()))
    return backbone


def per_parameter(model: nn.Module, groups) -> Dict[str, Tuple[str, float, float]]:
    """name -> (group name, lr scale, weight decay) of every parameter of `model` in `groups`."""
    by_param = {id(p): (g['name'], g['lr_scale'], g['weight_decay']) for g in groups for p in g['params']}
    assert sum(len(g['params']) for g in groups) == len(by_param)  # each parameter in one group
    return {name: by_param[id(p)] for name, p in model.named_parameters()}


def mm_segmentor(parity_dir, family: str, filter_fn, name: str):
    """The official downstream checkpoint's parameter names and shapes, our segmentor holding the
    features_only backbone and heads of the same names, and official name -> our name."""
    checkpoint = torch.load(parity_dir / f'{family}_mm_backbone.pt', weights_only=True)['checkpoint']
    shapes = {k: v.shape for k, v in checkpoint['state_dict'].items() if not k.endswith(BUFFERS)}
    backbone_weights = {k[len('backbone.'):]: v for k, v in checkpoint['state_dict'].items()
                        if k.startswith('backbone.') and k in shapes}
    official_of = {id(v): k for k, v in backbone_weights.items()}  # the filter renames, the tensors stay
    ours = {}
    for key, value in filter_fn(backbone_weights, timm.create_model(name, device='meta')).items():
        key = re.sub(r'^norm(\d)\.', r'feature_norms.\1.', key)  # the downstream output norms
        key = re.sub(r'^(stem|stages)\.', r'\1_', key)  # features_only flattens the top-level sequences
        ours[f'backbone.{official_of[id(value)]}'] = f'backbone.{key}'
    model = nn.Module()
    model.backbone = features_only(name)
    for head in ('decode_head', 'auxiliary_head'):
        model.add_module(head, getattr(parameter_tree({k: v for k, v in shapes.items() if k.startswith(head)}), head))
        ours.update({k: k for k in shapes if k.startswith(head)})
    return shapes, model, ours


@pytest.fixture(scope='module')
def unireplknet_segmentor(parity_dir):
    shapes, model, ours = mm_segmentor(parity_dir, 'unireplknet_a', unireplknet.checkpoint_filter_fn, 'unireplknet_a')
    with_feature_norms(model.backbone)
    return shapes, model, ours


# -------------------------------------------------------------------------- UniRepLKNet, official rule

@pytest.mark.parametrize('decay_rate, num_layers, dw_scale', [(0.8, 12, 1.), (0.9, 9, 1.), (1.0, 9, 1.),
                                                              (0.7, 12, 0.5)])
def test_unireplknet_groups_are_the_official_constructors(unireplknet_segmentor, decay_rate, num_layers, dw_scale):
    shapes, model, ours = unireplknet_segmentor
    # the correspondence covers every parameter of both models, one to one
    assert sorted(ours.values()) == sorted(name for name, _ in model.named_parameters())
    groups = layer_decay_param_groups(model, 0.05, decay_rate, rule='unireplknet', num_layers=num_layers,
                                      backbone='backbone', dw_scale=dw_scale)
    got = per_parameter(model, groups)
    expected = official_groups(shapes, decay_rate, num_layers, 0.05, dw_scale)
    assert {name: got[ours[name]] for name in shapes} == expected
    # what matters most: the output norms and heads at scale 1, GRN's 4-D shift (official `beta`) decayed
    assert got['backbone.feature_norms.0.weight'][1:] == (1.0, 0.)
    assert got['backbone.stages_0.blocks.0.mlp.grn.bias'][2] == 0.05


def test_unireplknet_layer_ids_of_a_deep_variant_in_every_form():
    """UniRepLKNet-T (3, 3, 18, 3): the plain model (as the authors' ImageNet fine-tuning groups it), its
    features_only wrapper and a detector holding that, with T's detection and segmentation num_layers."""
    def official_name(name: str) -> str:  # lkconv's layout -> the official one, as far as layer ids read it
        name = re.sub(r'^stem\.', 'downsample_layers.0.', name)
        name = re.sub(r'^stages\.(\d+)\.downsample\.', r'downsample_layers.\1.', name)
        return 'backbone.' + re.sub(r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.', name)

    model = timm.create_model('unireplknet_t', device='meta')
    features = FeatureListNet(model, out_indices=(0, 1, 2, 3), flatten_sequential=True)  # shares the parameters
    detector = nn.Module()
    detector.backbone = nn.Module()
    detector.backbone.body = features
    detector.backbone.fpn = nn.Conv2d(640, 256, 1, device='meta')
    detector.roi_heads = nn.Linear(256, 91, device='meta')
    for num_layers in (12, 9):
        groups = layer_decay_param_groups(model, 0.05, 0.8, num_layers=num_layers)
        got = per_parameter(model, groups)
        for name, (group, scale, _) in got.items():
            layer_id = official_layer_id(official_name(name), num_layers)
            assert (group.split('_')[1], scale) == (str(layer_id), 0.8 ** (num_layers + 1 - layer_id)), name
        assert got['stages.2.blocks.17.conv_dw.weight'][0] == 'layer_8_decay'
        assert got['stages.3.downsample.0.weight'][0] == f'layer_{num_layers}_decay'
        assert got['head.fc.weight'][0] == f'layer_{num_layers + 1}_decay'

        by_param = {id(p): got[name] for name, p in model.named_parameters()}
        for backbone, root in ((None, features), ('backbone.body', detector), (features, detector)):
            wrapped = per_parameter(root, layer_decay_param_groups(root, 0.05, 0.8, num_layers=num_layers,
                                                                   backbone=backbone))
            for name, p in root.named_parameters():
                head = (f'layer_{num_layers + 1}_{"decay" if p.ndim > 1 else "no_decay"}', 1.0, 0.05 * (p.ndim > 1))
                assert wrapped[name] == by_param.get(id(p), head), name


def test_unireplknet_rule_needs_the_backbone_and_reports_it():
    detector = nn.Module()
    detector.backbone = features_only('unireplknet_a')
    with pytest.raises(ValueError, match=r"no stem or stage parameters \(stem.\*, stages.<i>.\*\) in the model; "
                                         r"a backbone inside the model is named by backbone=$"):
        layer_decay_param_groups(detector, 0.05, 0.8)
    with pytest.raises(ValueError, match=r"no submodule 'backbone.bdy'; did you mean: backbone"):
        layer_decay_param_groups(detector, 0.05, 0.8, backbone='backbone.bdy')
    with pytest.raises(ValueError, match=r"unknown layer decay rule 'unireplk'; did you mean: unireplknet"):
        layer_decay_param_groups(detector, 0.05, 0.8, rule='unireplk')


# ------------------------------------------------------------------------------- timm rule, no decay

def test_timm_rule_is_timms_layer_decay():
    model = timm.create_model('van_b0', device='meta')
    theirs = per_parameter(model, [dict(g, name='') for g in param_groups_layer_decay(model, 0.05, layer_decay=0.7)])
    ours = per_parameter(model, layer_decay_param_groups(model, 0.05, 0.7, rule='timm'))
    assert {n: v[1:] for n, v in ours.items()} == {n: v[1:] for n, v in theirs.items()}
    assert len({v[1] for v in ours.values()}) > 5
    with pytest.raises(ValueError, match=r"rule 'timm' needs the backbone's group_matcher\(\)"):
        layer_decay_param_groups(features_only('van_b0'), 0.05, 0.7, rule='timm')


def test_without_layer_decay_groups_split_by_weight_decay_only():
    groups = layer_decay_param_groups(features_only('van_b0'), 0.05, rule='timm')
    assert sorted((g['name'], g['lr_scale'], g['weight_decay']) for g in groups) == \
        [('decay', 1.0, 0.05), ('no_decay', 1.0, 0.)]


# --------------------------------------------------------------------- official downstream settings

def test_van_upernet_weight_decay_is_the_official_one(parity_dir):
    shapes, model, ours = mm_segmentor(parity_dir, 'van_b0', van.checkpoint_filter_fn, 'van_b0')
    assert sorted(ours.values()) == sorted(name for name, _ in model.named_parameters())
    model.neck = nn.Sequential(nn.Conv2d(4, 4, 1, device='meta'), nn.BatchNorm2d(4, device='meta'))  # as mmcv's `bn`
    settings = downstream_optim_settings('upernet_van_b0_512x512_160k_ade20k.py')
    got = per_parameter(model, settings.param_groups(model, backbone='backbone'))
    # mmcv custom_keys: a key that is a substring of the full name sets decay_mult 0; all else decays
    keys = ('absolute_pos_embed', 'relative_position_bias_table', 'norm')
    expected = {name: 0. if any(k in name for k in keys) else 0.01 for name in [*shapes, 'neck.1.weight']}
    assert {name: got[ours.get(name, name)][2] for name in expected} == expected
    assert got['backbone.stem_bn.weight'][2] == 0.  # official `patch_embed1.norm`


def test_norm_and_name_rules_of_lsnet_and_replknet():
    head = nn.Sequential(nn.Conv2d(8, 8, 3, device='meta'), nn.BatchNorm2d(8, device='meta'))
    for config, backbone_name in (('mask_rcnn_lsnet_t_fpn_1x_coco', 'lsnet_t'),
                                  ('RepLKNet-31B_1Kpretrain_upernet_160k_ade20k_512', 'replknet_31b')):
        model = nn.Sequential()
        model.add_module('backbone', features_only(backbone_name))
        model.add_module('head', head)
        settings = DOWNSTREAM_OPTIM_SETTINGS[config]
        got = per_parameter(model, settings.param_groups(model, backbone='backbone'))
        modules = dict(model.named_modules())
        no_decay = [name for name in got if (name.endswith('attention_biases') if 'lsnet' in config else
                                             isinstance(modules[name.rpartition('.')[0]], nn.BatchNorm2d))]
        assert no_decay and 'head.1.weight' in no_decay or 'lsnet' in config
        for name, (_, scale, wd) in got.items():
            assert (scale, wd) == (1.0, 0. if name in no_decay else settings.weight_decay), (config, name)


def test_downstream_settings_build_an_adamw_with_scaled_lrs(unireplknet_segmentor):
    _, model, _ = unireplknet_segmentor
    settings = downstream_optim_settings('upernet_unireplknet_b_in22k_640_160k_ade20k')
    assert (settings.lr, settings.weight_decay, settings.layer_decay, settings.num_layers) == (1e-4, 0.05, 0.9, 12)
    optimizer = settings.create_optimizer(model, backbone='backbone')
    by_name = {g['name']: g for g in optimizer.param_groups}
    assert by_name['layer_0_decay']['lr'] == pytest.approx(1e-4 * 0.9 ** 13)
    assert by_name['layer_13_no_decay']['lr'] == pytest.approx(1e-4)
    assert 'lr_scale' not in by_name['layer_0_decay']  # a timm scheduler would apply it a second time
    assert optimizer.defaults['betas'] == (0.9, 0.999)
    assert downstream_optim_settings('upernet_unireplknet_s_in22k_640_160k_ade20k').num_layers == 9
    with pytest.raises(ValueError, match=r"no official config 'upernet_unireplknet_t_512_160k_ade'; did you mean: "
                                         r"upernet_unireplknet_t_512_160k_ade20k"):
        downstream_optim_settings('upernet_unireplknet_t_512_160k_ade')


# ------------------------------------------------------------------------------------ training config

def tiny_config(*overrides: str):
    return load_config(None, [*TINY_UNIREPLKNET, 'data.dataset=lkconv/digits', *overrides])


def test_config_selects_the_official_rule_and_the_scheduler_applies_it():
    config = tiny_config('optim.layer_decay=0.8', 'optim.layer_decay_rule=unireplknet',
                         'optim.layer_decay_num_layers=9')
    model = create_train_model(config)
    optimizer = create_train_optimizer(config, model, lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group['params']:
            name = names[id(p)]
            layer_id = 0 if name.startswith('stem.') else {
                'stages.0': 1, 'stages.1': 2, 'stages.2': 3, 'stages.3': 9}.get(name[:8], 10)
            assert group['lr_scale'] == 0.8 ** (10 - layer_id), name
            assert group['weight_decay'] == (0.05 if p.ndim > 1 else 0.), name
    assert len({g['lr_scale'] for g in optimizer.param_groups}) == 6
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=10, warmup_epochs=0, min_lr=0)
    scheduler.step(5)  # half way: half the lr, times each group's scale
    for group in optimizer.param_groups:
        assert group['lr'] == pytest.approx(5e-4 * group['lr_scale'])


def test_config_default_rule_is_timms_layer_decay():
    config = tiny_config('optim.layer_decay=0.8')
    model = create_train_model(config)
    ours = per_parameter(model, [dict(g, name='') for g in create_train_optimizer(config, model, 1e-3).param_groups])
    timms = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    assert ours == per_parameter(model, [dict(g, name='') for g in timms.param_groups])


@pytest.mark.parametrize('overrides, problem', [
    (['optim.layer_decay_rule=unireplknet'],
     "command line: optim.layer_decay_rule: 'unireplknet' needs optim.layer_decay (the decay rate, e.g. 0.8)"),
    (['optim.layer_decay=0.8', 'optim.layer_decay_num_layers=9'],
     "command line: optim.layer_decay_num_layers: set, but it is a setting of optim.layer_decay_rule "
     "'unireplknet', not 'timm'"),
    (['optim.layer_decay=0.8', 'optim.layer_decay_rule=unireplknet', 'optim.layer_decay_num_layers=0'],
     'command line: optim.layer_decay_num_layers: must be at least 1 (or null: 12)'),
    (['optim.layer_decay=0'], 'command line: optim.layer_decay: must be positive, got 0'),
    (['optim.layer_decay_rule=official'],
     "command line: optim.layer_decay_rule: expected one of 'timm', 'unireplknet', got 'official'"),
])
def test_config_reports_bad_layer_decay_settings_in_one_line(overrides, problem):
    with pytest.raises(ConfigError) as error:
        tiny_config(*overrides)
    assert error.value.problems == [problem]


def test_official_rule_on_a_model_without_its_layout_is_a_config_problem():
    config = load_config(None, ['model.name=resnet10t', 'data.dataset=lkconv/digits', 'optim.layer_decay=0.8',
                                'optim.layer_decay_rule=unireplknet'])
    with pytest.raises(ConfigError) as error:
        create_train_optimizer(config, create_train_model(config), 1e-3)
    assert error.value.problems == ["command line: optim.layer_decay_rule: resnet10t: rule 'unireplknet' found no "
                                    "stem or stage parameters (stem.*, stages.<i>.*) in the model"]
