"""The timm model contract, checked generically over every model lkconv registers.

Shape-only checks run on the meta device (free for any model size) over every model. Numerical checks run
on CPU at small input sizes over every model below NUMERIC_MAX_PARAMS parameters: larger variants of a
family run the same code paths with a bigger table of settings, and a CPU backward pass through them
would dominate CI time (as in timm's own suite, which also leaves its largest models out of these).
A new family gets all of these by registering its models.
"""
import fnmatch
import functools
import json
import subprocess
import sys

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg, group_parameters
from timm.utils import reparameterize_model

import lkconv
from perturb import randomize_batchnorm

MODELS = lkconv.list_models()
NUMERIC_MAX_PARAMS = 25_000_000
BATCH = 2
SMALL = 64  # numerical checks: every stage still has a spatial extent


@functools.lru_cache(maxsize=None)
def _param_count(name):
    return sum(p.numel() for p in timm.create_model(name, device='meta').parameters())


NUMERIC_MODELS = [n for n in MODELS if _param_count(n) <= NUMERIC_MAX_PARAMS]
# the smallest model of each family, for the slowest checks of other test modules
SMALLEST_PER_FAMILY = sorted({
    family: min((n for n in MODELS if n.split('_')[0] == family), key=_param_count)
    for family in {n.split('_')[0] for n in MODELS}
}.values())


def _pretrained_tags(name):
    return [t for t in timm.list_pretrained(f'{name}.*') if t.split('.')[0] == name]


def _meta(name, **kwargs):
    return timm.create_model(name, device='meta', **kwargs)


def _input(size, batch=BATCH, device='cpu', dtype=torch.float32, chans=3):
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, chans, h, w, device=device, dtype=dtype)


def _assert_map_size(actual, size, reduction):
    """Padded strided convs round up, unpadded patchify convs round down: either is a correct map size."""
    h, w = (size, size) if isinstance(size, int) else size
    for got, full in zip(tuple(actual), (h, w)):
        assert full // reduction <= got <= -(-full // reduction), (tuple(actual), size, reduction)


_eval_models = {}


def _eval_model(name):
    """One eval-mode CPU instance per model, shared by the read-only numerical checks."""
    if name not in _eval_models:
        _eval_models.clear()  # keep at most one large model alive
        _eval_models[name] = timm.create_model(name).eval()
    return _eval_models[name]


def test_models_registered():
    assert len(MODELS) >= 9, MODELS
    assert all(timm.is_model(n) for n in MODELS)
    for family in {n.split('_')[0] for n in MODELS}:  # every family is covered numerically
        assert any(n.startswith(family + '_') for n in NUMERIC_MODELS), family


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
        model = _meta(name, pretrained_cfg=tag.split('.', 1)[1], num_classes=cfg['num_classes'])
        assert model.in_chans == cfg['input_size'][0]
        params = dict(model.named_parameters())
        for key in ('first_conv', 'classifier'):
            names = cfg[key] if isinstance(cfg[key], (tuple, list)) else [cfg[key]]
            for module_name in names:
                assert f'{module_name}.weight' in params, f'{tag}: {key} {module_name} has no weight'
        features = model.forward_features(_input(cfg['input_size'][1:], batch=1, device='meta'))
        assert tuple(features.shape[-2:]) == tuple(cfg['pool_size']), f'{tag}: pool_size'
        assert features.shape[1] == model.num_features


# ----------------------------------------------------------------------------------- construction
@pytest.mark.parametrize('name', MODELS)
def test_meta_device_creation(name):
    model = _meta(name)
    assert all(t.device.type == 'meta' for t in model.parameters())
    assert all(t.device.type == 'meta' for t in model.buffers())
    with torch.device('meta'):
        model = timm.create_model(name)
    assert all(t.device.type == 'meta' for t in list(model.parameters()) + list(model.buffers()))


@pytest.mark.parametrize('name', MODELS)
def test_factory_dtype(name):
    model = _meta(name, dtype=torch.bfloat16)
    floats = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    assert floats and all(t.dtype == torch.bfloat16 for t in floats)


@pytest.mark.parametrize('name', MODELS)
def test_unknown_kwarg_rejected(name):
    with pytest.raises(TypeError):
        _meta(name, not_a_model_arg=1)


@pytest.mark.parametrize('name', MODELS)
def test_model_args_json_serialisable(name):
    model = _meta(name, drop_path_rate=0.1)
    json.dumps(getattr(model, '_model_args', {}))


# -------------------------------------------------------------------------------- head and shapes
@pytest.mark.parametrize('name', MODELS)
def test_reset_classifier(name):
    model = _meta(name)
    size = model.pretrained_cfg['input_size'][1:]
    pool_size = tuple(model.pretrained_cfg['pool_size'])
    features = model.forward_features(_input(size, device='meta'))
    assert model.forward_head(features).shape == (BATCH, model.num_classes)
    assert model.forward_head(features, pre_logits=True).shape == (BATCH, model.head_hidden_size)

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


@pytest.mark.parametrize('name', MODELS)
@pytest.mark.parametrize('size', [96, 128, (200, 120), 32])
def test_input_sizes_shapes(name, size):
    model = _meta(name)
    final, taps = model.forward_intermediates(_input(size, device='meta'))
    assert len(taps) == len(model.feature_info)
    for tap, info in zip(taps, model.feature_info):
        assert tap.shape[1] == info['num_chs']
        _assert_map_size(tap.shape[-2:], size, info['reduction'])
    assert model.forward_head(final).shape == (BATCH, model.num_classes)


@pytest.mark.parametrize('features_only', [False, True], ids=['model', 'features_only'])
@pytest.mark.parametrize('name', MODELS)
def test_bad_inputs_have_clear_errors(name, features_only):
    model = _meta(name, features_only=features_only)
    min_size = _meta(name).min_input_size
    with pytest.raises(ValueError, match='input channels'):
        model(_input(96, chans=4, device='meta'))
    with pytest.raises(ValueError, match='4-D'):
        model(torch.randn(3, 96, 96, device='meta'))
    with pytest.raises(ValueError, match='too small'):
        model(_input(min_size - 1, device='meta'))


@pytest.mark.parametrize('name', MODELS)
def test_group_matcher_and_no_weight_decay(name):
    model = _meta(name)
    groups = group_parameters(model, model.group_matcher(coarse=False))
    assert len(groups) > 1
    assert len(group_parameters(model, model.group_matcher(coarse=True))) > 1
    param_names = [n for n, _ in model.named_parameters()]
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) or n == pattern for n in param_names), pattern


# ------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize('name', NUMERIC_MODELS)
def test_forward_finite_and_sizes(name):
    model = _eval_model(name)
    with torch.no_grad():
        for size in (SMALL, (200, 120)):
            out = model(_input(size))
            assert out.shape == (BATCH, model.num_classes)
            assert torch.isfinite(out).all(), f'non-finite output at {size}'


@pytest.mark.parametrize('name', NUMERIC_MODELS)
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


@pytest.mark.parametrize('name', NUMERIC_MODELS)
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


@pytest.mark.parametrize('name', NUMERIC_MODELS)
def test_every_parameter_gets_a_gradient(name):
    model = timm.create_model(name, num_classes=7).train()
    out = model(_input(SMALL))
    out = out if isinstance(out, torch.Tensor) else sum(out)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.numel() != p.numel()]
    assert not missing, f'parameters without gradient: {missing[:10]}'


@pytest.mark.parametrize('name', NUMERIC_MODELS)
def test_bf16_stays_bf16(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        model(_input(SMALL))  # an fp32 forward first: caches must not pin the dtype
        model.to(torch.bfloat16)
        out = model(_input(SMALL, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize('name', NUMERIC_MODELS)
def test_reparameterize_equivalent(name):
    model = timm.create_model(name).eval()
    randomize_batchnorm(model)
    x = _input(SMALL)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        out = fused(x)
        twice = reparameterize_model(fused)(x)
    assert sum(p.numel() for p in fused.parameters()) <= sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    torch.testing.assert_close(twice, out)


# ------------------------------------------------------------------------------ feature extraction
@pytest.mark.parametrize('name', NUMERIC_MODELS)
def test_features_only(name):
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True).eval()
    torch.manual_seed(0)  # same initial weights as the feature extractor
    ref = timm.create_model(name).eval()
    x = _input(96)
    with torch.no_grad():
        feats = model(x)
        taps = ref.forward_intermediates(x, intermediates_only=True)
    assert len(feats) == len(ref.feature_info) == 4
    assert model.feature_info.channels() == [f['num_chs'] for f in ref.feature_info]
    for feat, tap, reduction in zip(feats, taps, model.feature_info.reduction()):
        _assert_map_size(feat.shape[-2:], 96, reduction)
        torch.testing.assert_close(feat, tap)
    getter = timm.create_model(name, features_only=True, feature_cls='getter', out_indices=(1, 3)).eval()
    with torch.no_grad():
        got = getter(x)
    assert [g.shape[1] for g in got] == [ref.feature_info[1]['num_chs'], ref.feature_info[3]['num_chs']]


@pytest.mark.parametrize('name', NUMERIC_MODELS)
def test_prune_intermediate_layers(name):
    model = timm.create_model(name).eval()
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
@pytest.mark.parametrize('name', [n if n in NUMERIC_MODELS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MODELS])
def test_torchscript(name):
    """Every registered model scripts (there are no exclusions); the scripted model's output on a tiny input
    (the smallest the model accepts, batch 1) equals the eager one."""
    model = timm.create_model(name).eval()
    x = _input(model.min_input_size, batch=1)
    # unoptimised execution: a single call would otherwise pay for the profiling executor's graph optimisation
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))
