"""SLaK: exact sizes, official-checkpoint parity, re-parameterisation of the decomposed kernels, loading
training-script checkpoints, and the non-zero parameter / FLOP counts of sparse weights."""
import argparse
import pickle

import pytest
import timm
import torch
import torch.nn as nn
from timm.utils import reparameterize_model

from lkconv.bench.benchmark import (
    BenchSettings, ModelSpec, count_nonzero_params, format_table, run_benchmark, zero_weight_macs,
)
from lkconv.bench.flops import count_flops
from lkconv.layers import DecomposedLargeKernelConv, DepthwiseConv2d
from lkconv.models.slak import checkpoint_filter_fn
from lkconv.utils import count_params, relative_error
from helpers import randomize_batchnorm
from parity import create_from_official, load_fixture

TOLERANCE = 1e-4

# specs/slak.md §3: state-dict keys and widths, training form with a 1000-class head (the parameter counts,
# dense and deploy form, are in tests/helpers.py)
VARIANTS = ('slak_base', 'slak_small', 'slak_tiny')
STATE_DICT_KEYS = {'slak_tiny': 470, 'slak_small': 920, 'slak_base': 920}
WIDTHS = {'slak_tiny': [124, 249, 499, 998], 'slak_small': [124, 249, 499, 998], 'slak_base': [166, 332, 665, 1331]}


def model_args(init_kwargs):
    """Our constructor arguments for the official `SLaK(**init_kwargs)` of a fixture."""
    kernels = init_kwargs['kernel_size']
    return dict(depths=init_kwargs['depths'], dims=init_kwargs['dims'], width_factor=init_kwargs['width_factor'],
                kernel_sizes=kernels[:4], small_kernel=kernels[4], decompose=bool(init_kwargs['Decom']),
                branch_bn=init_kwargs['bn'], ls_init_value=init_kwargs['layer_scale_init_value'],
                head_init_scale=init_kwargs['head_init_scale'], drop_path_rate=init_kwargs['drop_path_rate'],
                in_chans=init_kwargs['in_chans'], num_classes=init_kwargs['num_classes'])


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize('name', VARIANTS)
def test_state_dict_and_widths(name):
    model = timm.create_model(name, device='meta')
    assert len(model.state_dict()) == STATE_DICT_KEYS[name]
    assert [info['num_chs'] for info in model.feature_info] == WIDTHS[name]
    kernels = [(b.large_kernel.tall.conv.kernel_size, b.large_kernel.wide.conv.kernel_size,
                b.large_kernel.small.conv.kernel_size) for b in (s.blocks[0] for s in model.stages)]
    assert kernels == [((k, 5), (5, k), (5, 5)) for k in (51, 49, 47, 13)]


# the deploy build's layout equals the re-parameterised one: tests/test_contract.py::test_parameter_counts


# ------------------------------------------------------------------------------------------------ parity
@pytest.fixture(scope='module')
def fixture_decom(parity_dir):
    return load_fixture(parity_dir / 'slak_small.pt')


@pytest.fixture(scope='module')
def fixture_nodecom(parity_dir):
    return load_fixture(parity_dir / 'slak_small_nodecom.pt')


def _official(fixture, tmp_path_factory):
    args = model_args(fixture['init_kwargs'])
    return create_from_official('slak_tiny', fixture['state_dict'], tmp_path_factory.mktemp('ckpt'), **args).eval()


@pytest.fixture(scope='module')
def official_decom(fixture_decom, tmp_path_factory):
    return _official(fixture_decom, tmp_path_factory)


@pytest.fixture(scope='module')
def official_nodecom(fixture_nodecom, tmp_path_factory):
    return _official(fixture_nodecom, tmp_path_factory)


@pytest.mark.parametrize('which', ['decom', 'nodecom'])
def test_parity_logits_and_stages(which, request):
    fixture, model = request.getfixturevalue(f'fixture_{which}'), request.getfixturevalue(f'official_{which}')
    assert count_params(model) == {'decom': 3_381_724, 'nodecom': 1_132_814}[which]  # the fixture README's
    with torch.no_grad():
        logits = model(fixture['input'])
        stages = model.forward_intermediates(fixture['input'], intermediates_only=True)
    errors = [relative_error(logits, fixture['logits'])]
    errors += [relative_error(ours, ref) for ours, ref in zip(stages, fixture['stage_features'])]
    assert len(errors) == 5 and max(errors) <= TOLERANCE, errors


def test_decomposed_deploy_form_keeps_two_bands(fixture_decom, official_decom):
    deployed = reparameterize_model(official_decom)
    with torch.no_grad():
        logits = deployed(fixture_decom['input'])
    assert relative_error(logits, fixture_decom['logits']) <= TOLERANCE
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    for stage, k in zip(deployed.stages, (51, 49, 47, 13)):
        for block in stage.blocks:
            lk = block.large_kernel
            assert lk.square is None and lk.small is None
            assert lk.tall.kernel_size == (k, 5) and lk.tall.padding == (k // 2, 2) and lk.tall.bias is not None
            assert lk.wide.kernel_size == (5, k) and lk.wide.padding == (2, k // 2) and lk.wide.bias is None
    assert count_params(deployed) == 3_344_404


def test_nodecom_deploy_form_is_the_official_merge(fixture_nodecom, official_nodecom):
    """The official `merge_kernel()` result: kernels, logits, and its checkpoint loading into `deploy=True`."""
    deployed = reparameterize_model(official_nodecom)
    assert count_params(deployed) == 1_115_454  # the fixture README's deploy count
    official = checkpoint_filter_fn(fixture_nodecom['deploy_state_dict'], deployed)
    ours = deployed.state_dict()
    merged = [k for k in ours if k.endswith('large_kernel.square.weight')]
    assert len(merged) == 8
    for key in merged + [k.replace('weight', 'bias') for k in merged]:
        assert relative_error(ours[key], official[key]) <= 1e-6, key
    with torch.no_grad():
        assert relative_error(deployed(fixture_nodecom['input']), fixture_nodecom['deploy_logits']) <= TOLERANCE

    args = model_args(fixture_nodecom['init_kwargs'])
    model = timm.create_model('slak_tiny', deploy=True, **args).eval()
    model.load_state_dict(official, strict=True)
    with torch.no_grad():
        assert relative_error(model(fixture_nodecom['input']), fixture_nodecom['deploy_logits']) <= TOLERANCE


@pytest.mark.parametrize('wrapper', ['model', 'state_dict', 'module_prefix', 'model_ema'])
def test_official_checkpoint_wrappers_load_strictly(fixture_decom, wrapper):
    state_dict = fixture_decom['state_dict']
    if wrapper == 'module_prefix':
        checkpoint = {'module.' + k: v for k, v in state_dict.items()}
    elif wrapper == 'model_ema':  # as timm's load_state_dict, the EMA weights win over `model`
        checkpoint = {'model': {k: torch.zeros_like(v) for k, v in state_dict.items()}, 'model_ema': state_dict}
    else:
        checkpoint = {wrapper: state_dict, 'epoch': 3}
    model = timm.create_model('slak_tiny', **model_args(fixture_decom['init_kwargs']))
    model.load_state_dict(checkpoint_filter_fn(checkpoint, model), strict=True)
    assert torch.equal(model.stem[0].weight, state_dict['downsample_layers.0.0.weight'])


# -------------------------------------------------------------------------- training-script checkpoints
def _training_script_checkpoint(fixture, path):
    """A checkpoint as the official main.py writes it: weights under `model`, the arguments as a Namespace."""
    args = argparse.Namespace(model='SLaK_tiny', Decom=True, width_factor=1.3, kernel_size=[51, 49, 47, 13, 5])
    torch.save({'model': fixture['state_dict'], 'epoch': 299, 'args': args}, path)
    with pytest.raises(pickle.UnpicklingError):  # what the allow-list is for
        torch.load(path, weights_only=True)
    return path


@pytest.mark.parametrize('source', ['file', 'url'])
def test_training_script_checkpoint_loads_without_unsafe_unpickling(fixture_decom, tmp_path, source):
    path = _training_script_checkpoint(fixture_decom, tmp_path / 'checkpoint-best.pth')
    overlay = dict(file=str(path)) if source == 'file' else dict(url=path.as_uri())
    model = timm.create_model('slak_tiny', pretrained=True, pretrained_cfg_overlay=overlay,
                              cache_dir=str(tmp_path / 'cache'), **model_args(fixture_decom['init_kwargs'])).eval()
    with torch.no_grad():
        assert relative_error(model(fixture_decom['input']), fixture_decom['logits']) <= TOLERANCE
    if source == 'url':  # downloaded once, to a file named after the model and the URL
        assert [p.name.split('-')[0] for p in (tmp_path / 'cache').iterdir()] == ['slak_tiny']


# ---------------------------------------------------------------------------------- the layer alone
def _layer_case(kernel_size, small_kernel, decompose, bn):
    layer = DecomposedLargeKernelConv(6, kernel_size, small_kernel, decompose=decompose, bn=bn).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return randomize_batchnorm(layer)


@pytest.mark.parametrize('kernel_size, small_kernel, decompose, bn, deploy_kernels', [
    (13, 5, True, True, [(13, 5), (5, 13)]),  # K > 2s: two bands (130 taps) beat the square (169)
    (13, 5, True, False, [(13, 5), (5, 13)]),
    (9, 5, True, True, [(9, 9)]),  # K <= 2s: the square (81 taps) beats two bands (90)
    (7, 9, True, True, [(9, 9)]),  # s > K: no small kernel, bands merged into their 9x9 bounding square
    (11, 3, False, True, [(11, 11)]),  # no decomposition: the official merge
    (5, 7, False, True, [(5, 5)]),
])
def test_layer_reparameterisation_is_exact_with_fewest_taps(kernel_size, small_kernel, decompose, bn,
                                                            deploy_kernels):
    layer = _layer_case(kernel_size, small_kernel, decompose, bn)
    x = torch.randn(2, 6, 17, 15)
    with torch.no_grad():
        ref = layer(x)
        layer.reparameterize()
        out = layer(x)
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        layer.reparameterize()  # a second time changes nothing
    assert out.shape == ref.shape == x.shape
    assert relative_error(out, ref) <= 1e-5
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == deploy_kernels and all(isinstance(c, DepthwiseConv2d) for c in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in layer.modules())
    assert all(torch.equal(state[k], v) for k, v in layer.state_dict().items())


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated')
@pytest.mark.parametrize('decompose', [True, False])
def test_layer_scripts_in_both_forms(decompose):
    layer = _layer_case(13, 5, decompose, True)
    x = torch.randn(1, 6, 9, 11)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for _ in range(2):  # training form, then deploy form
            torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))
            layer.reparameterize()


def test_bands_pad_per_axis():
    """Same-size output for every branch on a non-square input (one padding value for both axes would not)."""
    layer = DecomposedLargeKernelConv(3, 51, 5)
    assert (layer.tall.conv.padding, layer.wide.conv.padding, layer.small.conv.padding) == ((25, 2), (2, 25), (2, 2))
    assert layer(torch.randn(1, 3, 9, 20)).shape == (1, 3, 9, 20)


# ------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize('kwargs, message', [
    (dict(kernel_sizes=(51, 49, 47)), 'same length'),
    (dict(kernel_sizes=(51, 49, 46, 13)), 'odd positive int'),
    (dict(small_kernel=4), 'odd positive int'),
    (dict(small_kernel=0), 'odd positive int'),
    (dict(width_factor=0.0), 'width_factor'),
    (dict(dims=(96, 192, 384, 0)), 'without channels'),
])
def test_bad_arguments_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model('slak_tiny', device='meta', **kwargs)


# ------------------------------------------------------------------------------- non-zero counts (bench)
def _masked_slak(fixture):
    """The reduced SLaK of a fixture with known zeros: the first 1000 stem-conv weights, 3 rows of the head."""
    model = timm.create_model('slak_tiny', **model_args(fixture['init_kwargs'])).eval()
    with torch.no_grad():
        model.stem[0].weight.view(-1)[:1000] = 0
        model.head.fc.weight[:3] = 0
    zeros = {'stem': 1000, 'head': 3 * model.head.fc.weight.shape[1]}
    return model, zeros


def test_nonzero_parameters_and_macs_of_a_known_mask(fixture_decom):
    model, zeros = _masked_slak(fixture_decom)
    assert count_nonzero_params(model) == 3_381_724 - zeros['stem'] - zeros['head']
    # each stem weight is used once per output pixel (56 x 56 at 224), each head weight once per image
    assert zero_weight_macs(model, (3, 224, 224)) == zeros['stem'] * 56 * 56 + zeros['head']
    assert zero_weight_macs(model, (3, 96, 96)) == zeros['stem'] * 24 * 24 + zeros['head']
    assert zero_weight_macs(timm.create_model('slak_tiny', **model_args(fixture_decom['init_kwargs'])),
                            (3, 224, 224)) == 0  # initialised weights are dense
    # the fixture's own sparse weights: as many zeros as its recorded sparsity says
    official = fixture_decom['state_dict']
    recorded = sum(round(fraction * official[name].numel()) for name, fraction in fixture_decom['sparsity'].items())
    dense = timm.create_model('slak_tiny', **model_args(fixture_decom['init_kwargs']))
    dense.load_state_dict(checkpoint_filter_fn(official, dense))
    assert abs(count_params(dense) - count_nonzero_params(dense) - recorded) <= len(fixture_decom['sparsity'])


def test_bench_reports_nonzero_counts_beside_dense_ones(fixture_decom, monkeypatch):
    model, zeros = _masked_slak(fixture_decom)
    create_model = timm.create_model
    monkeypatch.setattr(timm, 'create_model', lambda name, **kwargs: model if name == 'slak_tiny'
                        else create_model(name, **kwargs))
    settings = BenchSettings(bench='profile', forms=('train',), device='cpu', img_size=224)
    result = run_benchmark([ModelSpec('slak_tiny', 'lkconv')], settings)
    (row,) = result.rows
    dense_macs = count_flops(model, (3, 224, 224)).gmacs
    assert row['param_count'] == round(3_381_724 / 1e6, 3)
    assert row['param_count_nonzero'] == round((3_381_724 - zeros['stem'] - zeros['head']) / 1e6, 3)
    assert row['infer_gmacs'] == round(dense_macs, 4)
    assert row['infer_gmacs_nonzero'] == round(dense_macs - (zeros['stem'] * 56 * 56 + zeros['head']) / 1e9, 4)
    assert row['infer_gmacs_nonzero'] < row['infer_gmacs']
    header = format_table(result).splitlines()[0]
    assert 'non-zero M' in header and 'non-zero GMACs' in header
