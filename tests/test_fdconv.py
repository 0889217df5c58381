"""FDConv: parity of the layer with the official one, conversion from spatial weights, the FDConv models,
their pretrained path from base weights, and what FLOP counting sees of the layer."""
import re

import pytest
import timm
import torch
import torch.nn as nn

from lkconv.bench.flops import count_flops
from lkconv.layers import FDConv, convert_state_dict_to_fdconv, convert_to_fdconv, to_fdconv
from lkconv.layers.fdconv.fbm import band_masks
from lkconv.layers.fdconv.ksm import ksm_local_kernel_size
from lkconv.layers.fdconv.weight import frequency_groups, spatial_to_fourier, synthesize_weight
from lkconv.models import FDConvResNet, InceptionNeXt, UniRepLKNet
from parity import create_from_official, load_fixture, rel_error
from helpers import randomize_batchnorm

PARITY_CASES = ['k3_64_64', 'k3_128_128_s2', 'k1_256_64', 'k1_64_256', 'k3_64_64_bias']


def _rel(ours, ref):
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@pytest.fixture(scope='module')
def fdconv_cases(parity_dir):
    cases = torch.load(parity_dir / 'fdconv_layers.pt', weights_only=True)['cases']
    for case in cases.values():
        case['state_dict'] = {k: v.float() if v.is_floating_point() else v for k, v in case['state_dict'].items()}
    return cases


# ------------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize('case', PARITY_CASES)
def test_parity_with_official_layer(fdconv_cases, case):
    data = fdconv_cases[case]
    layer = FDConv(**data['init_kwargs']).eval()
    layer.load_state_dict(data['state_dict'], strict=True)  # official key names
    with torch.no_grad():
        err = rel_error(layer(data['input']), data['output'])
    assert err < 1e-4, f'{case}: relative error {err:.2e}'

    # our own keys round-trip, and none of the official names or non-persistent buffers are saved
    ours = layer.state_dict()
    assert not any(re.match(r'(dft_weight|KSM_|FBM\.)', k) for k in ours)
    assert not any('band_index' in k or 'masks' in k for k in ours)
    again = FDConv(**data['init_kwargs']).eval()
    again.load_state_dict(ours, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again(data['input']), layer(data['input']))


def test_layout_of_an_active_layer():
    layer = FDConv(64, 128, 3, padding=1, bias=False, kernel_num=64)
    keys = layer.state_dict().keys()
    assert layer.use_fdconv and 'weight' not in keys
    assert layer.fourier_weight.shape == (1, 128 * 3, 64 * 3 // 2 + 1, 2)
    assert layer.ksm_local.conv.weight.shape == (128 * 9, 1, 5)
    assert layer.ksm_global.spatial_fc.out_channels == 9 and layer.fbm is not None
    pointwise = FDConv(256, 64, 1, kernel_num=64)
    assert pointwise.ksm_global.spatial_fc is None and pointwise.fbm is None
    assert pointwise.ksm_global.fc.out_channels == 16  # max(256 / 16, 16)


@pytest.mark.parametrize('args', [
    dict(in_channels=3, out_channels=64, kernel_size=7, stride=2, padding=3),  # the ResNet stem
    dict(in_channels=16, out_channels=64, kernel_size=3, padding=1),  # min channels <= 16
    dict(in_channels=64, out_channels=64, kernel_size=5, padding=2),  # kernel not 1 or 3
    dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, groups=2),
])
def test_plain_where_the_rule_says(args):
    layer = FDConv(**args).eval()
    assert not layer.use_fdconv and 'weight' in layer.state_dict()
    conv = nn.Conv2d(**args)
    conv.load_state_dict(layer.state_dict())
    x = torch.randn(2, args['in_channels'], 12, 12)
    with torch.no_grad():
        out = conv(x)
        torch.testing.assert_close(layer(x), out)
    macs = 2 * conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] ** 2 * out[0, 0].numel()
    assert count_flops(layer, tuple(x.shape[1:]), batch_size=2).macs == dict(conv=macs)


def test_batch_size_layouts_and_gradients():
    torch.manual_seed(0)
    layer = FDConv(32, 48, 3, stride=2, padding=1, bias=True, kernel_num=8)
    x = torch.randn(3, 32, 14, 14)
    layer.eval()
    with torch.no_grad():
        ref = layer(x)
        torch.testing.assert_close(layer(x[1:2]), ref[1:2], rtol=1e-5, atol=1e-5)  # samples are independent
        out = layer(x.contiguous(memory_format=torch.channels_last))
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        # a model moved to channels_last converts every 4-D parameter, the Fourier weight included
        layer.to(memory_format=torch.channels_last)
        assert not layer.fourier_weight.is_contiguous()
        torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-5, atol=1e-5)
    layer.train()
    for batch in (1, 3):  # batch 1 trains (the official layer's BatchNorm raises)
        layer.zero_grad(set_to_none=True)
        layer(x[:batch]).square().mean().backward()
        missing = [n for n, p in layer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, missing


def test_low_precision():
    torch.manual_seed(0)
    layer = FDConv(32, 32, 3, padding=1, bias=True, kernel_num=8).eval()
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        ref = layer(x)
        for dtype, tolerance in ((torch.bfloat16, 3e-2), (torch.float16, 3e-3)):
            with torch.autocast('cpu', dtype=dtype):
                out = layer(x)
            assert out.dtype == dtype and _rel(out, ref) < tolerance
        layer.to(torch.bfloat16)
        out = layer(x.bfloat16())
        assert out.dtype == torch.bfloat16 and _rel(out, ref) < 3e-2
        assert layer.fbm(x.bfloat16()).dtype == torch.bfloat16  # FBM's float32 FFTs do not leak


def test_meta_device_and_torchscript():
    layer = FDConv(32, 64, 3, padding=1, kernel_num=8, device='meta', dtype=torch.bfloat16)
    assert all(t.device.type == 'meta' for t in list(layer.parameters()) + list(layer.buffers()))
    assert layer.fourier_weight.dtype == torch.bfloat16
    assert layer(torch.randn(2, 32, 9, 7, device='meta', dtype=torch.bfloat16)).shape == (2, 64, 9, 7)
    layer = layer.to_empty(device='cpu')
    for module in layer.modules():
        if hasattr(module, 'init_non_persistent_buffers'):
            module.init_non_persistent_buffers()
    reference = FDConv(32, 64, 3, padding=1, kernel_num=8)
    assert torch.equal(layer.band_index, reference.band_index) and torch.equal(layer.fbm.masks, reference.fbm.masks)
    layer = FDConv(32, 64, 1, kernel_num=8, fbm_lowfreq_att=True).eval()
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))


@pytest.mark.parametrize('kernel_size, stride, for_stride, has_fbm', [
    (3, 1, False, True), (3, 2, False, True), (1, 2, False, False), (1, 2, True, True), (1, 1, True, False)])
def test_fbm_placement_rule(kernel_size, stride, for_stride, has_fbm):
    # official: FBM if the kernel size is in use_fbm_if_k_in, or with use_fbm_for_stride for any strided layer
    layer = FDConv(32, 64, kernel_size, stride=stride, padding=kernel_size // 2, kernel_num=8,
                   use_fbm_for_stride=for_stride, device='meta')
    assert layer.use_fdconv and (layer.fbm is not None) == has_fbm


def test_use_fbm_for_stride_loads_official_keys_and_filters_the_input():
    """A strided 1x1 layer of an official model built with `use_fbm_for_stride=True`: its `FBM.*` keys load
    strictly, and the layer convolves the band-modulated input."""
    kwargs = dict(in_channels=32, out_channels=64, kernel_size=1, stride=2, kernel_num=8)
    source = FDConv(**kwargs, use_fbm_for_stride=True).eval()
    with torch.no_grad():
        for conv, gain in zip(source.fbm.band_convs, (0.5, -1., 2.)):  # spatially constant, unequal band gains
            conv.weight.zero_()
            conv.bias.fill_(gain)
    official = {k[1:]: v for k, v in _official_names({'.' + k: v for k, v in source.state_dict().items()}).items()}
    assert {k for k in official if k.startswith('FBM.')} == {
        f'FBM.freq_weight_conv_list.{i}.{p}' for i in range(3) for p in ('weight', 'bias')}

    layer = FDConv(**kwargs, use_fbm_for_stride=True).eval()
    layer.load_state_dict(official, strict=True)
    plain = FDConv(**kwargs).eval()  # the option's default: no FBM for 1x1 layers
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\).*fbm\.band_convs'):
        plain.load_state_dict(dict(official), strict=True)
    plain.load_state_dict({k: v for k, v in official.items() if not k.startswith('FBM.')}, strict=True)

    x = torch.randn(2, 32, 12, 10)
    with torch.no_grad():
        filtered = layer.fbm(x)
        # constant gains keep the mean (every band above the lowest has none), so the global attentions agree
        torch.testing.assert_close(filtered.mean(dim=(2, 3)), x.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
        out = layer(x)
        torch.testing.assert_close(out, plain(filtered), rtol=1e-4, atol=1e-5)
        assert out.shape == (2, 64, 6, 5) and _rel(out, plain(x)) > 0.05


# ------------------------------------------------------------------------- the Fourier weight
def test_frequency_groups_are_contiguous_bands():
    rows, cols, n = 128, 62, 64  # 128 x 32 coefficients
    groups = frequency_groups(rows, cols, n)
    radius = torch.stack(torch.meshgrid(
        torch.fft.fftfreq(rows), torch.fft.rfftfreq(cols), indexing='ij'), -1).norm(dim=-1)
    sizes = torch.bincount(groups.flatten().long(), minlength=n)
    assert sizes.min() == sizes.max() == radius.numel() // n  # n divides the count: equal chunks
    for j in range(n - 1):
        assert radius[groups == j].max() <= radius[groups == j + 1].min()
    uneven = torch.bincount(frequency_groups(30, 40, 64).flatten().long(), minlength=64)
    assert uneven.max() - uneven.min() <= 1 and uneven.sum() == 30 * 21


def test_fbm_masks_and_local_kernel_sizes():
    masks = band_masks((2, 4, 8))[:, 0]
    expected = (  # spec table on the 64-point grid: |f| = 1/4 excluded for k = 2, 1/8 and 1/16 included
        (list(range(16)) + list(range(49, 64)), list(range(16))),
        (list(range(9)) + list(range(56, 64)), list(range(9))),
        (list(range(5)) + list(range(60, 64)), list(range(5))),
    )
    for mask, (rows, cols) in zip(masks, expected):
        square = torch.zeros(64, 33, dtype=torch.bool)
        square[torch.tensor(rows)[:, None], torch.tensor(cols)] = True
        assert torch.equal(mask, square)
    table = {17: 3, 48: 3, 64: 5, 128: 5, 256: 5, 512: 5, 1024: 7, 2048: 7}
    assert {c: ksm_local_kernel_size(c) for c in table} == table


@pytest.mark.parametrize('shape, param_ratio', [((24, 40, 3, 3), 1), ((48, 33, 1, 1), 1), ((40, 24), 2)])
def test_spatial_to_fourier_round_trip(shape, param_ratio):
    weight = torch.randn(shape)
    spatial = weight if weight.dim() == 4 else weight[:, :, None, None]
    out_chs, in_chs, k, _ = spatial.shape
    fourier = spatial_to_fourier(weight, param_ratio)
    m = min(out_chs, in_chs) // 2
    assert fourier.shape == (param_ratio, out_chs * k, in_chs * k // 2 + 1, 2)
    # the DC coefficient is the sum of the weight, stored divided by m * P
    torch.testing.assert_close(fourier[:, 0, 0, 0], torch.full((param_ratio,), weight.sum() / (m * param_ratio)))
    n = 16
    neutral = torch.full((1, param_ratio, n), float(m))  # band attention 1/(n P) times the gain m n P
    rebuilt = synthesize_weight(fourier, neutral, frequency_groups(out_chs * k, in_chs * k, n), in_chs, k)[0]
    torch.testing.assert_close(rebuilt, spatial, rtol=1e-5, atol=1e-5 * weight.abs().max().item())


# -------------------------------------------------------------------------------- conversion
@pytest.mark.parametrize('source', [
    nn.Conv2d(48, 64, 3, stride=2, padding=1, bias=True),
    nn.Conv2d(64, 40, 1, bias=False),
    nn.Linear(40, 96),
])
def test_converted_layer_starts_as_its_source(source):
    """Preserved: the synthesised weight is the source weight, the bias is copied, every attention is
    exactly neutral, so the output is the source's to FFT rounding, in train and eval mode."""
    torch.manual_seed(0)
    layer = to_fdconv(source, kernel_num=16)
    assert layer.use_fdconv and layer.training
    weight = source.weight if isinstance(source, nn.Conv2d) else source.weight[:, :, None, None]
    torch.testing.assert_close(layer.spatial_weight(), weight, rtol=1e-5, atol=1e-6)
    x = torch.randn(2, weight.shape[1], 10, 10) * 30  # the input scale does not matter
    with torch.no_grad():
        ref = source(x) if isinstance(source, nn.Conv2d) else source(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert _rel(layer(x), ref) < 2e-6
        assert _rel(layer.eval()(x), ref) < 2e-6
        # the official init (heads of scale 1e-6) starts only near the source, the more so the larger the input
        official_init = to_fdconv(source, kernel_num=16, neutral_init=False).eval()
        assert 2e-6 < _rel(official_init(x), ref) < 1e-2


def test_convert_to_fdconv_rules():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),  # 3 input channels: stays plain
        nn.Conv2d(32, 32, 3, padding=1),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise: stays plain
        nn.Conv2d(32, 64, 1),
        nn.Conv2d(64, 64, 5, padding=2),  # 5x5: stays plain
        nn.Conv2d(64, 64, 1),
    ).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        ref = model(x)
    converted = convert_to_fdconv(model, exclude=['5'], kernel_num=8, fdconv_args=dict(use_ksm_local=False))
    assert converted == ['1', '3']
    assert isinstance(model[1], FDConv) and model[1].ksm_local is None and model[1].kernel_num == 8
    assert type(model[2]) is nn.Conv2d and type(model[5]) is nn.Conv2d
    with torch.no_grad():
        assert _rel(model(x), ref) < 2e-6
    assert convert_to_fdconv(model, include=['5'], use_fdconv_if_c_gt=64) == []  # 64 is not > 64
    assert convert_to_fdconv(model, include=['5']) == ['5']


# ------------------------------------------------------------------------------------- models
# parameter counts: tests/helpers.py, checked in tests/test_contract.py
def test_resnet50_matches_the_paper_layout():
    model = timm.create_model('fdconv_resnet50', device='meta')
    base = dict(timm.create_model('resnet50', device='meta').named_parameters())
    active = [n for n, m in model.named_modules() if isinstance(m, FDConv) and m.use_fdconv]
    assert len(active) == 48 and all(re.fullmatch(r'layer\d\.\d+\.conv[123]', n) for n in active)
    assert sum(model.get_submodule(n).fbm is not None for n in active) == 16  # every 3x3, strided ones too
    assert type(model.conv1) is nn.Conv2d and type(model.layer1[0].downsample[0]) is nn.Conv2d
    extra = {'fourier': 0, 'ksm_global': 0, 'ksm_local': 0, 'fbm': 0}
    per_stage = {f'layer{i}': 0 for i in range(1, 5)}
    for name, p in model.named_parameters():
        if name.endswith('fourier_weight'):
            count, part = p.numel() - base[name.replace('fourier_weight', 'weight')].numel(), 'fourier'
        elif name in base:
            continue
        else:
            count, part = p.numel(), name.split('.')[3]
        extra[part] += count
        per_stage[name.split('.')[0]] += count
    # spec: +3,647,120 = 60,416 (half-spectrum vs weight) + 3,173,408 + 311,296 + 102,000
    assert extra == {'fourier': 60_416, 'ksm_global': 3_173_408, 'ksm_local': 311_296, 'fbm': 102_000}
    assert per_stage == {'layer1': 85_446, 'layer2': 281_192, 'layer3': 1_248_908, 'layer4': 2_031_574}
    assert sum(extra.values()) == 3_647_120


def _official_names(state_dict):
    """Our FDConv keys under the official layer's names (the inverse of what the layer accepts)."""
    renames = (('fourier_weight', 'dft_weight'), ('ksm_global.norm.', 'KSM_Global.bn.'),
               ('ksm_global.act.', 'KSM_Global.relu.'), ('ksm_global.', 'KSM_Global.'),
               ('ksm_local.', 'KSM_Local.'), ('fbm.band_convs.', 'FBM.freq_weight_conv_list.'))
    out = {}
    for key, value in state_dict.items():
        for ours, official in renames:
            key = key.replace('.' + ours, '.' + official)
        out[key] = value
    return out


def test_resnet50_pretrained_from_timm_weights(tmp_path):
    """`pretrained=True` converts timm's ResNet-50 file on the fly; the mmdet layout loads too."""
    torch.manual_seed(0)
    base = timm.create_model('resnet50').eval()
    randomize_batchnorm(base)  # zero-init last BNs would hide the converted conv3 layers
    file = tmp_path / 'resnet50.pth'
    torch.save(base.state_dict(), file)
    model = timm.create_model('fdconv_resnet50', pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = base(x)
        err = _rel(model(x), ref)
        assert err < 1e-5, err
        features = model.forward_features(x)

    # the official detection checkpoint layout: mmdet wrapper, `backbone.` prefix, official FDConv names
    official = {f'backbone.{k}': v for k, v in _official_names(model.state_dict()).items() if not k.startswith('fc.')}
    assert 'backbone.layer3.0.conv2.KSM_Global.bn.running_var' in official
    official['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    file = tmp_path / 'faster_rcnn_r50_fpn_fdconv.pth'
    torch.save(dict(state_dict=official, meta=dict()), file)
    detection = timm.create_model(
        'fdconv_resnet50', pretrained=True, pretrained_cfg_overlay=dict(file=str(file))).eval()
    with torch.no_grad():
        torch.testing.assert_close(detection.forward_features(x), features)


def test_zoo_variants_pretrained_from_official_base_checkpoints(parity_dir, tmp_path):
    for name, fixture in (('fdconv_unireplknet_a', 'unireplknet_a.pt'),
                          ('fdconv_inceptionnext_atto', 'inceptionnext_atto.pt')):
        data = load_fixture(parity_dir / fixture)
        model = create_from_official(name, data['state_dict'], tmp_path).eval()
        with torch.no_grad():
            err = rel_error(model(data['input'][:1]), data['logits'][:1])
        assert err < 1e-5, f'{name}: {err:.2e} from the official base model at initialisation'


def test_state_dict_conversion_keeps_other_keys_strict():
    model = FDConvResNet(layers=(1, 1, 1, 1), kernel_num=8, device='meta')
    base = timm.create_model('resnet50', layers=(1, 1, 1, 1), device='meta').state_dict()
    converted = convert_state_dict_to_fdconv(base, model)
    assert converted.keys() == model.state_dict().keys()
    assert converted['layer2.0.conv2.fourier_weight'].shape == model.layer2[0].conv2.fourier_weight.shape
    del base['layer1.0.bn1.weight']
    assert 'layer1.0.bn1.weight' not in convert_state_dict_to_fdconv(base, model)  # not papered over


def test_resnet_contract_numerics():
    """The checks the generic contract runs numerically below 25M parameters, on a one-block-per-stage net."""
    torch.manual_seed(0)
    model = FDConvResNet(layers=(1, 1, 1, 1), kernel_num=8).eval()
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        final, taps = model.forward_intermediates(x)
        torch.testing.assert_close(final, features)
        assert [t.shape[1] for t in taps] == [f['num_chs'] for f in model.feature_info] == [256, 512, 1024, 2048]
        assert [64 // t.shape[-1] for t in taps] == [f['reduction'] for f in model.feature_info] == [4, 8, 16, 32]
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model.forward_features(x), features)
        model.set_grad_checkpointing(False)
    with pytest.raises(ValueError, match='too small'):
        model(torch.randn(1, 3, 31, 31))
    assert model.prune_intermediate_layers([1]) == [1] and model.num_features == 512
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unireplknet_variant_reparameterizes():
    model = timm.create_model('fdconv_unireplknet_a', depths=(1, 1, 1, 1), kernel_sizes=((3,), (13,), (13,), (3,)))
    model.eval()
    randomize_batchnorm(model)
    with torch.no_grad():
        for block in (s.blocks[0] for s in model.stages):
            block.gamma.uniform_(0.5, 1.5)
        x = torch.randn(1, 3, 64, 64)
        ref = model(x)
        fused = timm.utils.reparameterize_model(model)
        assert all(s.blocks[0].gamma is None for s in fused.stages)
        assert _rel(fused(x), ref) < 1e-5


@pytest.mark.parametrize('name, model_cls, fdconv_layers', [
    ('fdconv_resnet50', FDConvResNet, 48),  # conv1 / conv2 / conv3 of 16 bottlenecks
    ('fdconv_unireplknet_a', UniRepLKNet, 24),  # the two MLP projections of 12 blocks
    ('fdconv_inceptionnext_atto', InceptionNeXt, 24),
])
def test_variants_are_their_base_model_built_with_fdconv(name, model_cls, fdconv_layers):
    """The FDConv variants are the base model classes given FDConv blocks; the FDConv options reach every layer."""
    model = timm.create_model(name, kernel_num=8, fdconv_args=dict(use_ksm_local=False), device='meta')
    assert type(model) is model_cls
    layers = [m for m in model.modules() if isinstance(m, FDConv) and m.use_fdconv]
    assert len(layers) == fdconv_layers
    assert all(m.kernel_num == 8 and m.ksm_local is None for m in layers)


# ----------------------------------------------------------------------------------------- MACs
@pytest.mark.parametrize('kernel_size', [1, 3])
def test_fvcore_sees_the_per_sample_conv(kernel_size):
    from fvcore.nn import FlopCountAnalysis
    layer = FDConv(32, 48, kernel_size, padding=kernel_size // 2, kernel_num=8).eval()
    shape = (2, 32, 12, 12)
    analysis = FlopCountAnalysis(layer, torch.randn(shape))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    ops = analysis.by_module_and_operator()
    if kernel_size == 1:  # a pointwise per-sample conv runs as a batched matmul
        per_sample = ops['']['bmm']
    else:  # the layer's convs, less those of the local KSM branch and of FBM
        per_sample = ops['']['conv'] - ops['ksm_local']['conv'] - ops['fbm']['conv']
    assert per_sample == 2 * 48 * 32 * kernel_size ** 2 * 12 * 12  # B * Cout * Cin * k^2 * H * W
