"""UniRepLKNet: exact sizes, official-checkpoint parity, re-parameterisation and robustness."""
import re

import pytest
import timm
import torch
from timm.utils import reparameterize_model

from lkconv.models.unireplknet import UniRepLKNet, UniRepLKNetBlock, checkpoint_filter_fn
from parity import create_from_official, load_fixture, rel_error

TOLERANCE = 1e-4


# parameter counts of both forms and the deploy build's layout: tests/helpers.py, checked in tests/test_contract.py


@pytest.fixture(scope='module')
def fixture_a(parity_dir):
    return load_fixture(parity_dir / 'unireplknet_a.pt')


@pytest.fixture(scope='module')
def official_a(fixture_a, tmp_path_factory):
    return create_from_official('unireplknet_a', fixture_a['state_dict'], tmp_path_factory.mktemp('ckpt')).eval()


def test_parity_logits_and_stages(fixture_a, official_a):
    with torch.no_grad():
        logits = official_a(fixture_a['input'])
        stages = official_a.forward_intermediates(fixture_a['input'], intermediates_only=True)
    errors = [rel_error(logits, fixture_a['logits'])]
    errors += [rel_error(ours, ref) for ours, ref in zip(stages, fixture_a['stage_features'])]
    assert max(errors) <= TOLERANCE, errors


def test_parity_after_reparameterisation(fixture_a, official_a):
    deployed = reparameterize_model(official_a)
    with torch.no_grad():
        logits = deployed(fixture_a['input'])
    assert rel_error(logits, fixture_a['deploy_logits']) <= TOLERANCE
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())


@pytest.mark.parametrize('wrapper', ['model', 'state_dict', 'module_prefix'])
def test_official_checkpoint_wrappers_load_strictly(fixture_a, wrapper):
    state_dict = fixture_a['state_dict']
    if wrapper == 'module_prefix':
        checkpoint = {'module.' + k: v for k, v in state_dict.items()}
    else:
        checkpoint = {wrapper: state_dict, 'epoch': 3}
    model = timm.create_model('unireplknet_a')
    model.load_state_dict(checkpoint_filter_fn(checkpoint, model), strict=True)


def test_deploy_construction_loads_reparameterised_checkpoints(fixture_a, official_a, tmp_path):
    deployed = reparameterize_model(official_a)
    ours = timm.create_model('unireplknet_a', deploy=True).eval()
    ours.load_state_dict(deployed.state_dict(), strict=True)
    # an official deploy-form checkpoint (lk_origin with bias, no BN) maps onto the deploy build too
    official_deploy = _to_official_deploy_layout(deployed.state_dict())
    model = create_from_official('unireplknet_a', official_deploy, tmp_path, deploy=True).eval()
    with torch.no_grad():
        assert rel_error(model(fixture_a['input']), fixture_a['deploy_logits']) <= TOLERANCE


def _to_official_deploy_layout(state_dict):
    """Our deploy keys -> the official deploy keys (the inverse of the filter, to build a test input)."""
    large_blocks = {k[:-len('conv_dw.weight')] for k, v in state_dict.items()
                    if k.endswith('conv_dw.weight') and v.shape[-1] >= 7}
    renames = (
        (r'^stem\.', 'downsample_layers.0.'), (r'^stages\.(\d+)\.downsample\.', r'downsample_layers.\1.'),
        (r'^head\.norm\.', 'norm.'), (r'^head\.fc\.', 'head.'), (r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.'),
        (r'se\.fc1\.', 'se.down.'), (r'se\.fc2\.', 'se.up.'), (r'mlp\.fc1\.', 'pwconv1.1.'),
        (r'mlp\.grn\.weight', 'act.1.gamma'), (r'mlp\.fc2\.', 'pwconv2.0.'),
    )
    out = {}
    for key, value in state_dict.items():
        is_large = any(key.startswith(block + 'conv_dw.') for block in large_blocks)
        key = key.replace('conv_dw.', 'dwconv.lk_origin.' if is_large else 'dwconv.')
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


@pytest.mark.parametrize('kernel_size', [3, 5, 7, 9, 11, 13, 15, 17])
def test_block_reparameterisation_every_kernel(kernel_size):
    block = UniRepLKNetBlock(16, kernel_size, ls_init_value=0.5)
    _randomize(block)
    block.eval()
    x = torch.randn(2, 16, 20, 20)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        out = block(x)
    assert block.gamma is None and block.mlp.grn.bias is None
    assert rel_error(out, ref) <= 1e-5


def _randomize(module):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=gen) * 0.5 + 0.5 if 'running_var' in name \
                    else torch.randn(tensor.shape, generator=gen) * 0.2
                tensor.copy_(values)


def test_kernel_sizes_configurable():
    ks = ((3, 3), (7, 7), (11,) * 6, (17, 17))
    model = timm.create_model('unireplknet_a', kernel_sizes=ks, device='meta')
    assert model.stages[3].blocks[0].conv_dw.kernel_size == 17
    assert model.stages[2].blocks[0].conv_dw.kernel_size == 11
    with pytest.raises(ValueError, match='kernel size'):
        timm.create_model('unireplknet_a', kernel_sizes=((3, 3), (6, 6), (13,) * 6, (13, 13)), device='meta')
    with pytest.raises(ValueError, match='kernel_sizes'):
        UniRepLKNet(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), device='meta')


def test_settings_reach_the_blocks():
    model = timm.create_model(
        'unireplknet_a', drop_path_rate=0.3, ls_init_value=0.25, head_init_scale=0.001, device='meta')
    blocks = [b for s in model.stages for b in s.blocks]
    assert blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert blocks[0].gamma.shape == (40,)
    model = timm.create_model('unireplknet_a', ls_init_value=0.25, head_init_scale=0.001)
    assert torch.all(model.stages[0].blocks[0].gamma == 0.25)
    assert model.head.fc.weight.abs().max() < 0.002 * 2


def test_small_and_odd_inputs_are_finite():
    model = timm.create_model('unireplknet_a').eval()
    _randomize(model)
    with torch.no_grad():
        for size in ((64, 64), (384, 128), (200, 120)):
            x = torch.randn(1, 3, *size)
            out = model(x)
            assert torch.isfinite(out).all(), size
