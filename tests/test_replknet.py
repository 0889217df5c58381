"""RepLKNet: exact sizes, official-checkpoint parity (training and re-parameterised forms), the large-kernel
layer's re-parameterisation, published FLOPs and argument errors."""
import pytest
import timm
import torch
from timm.models import group_parameters
from timm.utils import reparameterize_model

from lkconv.bench.flops import count_flops
from lkconv.layers import ReparamLargeKernelConv
from lkconv.models.replknet import RepLKNet, checkpoint_filter_fn
from lkconv.utils import count_params, relative_error
from helpers import DEPLOY_PARAM_COUNTS, randomize_batchnorm
from parity import create_from_official, load_fixture

TOLERANCE = 1e-4
VARIANTS = ['replknet_31b', 'replknet_31l', 'replknet_xl']

# specs/replknet.md §3: the state_dict sizes of both forms (the parameter counts are in tests/helpers.py)
STATE_DICT_KEYS = {'replknet_31b': (1171, 931), 'replknet_31l': (1171, 931), 'replknet_xl': (1027, 931)}


@pytest.mark.parametrize('name', VARIANTS)
def test_deploy_build_has_the_reparameterised_size(name):
    model = timm.create_model(name, num_classes=1000, device='meta')
    built_deployed = timm.create_model(name, num_classes=1000, deploy=True, device='meta')
    fused = reparameterize_model(model)
    assert count_params(fused) == count_params(built_deployed) == DEPLOY_PARAM_COUNTS[name]
    assert (len(model.state_dict()), len(fused.state_dict())) == STATE_DICT_KEYS[name]
    # its layout equals the re-parameterised one key for key (tests/test_contract.py::test_parameter_counts)
    assert not any('lkb_origin' in k or 'small_conv' in k for k in built_deployed.state_dict())


# ------------------------------------------------------------------------------------------------- parity
# Each fixture is a reduced model built by the official class; `init_kwargs` holds its official arguments.
FIXTURES = {'replknet_small': 'replknet_31b', 'replknet_xl_tiny': 'replknet_xl'}


def _model_args(init_kwargs):
    """The official constructor arguments in this implementation's names (0: no small kernel, as None would be
    dropped by timm.create_model)."""
    return dict(
        depths=init_kwargs['layers'], dims=init_kwargs['channels'],
        large_kernel_sizes=init_kwargs['large_kernel_sizes'], small_kernel_size=init_kwargs['small_kernel'] or 0,
        dw_ratio=init_kwargs['dw_ratio'], ffn_ratio=init_kwargs['ffn_ratio'],
        num_classes=init_kwargs['num_classes'], drop_path_rate=init_kwargs['drop_path_rate'],
    )


@pytest.fixture(scope='module', params=list(FIXTURES))
def recorded(request, parity_dir):
    data = load_fixture(parity_dir / f'{request.param}.pt')
    data['name'] = FIXTURES[request.param]
    return data


@pytest.fixture(scope='module')
def official(recorded, tmp_path_factory):
    """The fixture's training-form checkpoint loaded through the pretrained filter, strictly, in eval mode."""
    return create_from_official(
        recorded['name'], recorded['state_dict'], tmp_path_factory.mktemp('ckpt'),
        **_model_args(recorded['init_kwargs'])).eval()


def test_parity_logits_and_stages(recorded, official):
    with torch.no_grad():
        logits = official(recorded['input'])
        stages = official.forward_intermediates(recorded['input'], intermediates_only=True)
    errors = [relative_error(logits, recorded['logits'])]
    errors += [relative_error(ours, ref) for ours, ref in zip(stages, recorded['stage_features'])]
    assert len(stages) == len(recorded['stage_features']) == 4
    assert max(errors) <= TOLERANCE, errors


def test_parity_after_reparameterisation(recorded, official):
    deployed = reparameterize_model(official)
    with torch.no_grad():
        logits = deployed(recorded['input'])
    assert relative_error(logits, recorded['deploy_logits']) <= TOLERANCE
    assert not any(isinstance(m, ReparamLargeKernelConv) and m.lkb_origin is not None for m in deployed.modules())
    # as the official structural re-parameterisation: the pre-BNs and the 1x1 conv-BN pairs stay
    assert len(deployed.state_dict()) == len(recorded['deploy_state_dict'])


def test_deploy_form_checkpoint_loads_into_the_deploy_build(recorded, tmp_path):
    assert 'deploy_state_dict' in recorded, sorted(recorded)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in recorded['deploy_state_dict'].items()}
    model = create_from_official(
        recorded['name'], state_dict, tmp_path, deploy=True, **_model_args(recorded['init_kwargs'])).eval()
    with torch.no_grad():
        logits = model(recorded['input'])
    assert relative_error(logits, recorded['deploy_state_dict_logits']) <= TOLERANCE


@pytest.mark.parametrize('wrapper', ['model', 'state_dict', 'module_prefix'])
def test_official_checkpoint_wrappers_load_strictly(recorded, wrapper):
    state_dict = recorded['state_dict']
    if wrapper == 'module_prefix':
        checkpoint = {'module.' + k: v for k, v in state_dict.items()}
    else:
        checkpoint = {wrapper: state_dict, 'epoch': 3}
    model = timm.create_model(recorded['name'], **_model_args(recorded['init_kwargs']))
    model.load_state_dict(checkpoint_filter_fn(checkpoint, model), strict=True)
    # a mapped checkpoint passes through the filter unchanged
    mapped = checkpoint_filter_fn(checkpoint, model)
    assert checkpoint_filter_fn(mapped, model) == mapped


def test_shared_link_weights_are_kept_under_the_official_file_name(recorded, tmp_path):
    """A cfg `url` of (share link, official file name) is downloaded once to that name and loaded as a file."""
    source = tmp_path / 'uc'  # what a Google Drive direct-download path ends in
    torch.save({'model': recorded['state_dict']}, source)
    cache = tmp_path / 'cache'
    overlay = dict(url=(source.as_uri(), 'RepLKNet-official.pth'))
    model = timm.create_model(recorded['name'], pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=str(cache),
                              **_model_args(recorded['init_kwargs'])).eval()
    assert [p.name for p in cache.iterdir()] == ['RepLKNet-official.pth']
    with torch.no_grad():
        assert relative_error(model(recorded['input']), recorded['logits']) <= TOLERANCE


def test_incomplete_checkpoint_is_refused(recorded, tmp_path):
    state_dict = dict(recorded['state_dict'])
    del state_dict['stem.1.bn.running_var']
    with pytest.raises(RuntimeError, match='stem.1.bn.running_var'):
        create_from_official(recorded['name'], state_dict, tmp_path, **_model_args(recorded['init_kwargs']))


def test_downstream_feature_norms(parity_dir, tmp_path):
    """The official downstream XL form (no head, a BatchNorm on each returned feature map) from its checkpoint."""
    recorded = load_fixture(parity_dir / 'replknet_xl_tiny.pt')
    init_kwargs = recorded['downstream_init_kwargs']
    assert init_kwargs['norm_intermediate_features'] and init_kwargs['num_classes'] is None
    args = dict(_model_args(init_kwargs), num_classes=0, feature_norms=True)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in recorded['downstream_state_dict'].items()}
    model = timm.create_model('replknet_xl', **args).eval()
    # the downstream file has no final norm; the model keeps one (a feature extractor drops it)
    missing, unexpected = model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=False)
    assert not unexpected and {k.split('.')[0] for k in missing} == {'norm_pre'}
    x = recorded['input']
    with torch.no_grad():
        features = model.forward_intermediates(x, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    errors = [relative_error(ours, ref) for ours, ref in zip(features, recorded['downstream_outputs'])]
    assert len(features) == 4 and max(errors) <= TOLERANCE, errors
    torch.testing.assert_close(last_two, features[2:])
    # features_only goes through forward_intermediates, so it returns the normalised maps too
    extractor = timm.create_model('replknet_xl', features_only=True, **args).eval()
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith('norm_pre.')}  # pruned: no final norm
    extractor.model.load_state_dict(kept, strict=True)
    with torch.no_grad():
        extracted = extractor(x)
    for ours, ref in zip(extracted, recorded['downstream_outputs']):
        assert relative_error(ours, ref) <= TOLERANCE


# ------------------------------------------------------------------------------------------ the layer
@pytest.mark.parametrize('kernel_size, small_kernel_size', [(31, 5), (13, 3), (27, None), (7, 7)])
def test_large_kernel_reparameterisation(kernel_size, small_kernel_size):
    layer = randomize_batchnorm(ReparamLargeKernelConv(8, kernel_size, small_kernel_size)).eval()
    x = torch.randn(2, 8, 20, 17)
    with torch.no_grad():
        ref = layer(x)
        layer.reparameterize()
        out = layer(x)
        layer.reparameterize()  # a second call changes nothing
        again = layer(x)
    assert layer.lkb_origin is None and layer.small_conv is None
    assert layer.lkb_reparam.weight.shape == (8, 1, kernel_size, kernel_size)
    assert relative_error(out, ref) <= 1e-5
    torch.testing.assert_close(again, out)
    assert [k for k in layer.state_dict()] == ['lkb_reparam.weight', 'lkb_reparam.bias']


@pytest.mark.parametrize('kwargs, match', [
    (dict(kernel_size=30), 'large kernel'),
    (dict(kernel_size=13, small_kernel_size=15), 'small kernel'),
    (dict(kernel_size=13, small_kernel_size=4), 'small kernel'),
])
def test_large_kernel_layer_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReparamLargeKernelConv(8, device='meta', **kwargs)


# ------------------------------------------------------------------------------------------ the model
def test_deploy_construction():
    model = timm.create_model('replknet_31b', deploy=True, device='meta')
    units = [m for m in model.modules() if isinstance(m, ReparamLargeKernelConv)]
    assert len(units) == 24
    assert all(u.lkb_origin is None and u.lkb_reparam.bias is not None for u in units)
    assert [u.kernel_size for u in units[:5]] == [31, 31, 29, 29, 27]


def test_settings_reach_the_blocks():
    model = timm.create_model('replknet_xl', drop_path_rate=0.3, device='meta')
    blocks = [b for s in model.stages for b in s.blocks]
    assert len(blocks) == 48
    # the RepLK block and the ConvFFN of a pair share one rate; the last pair has the full rate
    assert blocks[-2].drop_path.drop_prob == blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert isinstance(blocks[0].drop_path, torch.nn.Identity) and isinstance(blocks[1].drop_path, torch.nn.Identity)
    assert blocks[0].large_kernel.lkb_origin.conv.weight.shape == (384, 1, 27, 27)  # dw_ratio 1.5
    assert blocks[0].large_kernel.small_conv is None
    assert blocks[1].pw1.conv.weight.shape == (1024, 256, 1, 1)  # ffn_ratio 4
    assert model.pretrained_cfg['mean'] == (0.5, 0.5, 0.5)


@pytest.mark.parametrize('kwargs, match', [
    (dict(depths=(2, 2, 2)), 'same length'),
    (dict(large_kernel_sizes=(31, 29, 28, 13)), 'large kernel'),
    (dict(small_kernel_size=15), 'small kernel'),
    (dict(small_kernel_size=4), 'small kernel'),
    (dict(dw_ratio=0), 'dw_ratio'),
    (dict(ffn_ratio=-1), 'ffn_ratio'),
])
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RepLKNet(device='meta', **kwargs)


def test_pretrained_cfgs_follow_the_official_evaluation():
    cfgs = {n: timm.models.get_pretrained_cfg(n) for n in timm.list_pretrained('replknet_*')}
    assert sorted(cfgs) == sorted([
        'replknet_31b.in1k', 'replknet_31b.in1k_384', 'replknet_31b.in22k_ft_in1k', 'replknet_31b.in22k_ft_in1k_384',
        'replknet_31b.in22k', 'replknet_31l.in22k_ft_in1k_384', 'replknet_31l.in22k',
        'replknet_xl.megdata73m_ft_in1k_320', 'replknet_xl.megdata73m'])
    for name, cfg in cfgs.items():
        assert cfg.url[0].startswith('https://drive.google.com/') and cfg.url[1].startswith('RepLKNet-'), name
        assert cfg.license == 'mit' and cfg.interpolation == 'bicubic'
        size = cfg.input_size[-1]
        assert cfg.pool_size == (size // 32, size // 32)
        # >= 384: resized to the full size without a crop; below: short side to size / 0.875, centre crop
        assert (cfg.crop_pct, cfg.crop_mode) == ((1.0, 'squash') if size >= 384 else (0.875, 'center')), name
        assert cfg.num_classes == (21841 if name.endswith(('.in22k', '.megdata73m')) else 1000), name
        assert cfg.mean == ((0.5,) * 3 if name.startswith('replknet_xl') else (0.485, 0.456, 0.406)), name
    assert cfgs['replknet_xl.megdata73m_ft_in1k_320'].input_size == (3, 320, 320)


def _official_layer_id(name):
    """The official layer-decay group of a parameter (specs/replknet.md §11), in this layout's names."""
    parts = name.split('.')
    if parts[0] == 'stem':
        return 0
    if parts[0] != 'stages':
        return 13  # final norm, head
    stage, part = int(parts[1]), parts[2]
    if part == 'downsample':  # the transition after stage - 1
        return {1: 1, 2: 2, 3: 11}[stage]
    return {0: 1, 1: 2, 3: 12}.get(stage, 3 + int(parts[3]) // 4)


def test_layer_decay_groups_are_the_official_ones():
    model = timm.create_model('replknet_31b', device='meta')
    layer_ids = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert layer_ids == {n: _official_layer_id(n) for n, _ in model.named_parameters()}
    assert max(layer_ids.values()) == 13
    assert len(group_parameters(model, model.group_matcher(coarse=True))) > 1


# published deploy-form GMACs (specs/replknet.md §8: multiply-accumulates), (input size, value)
PUBLISHED_GMACS = [(224, 15.3), (384, 45.1)]


@pytest.mark.slow
def test_deploy_gmacs_match_published(one_thread):
    model = reparameterize_model(timm.create_model('replknet_31b').eval())
    for size, published in PUBLISHED_GMACS:
        flops = count_flops(model, (3, size, size))
        assert flops.not_counted == {}
        assert abs(flops.gmacs - published) <= 0.03 * published, (size, flops.macs)
