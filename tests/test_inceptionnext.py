"""InceptionNeXt: parity with the official model, exact sizes, timm compatibility and family behaviours."""
import re

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import get_pretrained_cfg, model_entrypoint

from lkconv.backends import DEPTHWISE_BACKENDS
from lkconv.layers import DepthwiseConv2d, InceptionDWConv2d, register_depthwise_backend
from lkconv.models.inceptionnext import InceptionNeXt, checkpoint_filter_fn

from helpers import models_of
from parity import create_from_official, load_fixture, rel_error

VARIANTS = models_of('inceptionnext')  # parameter counts: tests/helpers.py, checked in tests/test_contract.py


@pytest.fixture(scope='module')
def fixture_data(parity_dir):
    return load_fixture(parity_dir / 'inceptionnext_atto.pt')


# --------------------------------------------------------------------------------------- parity
def test_parity_official_checkpoint(fixture_data, tmp_path):
    model = create_from_official('inceptionnext_atto', fixture_data['state_dict'], tmp_path).eval()
    x = fixture_data['input']
    with torch.no_grad():
        logits = model(x)
        final, taps = model.forward_intermediates(x)
    errors = [rel_error(logits, fixture_data['logits'])]
    errors += [rel_error(tap, ref) for tap, ref in zip(taps, fixture_data['stage_features'])]
    assert len(taps) == len(fixture_data['stage_features']) == 4
    assert max(errors) < 1e-4, f'relative errors (logits, stages 0-3): {errors}'
    torch.testing.assert_close(final, taps[-1])


@pytest.mark.parametrize('wrap', ['bare', 'model', 'state_dict', 'module_prefix'])
def test_checkpoint_layouts_load_strictly(fixture_data, wrap):
    sd = fixture_data['state_dict']
    ckpt = {
        'bare': sd,
        'model': {'model': sd, 'epoch': 300},
        'state_dict': {'state_dict': sd},
        'module_prefix': {'model': {f'module.{k}': v for k, v in sd.items()}},
    }[wrap]
    model = timm.create_model('inceptionnext_atto')
    result = model.load_state_dict(checkpoint_filter_fn(ckpt, model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_official_checkpoint_with_new_classifier(fixture_data, tmp_path):
    model = create_from_official('inceptionnext_atto', fixture_data['state_dict'], tmp_path, num_classes=10).eval()
    torch.testing.assert_close(model.stem[0].weight, fixture_data['state_dict']['stem.0.weight'])
    with torch.no_grad():
        assert model(fixture_data['input'][:1]).shape == (1, 10)


# ------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize('name', VARIANTS)
def test_head_hidden_size(name):
    model = timm.create_model(name, device='meta')
    assert model.head_hidden_size == 3 * model.num_features


@pytest.mark.parametrize('name', ['inceptionnext_atto'])
def test_same_key_layout_as_timm(name):
    """timm's Hub copies (and the official files, which share timm's keys) need no conversion."""
    ours = timm.create_model(name, device='meta').state_dict()
    theirs = timm.create_model(name.replace('inceptionnext_', 'inception_next_'), device='meta').state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


# ------------------------------------------------------------------------------------ registration
def test_timm_names_untouched():
    model = timm.create_model('inception_next_tiny', device='meta')
    assert type(model) is timm.models.MetaNeXt
    assert model_entrypoint('inception_next_tiny').__module__ == 'timm.models.inception_next'
    assert set(timm.list_models('inceptionnext_*')) == set(VARIANTS)
    assert 'inception_next_base.sail_in1k_384' in timm.list_pretrained('inception_next_*')


def test_pretrained_cfgs():
    for name in VARIANTS:
        cfg = get_pretrained_cfg(f'{name}.sail_in1k')
        variant = name.split('_')[1]
        release = 'https://github.com/sail-sg/inceptionnext/releases/download/model/'
        assert cfg.url == f'{release}inceptionnext_{variant}.pth'
        assert cfg.hf_hub_id == f'timm/inception_next_{variant}.sail_in1k'
        assert (cfg.input_size, cfg.pool_size, cfg.crop_pct) == ((3, 224, 224), (7, 7), 0.875)
        assert (cfg.interpolation, cfg.classifier, cfg.first_conv) == ('bicubic', 'head.fc2', 'stem.0')
        assert (cfg.license, cfg.paper_ids) == ('apache-2.0', 'arXiv:2303.16900')
    cfg = get_pretrained_cfg('inceptionnext_base.sail_in1k_384')
    assert cfg.hf_hub_id == 'timm/inception_next_base.sail_in1k_384'
    assert cfg.url.endswith('/inceptionnext_base_384.pth')
    assert (cfg.input_size, cfg.pool_size, cfg.crop_pct) == ((3, 384, 384), (12, 12), 1.0)
    assert timm.create_model('inceptionnext_base', device='meta').pretrained_cfg['tag'] == 'sail_in1k'


# ------------------------------------------------------------------------------------------- head
def test_mlp_head_is_early_pool():
    model = timm.create_model('inceptionnext_atto', device='meta')
    assert InceptionNeXt.early_pool and model.early_pool
    head = model.head
    assert [type(m) for m in (head.fc1, head.act, head.norm, head.fc2)] == [nn.Linear, nn.GELU, nn.LayerNorm, nn.Linear]
    assert head.fc1.out_features == 960 and head.norm.eps == 1e-6
    assert model.get_classifier() is head.fc2
    x = torch.randn(2, 3, 64, 64, device='meta')
    model.reset_classifier(0, '')  # pooling stays: layers follow it
    assert model(x).shape == (2, 960)
    model.reset_classifier(3, 'max')
    assert model(x).shape == (2, 3) and model.global_pool == 'max'
    with pytest.raises(ValueError, match='cannot be disabled'):
        timm.create_model('inceptionnext_atto', device='meta', global_pool='')


# ------------------------------------------------------------------------------- output stride
@pytest.mark.parametrize('output_stride, reductions', [(16, [4, 8, 16, 16]), (8, [4, 8, 8, 8])])
def test_features_only_output_stride(output_stride, reductions):
    model = timm.create_model('inceptionnext_atto', features_only=True, output_stride=output_stride).eval()
    assert model.feature_info.reduction() == reductions
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats] == [(64 // r, 64 // r) for r in reductions]
    assert [f.shape[1] for f in feats] == [40, 80, 160, 320]


@pytest.mark.parametrize('output_stride', [16, 8])
def test_output_stride_matches_timm(output_stride):
    """Dilated stages compute what timm's MetaNeXt computes with the same weights."""
    ours = timm.create_model('inceptionnext_atto', output_stride=output_stride).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.1)
    theirs = timm.create_model('inception_next_atto', output_stride=output_stride).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x))
        torch.testing.assert_close(ours(x), theirs(x))


def test_features_only_equals_intermediates():
    model = timm.create_model('inceptionnext_atto').eval()
    features = timm.create_model('inceptionnext_atto', features_only=True).eval()
    # the feature wrapper flattens `stem.i` / `stages.i` into `stem_i` / `stages_i` and has no head
    state_dict = {re.sub(r'^(stem|stages)\.(\d+)\.', r'\1_\2.', k): v
                  for k, v in model.state_dict().items() if not k.startswith('head.')}
    features.load_state_dict(state_dict, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for feat, tap in zip(features(x), model.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(feat, tap)


# --------------------------------------------------------------------------- the token mixer
def test_inception_dwconv_branches():
    mixer = InceptionDWConv2d(40, band_kernel_size=9, branch_ratio=0.25, dilation=2)
    convs = [mixer.dwconv_hw, mixer.dwconv_w, mixer.dwconv_h]
    assert all(isinstance(c, DepthwiseConv2d) for c in convs)
    assert mixer.split_sizes == (10, 10, 10, 10)
    assert [tuple(c.weight.shape) for c in convs] == [(10, 1, 3, 3), (10, 1, 1, 9), (10, 1, 9, 1)]
    with torch.no_grad():
        for c in convs:
            c.weight.normal_()
            c.bias.normal_()
    x = torch.randn(2, 40, 13, 11)
    chunks = torch.split(x, 10, dim=1)
    ref = [chunks[0]] + [
        F.conv2d(chunk, c.weight, c.bias, padding=pad, dilation=dil, groups=10)
        for chunk, c, pad, dil in zip(chunks[1:], convs, [(2, 2), (0, 8), (8, 0)], [(2, 2), (1, 2), (2, 1)])
    ]
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), torch.cat(ref, dim=1))
    with pytest.raises(ValueError, match='branch_ratio'):
        InceptionDWConv2d(4, branch_ratio=0.125)


def test_mixer_convs_go_through_the_backend_dispatch():
    calls = []

    def counting(x, weight, bias, stride, padding, dilation):
        calls.append(tuple(weight.shape[-2:]))
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups=weight.shape[0])

    register_depthwise_backend('counting', counting, supports=lambda *args: True, priority=100)
    try:
        model = timm.create_model('inceptionnext_atto').eval()
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
    finally:
        DEPTHWISE_BACKENDS.unregister('counting')
    assert len(calls) == 3 * 12  # three convs in each of the 12 blocks
    assert {(3, 3), (1, 9), (9, 1)} == set(calls)
