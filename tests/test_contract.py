"""The timm model contract, checked generically over every model lkconv registers.

Every registered model is built on the meta device, where no tensor is computed, and checked structurally:
parameter counts, pretrained cfgs, feature_info and head shapes at its cfg input size, parameter groups,
input errors. The rest runs once per code path, on helpers.CODE_PATH_MODELS: the smallest model of each
group of models built from the same modules (the larger variants run the same code with bigger tables of
settings). For those, the construction arguments (dtype, meta context, heads, features_only), more input
sizes on the meta device, and the numerical checks on CPU at small input sizes.
`test_code_path_models_cover_every_model` holds that list equal to the registry's groups, so a new family,
or a variant with a block type of its own, is checked in full once it is registered.
"""
import fnmatch
import functools
import json
import subprocess
import sys
from collections import defaultdict

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg, group_parameters
from timm.utils import reparameterize_model

from lkconv.utils import count_params
from helpers import (CODE_PATH_MODELS, DEPLOY_PARAM_COUNTS, IN22K_PARAM_COUNTS, MODELS, PARAM_COUNTS,
                     SMALLEST_PER_FAMILY, code_path, meta_model, models_of, randomize_batchnorm)

BATCH = 2
SMALL = 64  # numerical checks: every stage still has a spatial extent
# Construction arguments for a code-path model whose smallest registered variant is too slow for the CPU
# numerical checks: fewer blocks per stage, for RepLKNet narrower stages too, the same block code (FDConv's
# layers are enabled by their channel counts, so the FDConv ResNet keeps its widths).
NUMERIC_KWARGS = {
    'fdconv_resnet50': dict(layers=(1, 1, 1, 1)),
    'replknet_31b': dict(depths=(1, 1, 1, 1), dims=(64, 128, 256, 512)),
    'replknet_xl': dict(depths=(1, 1, 1, 1), dims=(64, 128, 256, 512)),
    'slak_tiny': dict(depths=(1, 1, 1, 1)),
}


def _pretrained_tags(name):
    return [t for t in timm.list_pretrained(f'{name}.*') if t.split('.')[0] == name]


def _meta(name, **kwargs):
    return timm.create_model(name, device='meta', **kwargs)


def _input(size, batch=BATCH, device='cpu', dtype=torch.float32, chans=3):
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, chans, h, w, device=device, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _meta_forward(name, size):
    """(final features, intermediates) of the shared meta-device model at an input size (shapes only)."""
    return meta_model(name).forward_intermediates(_input(size, device='meta'))


def _assert_map_size(actual, size, reduction):
    """Padded strided convs round up, unpadded patchify convs round down: either is a correct map size."""
    h, w = (size, size) if isinstance(size, int) else size
    for got, full in zip(tuple(actual), (h, w)):
        assert full // reduction <= got <= -(-full // reduction), (tuple(actual), size, reduction)


def _create(name, **kwargs):
    """A CPU instance of a code-path model for the numerical checks."""
    return timm.create_model(name, **NUMERIC_KWARGS.get(name, {}), **kwargs)


_eval_models = {}


def _eval_model(name):
    """One eval-mode CPU instance per model, shared by the read-only numerical checks."""
    if name not in _eval_models:
        _eval_models.clear()  # keep at most one model alive
        _eval_models[name] = _create(name).eval()
    return _eval_models[name]


def test_models_registered():
    assert MODELS and all(timm.is_model(n) for n in MODELS)


# ------------------------------------------------------------------------------------- code paths
def test_code_path_models_cover_every_model():
    """Each group of models built from the same modules (helpers.code_path) has exactly one member in
    helpers.CODE_PATH_MODELS: its smallest, which the numerical checks run on."""
    groups = defaultdict(list)
    for name in MODELS:
        groups[code_path(meta_model(name))].append(name)
    expected = sorted(min(group, key=PARAM_COUNTS.get) for group in groups.values())
    assert sorted(CODE_PATH_MODELS) == expected, f'groups: {sorted(sorted(g) for g in groups.values())}'


def test_smallest_per_family():
    """The list other modules run their slowest checks on."""
    families = {name.split('_')[0] for name in MODELS}
    assert SMALLEST_PER_FAMILY == sorted(min(models_of(f), key=PARAM_COUNTS.get) for f in families)


# -------------------------------------------------------------------------------- parameter counts
def test_parameter_count_table_covers_every_model():
    missing, unknown = set(MODELS) - set(PARAM_COUNTS), set(PARAM_COUNTS) - set(MODELS)
    assert not missing and not unknown, f'not in tests/helpers.py: {sorted(missing)}; not registered: {sorted(unknown)}'
    assert set(DEPLOY_PARAM_COUNTS) | set(IN22K_PARAM_COUNTS) <= set(MODELS)


@pytest.mark.parametrize('name', MODELS)
def test_parameter_counts(name):
    """The pinned counts (tests/helpers.py): training form with a 1000-class head, the re-parameterised form
    (which `deploy=True` builds directly, key for key), and the training form with an ImageNet-22k head."""
    model = meta_model(name)
    if model.num_classes != 1000:  # the default cfg is an ImageNet-22k checkpoint's
        model = _meta(name, num_classes=1000)
    assert count_params(model) == PARAM_COUNTS[name]
    if name in DEPLOY_PARAM_COUNTS:
        fused = reparameterize_model(model)
        assert count_params(fused) == DEPLOY_PARAM_COUNTS[name]
        deployed = _meta(name, num_classes=1000, deploy=True)
        assert {k: v.shape for k, v in fused.state_dict().items()} == \
            {k: v.shape for k, v in deployed.state_dict().items()}
    if name in IN22K_PARAM_COUNTS:
        assert count_params(_meta(name, num_classes=21841)) == IN22K_PARAM_COUNTS[name]


# ---------------------------------------------------------------------------------------------- cfgs
@pytest.mark.parametrize('name', MODELS)
def test_pretrained_cfgs(name):
    tags = _pretrained_tags(name)
    assert tags, f'{name} has no pretrained cfg with weights'
    for tag in tags:
        cfg = get_pretrained_cfg(tag).to_dict()
        assert cfg.get('hf_hub_id') or cfg.get('url'), f'{tag}: no weight location'
        for field in ('license', 'paper_ids', 'origin_url', 'first_conv', 'classifier'):
            assert cfg.get(field), f'{tag}: missing {field}'
        size = tuple(cfg['input_size'][1:])
        if tag == f"{name}.{meta_model(name).pretrained_cfg['tag']}":  # the default: the shared model is this one
            model, features = meta_model(name), _meta_forward(name, size)[0]
            assert model.num_classes == cfg['num_classes']
        else:
            model = _meta(name, pretrained_cfg=tag.split('.', 1)[1], num_classes=cfg['num_classes'])
            features = model.forward_features(_input(size, batch=1, device='meta'))
        assert model.in_chans == cfg['input_size'][0]
        params = dict(model.named_parameters())
        for key in ('first_conv', 'classifier'):
            names = cfg[key] if isinstance(cfg[key], (tuple, list)) else [cfg[key]]
            for module_name in names:
                assert f'{module_name}.weight' in params, f'{tag}: {key} {module_name} has no weight'
        assert tuple(features.shape[-2:]) == tuple(cfg['pool_size']), f'{tag}: pool_size'
        assert features.shape[1] == model.num_features


# ----------------------------------------------------------------------------------- construction
@pytest.mark.parametrize('name', MODELS)
def test_meta_device_creation(name):
    model = meta_model(name)  # timm.create_model(name, device='meta')
    assert all(t.device.type == 'meta' for t in model.parameters())
    assert all(t.device.type == 'meta' for t in model.buffers())


@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_meta_device_context_creation(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert all(t.device.type == 'meta' for t in list(model.parameters()) + list(model.buffers()))


@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_factory_dtype_and_serialisable_model_args(name):
    model = _meta(name, dtype=torch.bfloat16, drop_path_rate=0.1)
    floats = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.bfloat16 for t in floats)
    json.dumps(getattr(model, '_model_args', {}))


@pytest.mark.parametrize('name', MODELS)
def test_unknown_kwarg_rejected(name):
    with pytest.raises(TypeError):
        _meta(name, not_a_model_arg=1)


# -------------------------------------------------------------------------------- head and shapes
@pytest.mark.parametrize('name', MODELS)
def test_feature_info_and_head_at_the_cfg_size(name):
    model = meta_model(name)
    size = tuple(model.pretrained_cfg['input_size'][1:])
    final, taps = _meta_forward(name, size)
    assert len(taps) == len(model.feature_info)
    for tap, info in zip(taps, model.feature_info):
        assert tap.shape[1] == info['num_chs']
        _assert_map_size(tap.shape[-2:], size, info['reduction'])
    assert final.shape[1] == model.num_features
    assert model.forward_head(final).shape == (BATCH, model.num_classes)
    assert model.forward_head(final, pre_logits=True).shape == (BATCH, model.head_hidden_size)


@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_reset_classifier(name):
    model = _meta(name)
    size = tuple(model.pretrained_cfg['input_size'][1:])
    pool_size = tuple(model.pretrained_cfg['pool_size'])
    features = _meta_forward(name, size)[0]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.reset_classifier(5)
    classifier = model.get_classifier()
    assert classifier.weight.shape[0] == 5 and not classifier.training
    assert classifier.weight.device.type == 'meta'
    assert model.forward_head(features).shape == (BATCH, 5)

    model.reset_classifier(0)
    assert model.num_classes == 0
    assert model.forward_head(features).shape == (BATCH, model.head_hidden_size)

    model.reset_classifier(0, '')
    out = model.forward_head(features)
    if model.early_pool:
        assert out.dim() == 2
    else:
        assert out.shape == (BATCH, model.num_features) + pool_size

    headless = _meta(name, num_classes=0)
    assert headless.forward_head(features).shape == (BATCH, headless.head_hidden_size)
    if not headless.early_pool:  # early-pool heads cannot drop their pooling
        unpooled = _meta(name, num_classes=0, global_pool='')
        assert unpooled.forward_head(features).shape == (BATCH, unpooled.num_features) + pool_size


@pytest.mark.parametrize('size', [96, 128, (200, 120), 32])
@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_input_sizes_shapes(name, size):
    """Sizes the strides divide, one they do not (padded convs round up, patchify convs down), the smallest."""
    model = meta_model(name)
    final, taps = _meta_forward(name, size)
    assert len(taps) == len(model.feature_info)
    for tap, info in zip(taps, model.feature_info):
        assert tap.shape[1] == info['num_chs']
        _assert_map_size(tap.shape[-2:], size, info['reduction'])
    assert model.forward_head(final).shape == (BATCH, model.num_classes)


@pytest.mark.parametrize('name, features_only', [pytest.param(n, False, id=f'{n}-model') for n in MODELS] +
                         [pytest.param(n, True, id=f'{n}-features_only') for n in CODE_PATH_MODELS])
def test_bad_inputs_have_clear_errors(name, features_only):
    model = _meta(name, features_only=True) if features_only else meta_model(name)
    min_size = meta_model(name).min_input_size
    with pytest.raises(ValueError, match='input channels'):
        model(_input(96, chans=4, device='meta'))
    with pytest.raises(ValueError, match='4-D'):
        model(torch.randn(3, 96, 96, device='meta'))
    with pytest.raises(ValueError, match='too small'):
        model(_input(min_size - 1, device='meta'))


@pytest.mark.parametrize('name', MODELS)
def test_group_matcher_and_no_weight_decay(name):
    model = meta_model(name)
    groups = group_parameters(model, model.group_matcher(coarse=False))
    assert len(groups) > 1
    assert len(group_parameters(model, model.group_matcher(coarse=True))) > 1
    param_names = [n for n, _ in model.named_parameters()]
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) or n == pattern for n in param_names), pattern


# ------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_forward_finite_and_sizes(name):
    model = _eval_model(name)
    with torch.no_grad():
        for size in (SMALL, (200, 120)):
            out = model(_input(size))
            assert out.shape == (BATCH, model.num_classes)
            assert torch.isfinite(out).all(), f'non-finite output at {size}'


@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_forward_intermediates_match(name):
    model = _eval_model(name)
    x = _input(SMALL)
    with torch.no_grad():
        features = model.forward_features(x)
        final, taps = model.forward_intermediates(x)
        torch.testing.assert_close(final, features, rtol=1e-5, atol=1e-6)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], taps[1])
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two[-1], taps[-1])


@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_grad_checkpointing_unchanged(name):
    model = _eval_model(name)
    x = _input(SMALL)
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing(True)
        try:
            out = model(x)
            _, taps = model.forward_intermediates(x)
        finally:
            model.set_grad_checkpointing(False)
    torch.testing.assert_close(out, ref)
    assert len(taps) == len(model.feature_info)


@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = _create(name, num_classes=7).train()
    out = model(_input(SMALL))
    out = out if isinstance(out, torch.Tensor) else sum(out)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.numel() != p.numel()]
    assert not missing, f'parameters without gradient: {missing[:10]}'


@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_bf16_stays_bf16(name):
    model = _create(name).eval()
    with torch.no_grad():
        model(_input(SMALL))  # an fp32 forward first: caches must not pin the dtype
        model.to(torch.bfloat16)
        out = model(_input(SMALL, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_reparameterize_equivalent(name):
    model = _create(name).eval()
    randomize_batchnorm(model)
    x = _input(SMALL)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        out = fused(x)
        twice = reparameterize_model(fused)(x)
    assert count_params(fused) <= count_params(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    torch.testing.assert_close(twice, out)


# ------------------------------------------------------------------------------ feature extraction
@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_features_only(name):
    torch.manual_seed(0)
    model = _create(name, features_only=True).eval()
    torch.manual_seed(0)  # same initial weights as the feature extractor
    ref = _create(name).eval()
    x = _input(96)
    with torch.no_grad():
        feats = model(x)
        taps = ref.forward_intermediates(x, intermediates_only=True)
    assert len(feats) == len(ref.feature_info) == 4
    assert model.feature_info.channels() == [f['num_chs'] for f in ref.feature_info]
    for feat, tap, reduction in zip(feats, taps, model.feature_info.reduction()):
        _assert_map_size(feat.shape[-2:], 96, reduction)
        torch.testing.assert_close(feat, tap)
    getter = _create(name, features_only=True, feature_cls='getter', out_indices=(1, 3)).eval()
    with torch.no_grad():
        got = getter(x)
    assert [g.shape[1] for g in got] == [ref.feature_info[1]['num_chs'], ref.feature_info[3]['num_chs']]


@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_prune_intermediate_layers(name):
    model = _create(name).eval()
    x = _input(SMALL)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
    kept = model.prune_intermediate_layers([1], prune_norm=True)
    assert list(kept) == [1]
    assert model.num_features == model.feature_info[1]['num_chs']
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    torch.testing.assert_close(pruned[0], taps[1])
    model.train()
    out = model(x)  # the head was reset to features only: (N, num_features[, H, W])
    assert out.shape[:2] == (BATCH, model.num_features)
    out.sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f'unused parameters after pruning: {unused[:10]}'


# ---------------------------------------------------------------------------------- registration
def test_import_is_silent_and_keeps_timm_names():
    code = (
        'import warnings, timm\n'
        'before = {n: timm.models._registry._model_to_module[n] for n in timm.list_models()}\n'
        'with warnings.catch_warnings():\n'
        '    warnings.simplefilter("error")\n'
        '    import lkconv\n'
        'after = timm.models._registry._model_to_module\n'
        'changed = [n for n, m in before.items() if after.get(n) != m]\n'
        'assert not changed, changed\n'
        'm = timm.create_model(lkconv.list_models()[0], device="meta")\n'
    )
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == '' and result.stderr == '', (result.stdout, result.stderr)


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
@pytest.mark.parametrize('name', CODE_PATH_MODELS)
def test_torchscript(name):
    """Every code path scripts (there are no exclusions); the scripted model's output on a tiny input (the
    smallest the model accepts, batch 1) equals the eager one."""
    model = _create(name).eval()
    x = _input(model.min_input_size, batch=1)
    # unoptimised execution: a single call would otherwise pay for the profiling executor's graph optimisation
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))
