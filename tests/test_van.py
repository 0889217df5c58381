"""VAN: parity with the official implementation, both published checkpoint layouts, sizes, cfgs, LKA."""
import argparse

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config

from lkconv.layers import DepthwiseConv2d, LargeKernelAttention
from lkconv.models.van import checkpoint_filter_fn
from helpers import models_of
from parity import create_from_official, load_fixture, rel_error

TOL = 1e-4


@pytest.fixture(scope='module')
def fixture(parity_dir):
    return load_fixture(parity_dir / 'van_b0.pt')


@pytest.fixture(scope='module')
def official_model(fixture, tmp_path_factory):
    return create_from_official('van_b0', fixture['state_dict'], tmp_path_factory.mktemp('van')).eval()


@pytest.fixture(scope='module')
def reference_logits(official_model, fixture):
    with torch.no_grad():
        return official_model(fixture['input'])


def _to_openmmlab(state_dict):
    """The key conversion of mmpretrain's van2mmpretrain.py, applied to an official state dict."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith('head.'):
            out['head.fc.' + key[len('head.'):]] = value
            continue
        if key.startswith('patch_embed'):
            key = key.replace('.proj.', '.projection.')
        elif key.startswith('block'):
            key = key.replace('block', 'blocks', 1)
            key = key.replace('spatial_gating_unit.conv0.', 'spatial_gating_unit.DW_conv.')
            key = key.replace('spatial_gating_unit.conv_spatial.', 'spatial_gating_unit.DW_D_conv.')
            key = key.replace('mlp.dwconv.dwconv.', 'mlp.dwconv.')
        out['backbone.' + key] = value
    return out


# -------------------------------------------------------------------------------------------- parity
def test_parity_official_checkpoint(official_model, fixture, reference_logits):
    with torch.no_grad():
        _, taps = official_model.forward_intermediates(fixture['input'])
    errors = {'logits': rel_error(reference_logits, fixture['logits'])}
    for i, (ours, ref) in enumerate(zip(taps, fixture['stage_features'])):
        errors[f'stage{i}'] = rel_error(ours, ref)
    print('van_b0 parity (max relative error):', errors)
    assert len(taps) == len(fixture['stage_features']) == 4
    assert all(err <= TOL for err in errors.values()), errors


def test_features_only_are_post_norm_stage_outputs(fixture, tmp_path):
    # the default (module-list) wrapper and the getter wrapper both see the stage-end LayerNorm
    for feature_cls in ('list', 'getter'):
        model = create_from_official(
            'van_b0', fixture['state_dict'], tmp_path, features_only=True, feature_cls=feature_cls).eval()
        assert model.feature_info.reduction() == [4, 8, 16, 32]
        with torch.no_grad():
            feats = model(fixture['input'])
        assert len(feats) == 4
        for ours, ref in zip(feats, fixture['stage_features']):
            assert rel_error(ours, ref) <= TOL


def test_authors_pth_tar_layout(fixture, reference_logits, tmp_path):
    """A timm-train CheckpointSaver file: weights under 'state_dict', next to epoch/arch/args/optimizer."""
    checkpoint = {
        'epoch': 299, 'arch': 'van_b0', 'version': 2, 'optimizer': {'state': {}, 'param_groups': []},
        'args': argparse.Namespace(model='van_b0', drop_path=0.1), 'metric': 75.4,
        'state_dict': {'module.' + k: v for k, v in fixture['state_dict'].items()},
    }
    # the Hugging Face Hub / URL path hands the filter the whole checkpoint
    filtered = checkpoint_filter_fn(checkpoint, None)
    model = timm.create_model('van_b0').eval()
    assert set(filtered) == set(model.state_dict())
    model.load_state_dict(filtered, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(fixture['input']), reference_logits)
    # a local .pth.tar goes through timm's file loader (strict)
    file = tmp_path / 'van_tiny_754.pth.tar'
    torch.save(checkpoint, file)
    model = timm.create_model('van_b0', pretrained=True, pretrained_cfg_overlay=dict(file=str(file))).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(fixture['input']), reference_logits)


@pytest.mark.parametrize('wrapped', [False, True])
def test_openmmlab_layout(fixture, reference_logits, tmp_path, wrapped):
    state_dict = _to_openmmlab(fixture['state_dict'])
    assert any(k.startswith('backbone.blocks1.0.attn.spatial_gating_unit.DW_D_conv.') for k in state_dict)
    if wrapped:
        state_dict = {'meta': {'mmcls_version': '0.23.0'}, 'state_dict': state_dict}
    file = tmp_path / 'van-tiny_8xb128_in1k.pth'
    torch.save(state_dict, file)
    model = timm.create_model('van_b0', pretrained=True, pretrained_cfg_overlay=dict(file=str(file))).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(fixture['input']), reference_logits)


def test_incomplete_checkpoint_fails_strictly(fixture, tmp_path):
    state_dict = dict(fixture['state_dict'])
    del state_dict['block2.1.attn.spatial_gating_unit.conv_spatial.weight']
    with pytest.raises(RuntimeError, match='stages.1.blocks.1.attn.lka.conv_dilated.weight'):
        create_from_official('van_b0', state_dict, tmp_path)


def test_filter_keeps_own_layout(official_model):
    state_dict = official_model.state_dict()
    assert set(checkpoint_filter_fn(state_dict, official_model)) == set(state_dict)


# ------------------------------------------------------------------------------------ sizes, cfgs
def test_variant_structure():
    b6 = timm.create_model('van_b6', device='meta')
    assert [s.norm.normalized_shape[0] for s in b6.stages] == [96, 192, 384, 768]
    assert [len(s.blocks) for s in b6.stages] == [6, 6, 90, 6]
    assert [s.blocks[0].mlp.fc1.out_channels for s in b6.stages] == [768, 1536, 1536, 3072]
    b0 = timm.create_model('van_b0', device='meta', drop_path_rate=0.1)
    # stochastic depth: linspace(0, rate) over the global block index, both branches share a rate
    blocks = [blk for s in b0.stages for blk in s.blocks]
    assert isinstance(blocks[0].drop_path1, torch.nn.Identity)
    assert blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert blocks[3].drop_path2.drop_prob == pytest.approx(0.1 * 3 / 12)
    lka = blocks[0].attn.lka
    assert isinstance(lka.conv_local, DepthwiseConv2d) and isinstance(lka.conv_dilated, DepthwiseConv2d)
    assert isinstance(blocks[0].mlp.conv_dw, DepthwiseConv2d)
    assert timm.create_model('van_b0').stages[0].blocks[0].ls2.gamma.eq(1e-2).all()


@pytest.mark.parametrize('name', models_of('van'))
def test_pretrained_cfg_preprocessing(name):
    model = timm.create_model(name, device='meta')
    cfg = resolve_data_config({}, model=model)
    assert cfg['mean'] == (0.5, 0.5, 0.5) and cfg['std'] == (0.5, 0.5, 0.5)
    assert cfg['crop_pct'] == 0.9 and cfg['interpolation'] == 'bicubic'
    assert cfg['input_size'] == (3, 224, 224)
    assert model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url')


def test_weight_locations():
    cfg = timm.models.get_pretrained_cfg('van_b0.in1k')
    assert cfg.hf_hub_id == 'Visual-Attention-Network/VAN-Tiny-original'
    assert cfg.hf_hub_filename == 'van_tiny_754.pth.tar'
    assert timm.models.get_pretrained_cfg('van_b3').hf_hub_filename == 'van_large_839.pth.tar'
    assert timm.models.get_pretrained_cfg('van_b4').url.endswith('van-b4_3rdparty_in1k_20220909-f4665b92.pth')
    assert timm.models.get_pretrained_cfg('van_b6.in22k').num_classes == 21841


# --------------------------------------------------------------------------------------------- LKA
def test_large_kernel_attention_is_an_ungated_product():
    lka = LargeKernelAttention(8).eval()
    assert lka.conv_local.kernel_size == (5, 5) and lka.conv_local.padding == (2, 2)
    assert lka.conv_dilated.kernel_size == (7, 7) and lka.conv_dilated.dilation == (3, 3)
    assert lka.conv_dilated.padding == (9, 9)
    assert lka.conv_pw.kernel_size == (1, 1) and lka.conv_pw.groups == 1
    x = torch.randn(2, 8, 13, 11)
    attn = F.conv2d(x, lka.conv_local.weight, lka.conv_local.bias, padding=2, groups=8)
    attn = F.conv2d(attn, lka.conv_dilated.weight, lka.conv_dilated.bias, padding=9, dilation=3, groups=8)
    attn = F.conv2d(attn, lka.conv_pw.weight, lka.conv_pw.bias)
    with torch.no_grad():
        torch.testing.assert_close(lka(x), x * attn)
    other = LargeKernelAttention(4, kernel_size=35, dilation=5)
    assert other.conv_local.kernel_size == (9, 9) and other.conv_dilated.kernel_size == (7, 7)
    with pytest.raises(ValueError):
        LargeKernelAttention(4, kernel_size=3, dilation=5)
