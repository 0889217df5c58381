"""LSNet: parameter counts, parity with the official model, SKA, fusion, attention-bias cache, input sizes,
distillation heads and pretrained cfgs. Forward passes use lsnet_t; counting runs on the meta device."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import get_pretrained_cfg
from timm.utils import reparameterize_model

from lkconv.backends import SKA_BACKENDS
from lkconv.layers import AttentionBias2d, ConvBn, DepthwiseConv2d, LSConv, set_ska_backend
from lkconv.layers import ska as ska_module
from lkconv.layers.ska import register_ska_backend, small_kernel_aggregation
from lkconv.models.lsnet import LSNetAttention, RepVggDw, checkpoint_filter_fn
from lkconv.utils import count_params
from helpers import models_of
from parity import create_from_official, load_fixture, rel_error

TOL = 1e-4


@pytest.fixture(scope='module')
def fixture(parity_dir):
    return load_fixture(parity_dir / 'lsnet_t.pt')


@pytest.fixture(scope='module')
def official(fixture, tmp_path_factory):
    """lsnet_t built from the official checkpoint the way a user loads one (strict, through the filter)."""
    return create_from_official('lsnet_t', fixture['state_dict'], tmp_path_factory.mktemp('lsnet')).eval()


# --------------------------------------------------------------------------------------------- sizes
# parameter counts (training form, and fused as in the README): tests/helpers.py, checked in test_contract.py
def test_every_depthwise_conv_dispatches():
    model = timm.create_model('lsnet_b', device='meta')
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert depthwise and all(isinstance(m, DepthwiseConv2d) for m in depthwise)
    lkp = model.stages[0].blocks[1].mixer.lkp
    assert isinstance(lkp.cv2.conv, DepthwiseConv2d) and lkp.cv2.conv.kernel_size == (7, 7)


# -------------------------------------------------------------------------------------------- parity
def test_parity_lsnet_t(official, fixture):
    with torch.no_grad():
        logits = official(fixture['input'])
        taps = official.forward_intermediates(fixture['input'], intermediates_only=True)
    assert [f['reduction'] for f in official.feature_info] == [8, 16, 32, 64]
    assert [t.shape[-1] for t in taps] == [28, 14, 7, 4]
    errors = [rel_error(logits, fixture['logits'])] + [rel_error(t, r) for t, r in zip(taps, fixture['stage_features'])]
    assert max(errors) < TOL, f'relative errors (logits, patch_embed, blocks2, blocks3, blocks4): {errors}'


def test_official_layouts_load_strictly(official, fixture):
    sd = fixture['state_dict']
    model = copy.deepcopy(official)
    for checkpoint in (sd, {'model': sd}, {'state_dict': sd}, {f'module.{k}': v for k, v in sd.items()}):
        result = model.load_state_dict(checkpoint_filter_fn(checkpoint, model), strict=True)
        assert not result.missing_keys and not result.unexpected_keys


def test_bias_table_resized_for_another_grid(fixture, tmp_path):
    # img_size=448 builds the stage-4 bias table for a 7x7 grid; the 4x4 official table is resized bicubically
    model = create_from_official('lsnet_t', fixture['state_dict'], tmp_path, img_size=448)
    bias = model.stages[3].blocks[1].mixer.attention_bias
    assert bias.resolution == (7, 7) and bias.attention_biases.shape == (4, 49)
    table = fixture['state_dict']['blocks4.3.mixer.m.attention_biases'].reshape(1, 4, 4, 4)
    expected = F.interpolate(table, size=(7, 7), mode='bicubic', align_corners=False).reshape(4, 49)
    torch.testing.assert_close(bias.attention_biases.data, expected)


# ----------------------------------------------------------------------------------------------- SKA
def _ska_by_definition(x, w):
    """out[b, c, h, w] = sum_ij xpad[b, c, h + i, w + j] * w[b, c mod G, i*K + j, h, w], channel by channel."""
    k = int(w.shape[2] ** 0.5)
    groups = w.shape[1]
    h, wd = x.shape[-2:]
    xp = F.pad(x, (k // 2,) * 4)
    out = torch.zeros_like(x)
    for c in range(x.shape[1]):
        for i in range(k):
            for j in range(k):
                out[:, c] += xp[:, c, i:i + h, j:j + wd] * w[:, c % groups, i * k + j]
    return out


@pytest.mark.parametrize('kernel_size', [3, 5])
def test_ska_matches_definition(kernel_size):
    x = torch.randn(2, 16, 6, 7)
    w = torch.randn(2, 2, kernel_size ** 2, 6, 7)
    torch.testing.assert_close(small_kernel_aggregation(x, w), _ska_by_definition(x, w))
    # the strided mapping matters: contiguous groups of channels give a different result
    contiguous = _ska_by_definition(x, w.repeat_interleave(8, dim=1))
    assert not torch.allclose(small_kernel_aggregation(x, w), contiguous)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_ska_keeps_half_dtypes(dtype):
    x, w = torch.randn(1, 16, 5, 5), torch.randn(1, 2, 9, 5, 5)
    out = small_kernel_aggregation(x.to(dtype), w.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), _ska_by_definition(x.to(dtype).float(), w.to(dtype).float()),
                               rtol=1e-2, atol=1e-2)


def test_ska_rejects_mismatched_weight():
    with pytest.raises(ValueError, match='does not fit'):
        small_kernel_aggregation(torch.randn(1, 16, 5, 5), torch.randn(1, 3, 9, 5, 5))


def test_ska_backend_seam():
    """A GPU kernel plugs in by registration; LSConv (and so every model) picks it up unchanged."""
    calls = []

    def fake_kernel(x, w):
        calls.append(tuple(x.shape))
        return ska_module._torch_ska(x, w)

    register_ska_backend('fake', fake_kernel, supports=lambda x, w: x.shape[1] == 16, priority=100)
    try:
        conv16, conv24 = LSConv(16).eval(), LSConv(24).eval()
        with torch.no_grad():
            conv16(torch.randn(1, 16, 8, 8))
            conv24(torch.randn(1, 24, 8, 8))  # not supported by 'fake': falls back to torch
            assert calls == [(1, 16, 8, 8)]
            set_ska_backend('torch')
            conv16(torch.randn(1, 16, 8, 8))
            assert len(calls) == 1
    finally:
        set_ska_backend('auto')
        SKA_BACKENDS.unregister('fake')
    with pytest.raises(ValueError, match='Unknown SKA backend'):
        set_ska_backend('no_such_backend')


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
def test_lsconv_exports():
    conv = LSConv(16).eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        ref = conv(x)
        torch.testing.assert_close(torch.jit.script(conv)(x), ref)
        torch.testing.assert_close(torch.export.export(conv, (x,)).module()(x), ref)
        torch.testing.assert_close(torch.fx.symbolic_trace(conv)(x), ref)


def test_lsconv_onnx_export(tmp_path):
    from lkconv.deploy.onnx_export import export_onnx, run_onnx
    conv = LSConv(16).eval()
    x = torch.randn(2, 16, 8, 8)
    path = export_onnx(conv, x, tmp_path / 'lsconv.onnx')
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(path, x), conv(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ reparam
def test_reparameterize_equals_unfused(official, fixture):
    fused = reparameterize_model(official)
    kinds = {type(m) for m in fused.modules()}
    assert ConvBn not in kinds and RepVggDw not in kinds
    assert isinstance(fused.head.norm, nn.Identity)
    # only LS conv's output BatchNorm is left (it follows the dynamic aggregation, so it cannot be folded)
    bns = [m for m in fused.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == sum(isinstance(m, LSConv) for m in fused.modules())
    with torch.no_grad():
        out = fused(fixture['input'])
    assert rel_error(out, fixture['logits']) < TOL


def _official_fused(sd, eps=1e-5):
    """An official training-form state_dict after the official fuse (spec section 9), from its formulas:
    Conv2d_BN `X.c` + `X.bn` -> conv `X` with bias; RepVGGDW `mixer.conv` + `mixer.conv1` + identity -> one
    3x3 conv `mixer`; BN_Linear `head.bn` + `head.l` -> Linear `head`. Everything else is kept."""
    def bn_affine(prefix):
        scale = sd[prefix + 'bn.weight'] / torch.sqrt(sd[prefix + 'bn.running_var'] + eps)
        return scale, sd[prefix + 'bn.bias'] - sd[prefix + 'bn.running_mean'] * scale

    fused, consumed = {}, set()
    for prefix in [k[:-len('c.weight')] for k in sd if k.endswith('.c.weight')]:
        scale, shift = bn_affine(prefix)
        fused[prefix + 'weight'] = sd[prefix + 'c.weight'] * scale[:, None, None, None]
        fused[prefix + 'bias'] = shift
        consumed |= {k for k in sd if k.startswith((prefix + 'c.', prefix + 'bn.'))}
    for prefix in [k[:-len('conv.c.weight')] for k in sd if k.endswith('.mixer.conv.c.weight')]:
        w3, b3 = fused.pop(prefix + 'conv.weight'), fused.pop(prefix + 'conv.bias')
        w1, b1 = fused.pop(prefix + 'conv1.weight'), fused.pop(prefix + 'conv1.bias')
        fused[prefix + 'weight'] = w3 + F.pad(w1, [1, 1, 1, 1]) + F.pad(torch.ones_like(w1), [1, 1, 1, 1])
        fused[prefix + 'bias'] = b3 + b1
    for head in ('head', 'head_dist'):
        if head + '.l.weight' in sd:
            scale, shift = bn_affine(head + '.')
            weight = sd[head + '.l.weight']
            fused[head + '.weight'] = weight * scale[None, :]
            fused[head + '.bias'] = weight @ shift + sd[head + '.l.bias']
            consumed |= {k for k in sd if k.startswith((head + '.bn.', head + '.l.'))}
    fused.update({k: v for k, v in sd.items() if k not in consumed})
    return fused


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
@pytest.mark.parametrize('name', ['lsnet_t', 'lsnet_t_distill'])
def test_official_fused_checkpoint_loads_in_deploy_form(fixture, tmp_path, name):
    sd = dict(fixture['state_dict'])
    expected = fixture['logits']
    if name.endswith('_distill'):  # a second head whose logits differ by exactly 1
        sd.update({'head_dist.' + k[len('head.'):]: v.clone() for k, v in sd.items() if k.startswith('head.')})
        sd['head_dist.l.bias'] = sd['head_dist.l.bias'] + 1.
        expected = expected + 0.5
    fused_sd = _official_fused(sd)
    assert 'patch_embed.0.weight' in fused_sd and 'blocks2.2.mixer.weight' in fused_sd and 'head.weight' in fused_sd
    assert not any('.c.' in k or k.startswith('head.l.') for k in fused_sd)
    model = create_from_official(name, fused_sd, tmp_path, deploy=True).eval()  # strict through the filter

    reference = create_from_official(name, sd, tmp_path).eval()
    fused = reparameterize_model(reference)
    assert model.state_dict().keys() == fused.state_dict().keys()
    for key, value in fused.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_error(model(fixture['input'][:1]), expected[:1]) < TOL  # the official model's output
        out = model(x)
        torch.testing.assert_close(out, fused(x), rtol=1e-5, atol=1e-5 * out.abs().max().item())
        torch.testing.assert_close(torch.jit.script(model)(x), out)
    assert count_params(model) == count_params(fused) < count_params(reference)


def test_deploy_form_is_the_reparameterized_structure():
    deploy = timm.create_model('lsnet_s_distill', deploy=True, device='meta')
    fused = reparameterize_model(timm.create_model('lsnet_s_distill', device='meta'))
    assert {k: v.shape for k, v in deploy.state_dict().items()} == {k: v.shape for k, v in fused.state_dict().items()}
    assert reparameterize_model(deploy).state_dict().keys() == deploy.state_dict().keys()  # nothing left to fuse


def test_checkpoint_form_mismatch_is_explained(fixture, tmp_path):
    with pytest.raises(ValueError, match=r'fused \(deploy\) form.*deploy=True'):
        create_from_official('lsnet_t', _official_fused(fixture['state_dict']), tmp_path)
    with pytest.raises(ValueError, match=r'training \(unfused\) form.*deploy=True.*reparameterize_model'):
        create_from_official('lsnet_t', fixture['state_dict'], tmp_path, deploy=True)


# ------------------------------------------------------------------------------- attention-bias cache
def test_bias_cache_follows_weights_loaded_after_eval(official):
    model = timm.create_model('lsnet_t').eval()  # all-zero bias tables
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)  # fills the eval-mode caches
        model.load_state_dict(official.state_dict())
        torch.testing.assert_close(model(x), official(x))


def test_bias_cache_follows_in_place_updates_and_dtype():
    bias = AttentionBias2d(num_heads=2, resolution=4).eval()
    with torch.no_grad():
        assert bias((4, 4)).abs().max() == 0
        bias.attention_biases.add_(1.)  # e.g. an optimizer step
        assert torch.all(bias((4, 4)) == 1)
        bias.to(torch.bfloat16)
        assert bias((4, 4)).dtype == torch.bfloat16 and bias((3, 5)).dtype == torch.bfloat16


def test_bf16_model_stays_bf16(official):
    model = copy.deepcopy(official)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model.to(torch.bfloat16)
        out = model(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert rel_error(out.float(), ref) < 0.1


def test_bias_interpolated_for_other_grids():
    bias = AttentionBias2d(num_heads=2, resolution=4).eval()
    with torch.no_grad():
        bias.attention_biases.normal_()
        gathered = bias.attention_biases[:, bias.attention_bias_idxs]
        torch.testing.assert_close(bias((4, 4)), gathered, rtol=0, atol=0)
        expected = F.interpolate(gathered[None], size=(20, 20), mode='bicubic', align_corners=False)[0]
        torch.testing.assert_close(bias((4, 5)), expected)
    assert bias.training is False and bias((4, 5)).shape == (2, 20, 20)


# ----------------------------------------------------------------------------------- input sizes
def test_features_only_at_256x320():
    model = timm.create_model('lsnet_t', features_only=True).eval()
    assert model.feature_info.reduction() == [8, 16, 32, 64]
    assert model.feature_info.channels() == [64, 128, 256, 384]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 256, 320))
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 40), (16, 20), (8, 10), (4, 5)]
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
def test_attention_other_grid_scripted():
    attn = LSNetAttention(64, resolution=4).eval()
    x = torch.randn(2, 64, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(attn)(x), attn(x))


# ---------------------------------------------------------------------------------- distillation
def test_distilled_heads(fixture, tmp_path):
    sd = dict(fixture['state_dict'])
    sd.update({'head_dist.' + k[len('head.'):]: v.clone() for k, v in sd.items() if k.startswith('head.')})
    sd['head_dist.l.bias'] = sd['head_dist.l.bias'] + 1.  # the two heads differ by exactly 1 per logit
    model = create_from_official('lsnet_t_distill', sd, tmp_path).eval()
    with torch.no_grad():
        out = model(fixture['input'])
        assert rel_error(out, fixture['logits'] + 0.5) < TOL  # eval: the mean of both heads

        x = torch.randn(2, 3, 64, 64)
        model.train()
        assert isinstance(model(x), torch.Tensor)  # as timm: averaged unless distilled training is on
        model.set_distilled_training(True)
        out, out_dist = model(x)
        assert out.shape == out_dist.shape == (2, 1000)
        model.eval()
        assert isinstance(model(x), torch.Tensor)
    model.reset_classifier(0)
    assert model.head_dist is None and model(x).shape == (2, 384)
    model.reset_classifier(10)
    assert model.head_dist is not None and model(x).shape == (2, 10)


# ---------------------------------------------------------------------------------- pretrained cfgs
@pytest.mark.parametrize('name', models_of('lsnet'))
def test_pretrained_cfg(name):
    cfg = get_pretrained_cfg(name)
    assert cfg.hf_hub_id == 'jameslahm/lsnet' and cfg.hf_hub_filename == f'{name}.pth'
    assert cfg.license == 'mit' and cfg.paper_ids == 'arXiv:2503.23135'
    assert cfg.input_size == (3, 224, 224) and cfg.pool_size == (4, 4)
    assert cfg.crop_pct == 0.875 and cfg.interpolation == 'bicubic'
    assert cfg.first_conv == 'stem.0.conv'
    assert cfg.classifier == (('head.fc', 'head_dist.fc') if name.endswith('_distill') else 'head.fc')
