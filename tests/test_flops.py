"""FLOP accounting: FFT, SKA, custom-kernel and elementwise handling, and published GMACs of the zoo."""
import math

import pytest
import timm
import torch
import torch.nn as nn

import lkconv.layers
from lkconv.bench.flops import count_flops, fft_macs
from lkconv.layers import LargeKernelAttention, LSConv, get_depthwise_backend


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.scale = nn.Parameter(torch.ones(1))  # gives the module a device

    def forward(self, x):
        return self.fn(x)


def real_fft(n):  # independent statement of the convention: 5 N log2 N flops, halved for real data, 2 per MAC
    return 1.25 * n * math.log2(n)


# input (2, 4, 16, 16): name -> (function, expected MACs)
FFT_CASES = {
    'rfft2': (lambda x: torch.fft.rfft2(x).real, {'fft_rfft2': 8 * real_fft(256)}),
    'irfft2, computed size': (lambda x: torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape[-2:]),
                              {'fft_rfft2': 8 * real_fft(256), 'fft_irfft2': 8 * real_fft(256)}),
    'irfft2 on dims (1, 2)': (lambda x: torch.fft.irfft2(torch.fft.rfft2(x, dim=(1, 2)), dim=(1, 2)),
                              {'fft_rfft2': 32 * real_fft(64), 'fft_irfft2': 32 * real_fft(64)}),
    'fft2 (complex)': (lambda x: torch.fft.fft2(x.to(torch.complex64)).real, {'fft_fft2': 8 * 2 * real_fft(256)}),
    'ifft over one dim': (lambda x: torch.fft.ifft(x, dim=2).real, {'fft_ifft': 128 * 2 * real_fft(16)}),
    'rfft with n': (lambda x: torch.fft.rfft(x, n=32).real, {'fft_rfft': 128 * real_fft(32)}),
    'rfftn over 3 dims': (lambda x: torch.fft.rfftn(x, dim=(1, 2, 3)).real, {'fft_rfftn': 2 * real_fft(1024)}),
    'fftn, all dims': (lambda x: torch.fft.fftn(x).real, {'fft_fftn': 2 * real_fft(2048)}),
    'hfft': (lambda x: torch.fft.hfft(x.to(torch.complex64), n=30), {'fft_hfft': 128 * real_fft(30)}),
}


@pytest.mark.parametrize('case', list(FFT_CASES))
def test_fft_ops_are_counted(case):
    fn, expected = FFT_CASES[case]
    flops = count_flops(Lambda(fn), (4, 16, 16), batch_size=2)
    assert flops.macs == pytest.approx(expected)
    assert flops.not_counted == {}


def test_fft_macs_convention():
    assert fft_macs([8, 8], real=False) == pytest.approx(2.5 * 64 * 6)
    assert fft_macs([8, 8], real=True) == pytest.approx(1.25 * 64 * 6)
    assert fft_macs([1], real=False) == 0


def test_ska_is_counted_as_a_depthwise_kernel_per_pixel():
    layer = LSConv(16).eval()
    x = torch.randn(2, 16, 8, 8)
    expected = layer(x)
    flops = count_flops(layer, (16, 8, 8), batch_size=2)
    assert flops.macs['ska'] == 2 * 16 * 9 * 8 * 8
    assert flops.activations['ska'] == 2 * 16 * 8 * 8
    assert flops.not_counted == {}
    assert 'pad' not in flops.elementwise  # the SKA internals are not double counted as elementwise work
    # the layer is left as it was: no marker forward, same output
    assert 'forward' not in vars(layer.ska)
    torch.testing.assert_close(layer(x), expected)


def test_depthwise_conv_counted_and_backend_selection_restored():
    layer = LargeKernelAttention(8).eval()
    before = get_depthwise_backend()
    flops = count_flops(layer, (8, 16, 16))
    assert get_depthwise_backend() == before
    # 5x5 depthwise, 7x7 dilated depthwise, 1x1 pointwise: all MACs; the gating multiply is elementwise
    assert flops.macs == {'conv': 8 * 25 * 256 + 8 * 49 * 256 + 8 * 8 * 256}
    assert flops.elementwise == {'mul': 8 * 256}
    assert flops.gmacs == pytest.approx((8 * 25 + 8 * 49 + 64) * 256 / 1e9)


class OpaqueKernel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_unknown_custom_kernel_is_reported_not_counted():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Lambda(OpaqueKernel.apply), Lambda(torch.special.i0))
    flops = count_flops(model, (3, 8, 8))
    assert flops.not_counted == {'prim::PythonOp.OpaqueKernel': 1, 'aten::i0': 1}
    assert 'OpaqueKernel x1' in flops.not_counted_summary()
    assert flops.macs == {'conv': 4 * 27 * 36}


def test_train_and_eval_modes_are_restored():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    model[1].eval()  # e.g. a frozen norm
    count_flops(model, (3, 8, 8))
    assert model.training and model[0].training and not model[1].training


def test_fdconv_counts_its_ffts():
    layer = lkconv.layers.FDConv(64, 64, 3, padding=1, kernel_num=64).eval()
    flops = count_flops(layer, (64, 16, 16), batch_size=2)
    assert flops.not_counted == {}
    assert flops.gmacs > 0
    # weight synthesis: one irfft2 over (Cout*k) x (Cin*k) per sample;
    # frequency band modulation: one rfft2 and one irfft2 per band over H x W, per channel and sample
    bands = len(layer.fbm.k_list)
    synthesis = 2 * real_fft(192 * 192)
    assert flops.macs['fft_rfft2'] == pytest.approx(2 * 64 * real_fft(256))
    assert flops.macs['fft_irfft2'] == pytest.approx(synthesis + 2 * 64 * bands * real_fft(256))
    # the per-sample grouped conv is in the conv count
    assert flops.macs['conv'] >= 2 * 64 * 64 * 9 * 256


def test_fdconv_costs_by_hand():
    """Every component of an FDConv layer, stated independently of the counter."""
    layer = lkconv.layers.FDConv(64, 128, 3, stride=2, padding=1, kernel_num=64)
    flops = count_flops(layer, (64, 16, 16), batch_size=2)
    hidden = 16  # global KSM width: max(int(64 * 0.0625), 16)
    per_sample_conv = 2 * 128 * 64 * 9 * 8 * 8  # 3x3, stride 2: 8x8 outputs
    ksm_local = 2 * 128 * 9 * 64 * 5  # Conv1d(1 -> Cout*9, t=5) along the 64 channels
    fbm_convs = 3 * 2 * 64 * 9 * 256  # one 3x3 Cin -> 1 conv per band, on 16x16
    assert flops.macs['conv'] == per_sample_conv + ksm_local + fbm_convs
    assert flops.macs['linear'] == 2 * hidden * (64 + 64 + 128 + 9 + 64)  # fc, then channel, filter, spatial, band
    synthesis = 2 * real_fft(384 * 192)  # one irfft2 over (Cout*k) x (Cin*k) per sample
    assert flops.macs['fft_rfft2'] == pytest.approx(2 * 64 * real_fft(256))
    assert flops.macs['fft_irfft2'] == pytest.approx(synthesis + 3 * 2 * 64 * real_fft(256))
    assert flops.not_counted == {}


# published deploy-form GMACs at 224 (specs): (value, tolerance). LSNet publishes 0.3G with one decimal,
# i.e. a value in [0.25, 0.35); its unrounded architecture count is ~0.316G.
PUBLISHED = {
    'unireplknet_t': (4.90, 0.03 * 4.90),
    'inceptionnext_tiny': (4.19, 0.03 * 4.19),
    'van_b2': (5.00, 0.03 * 5.00),
    'lsnet_t': (0.30, 0.05),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(PUBLISHED))
def test_deploy_gmacs_match_published(name):
    model = timm.utils.reparameterize_model(timm.create_model(name).eval())
    flops = count_flops(model, (3, 224, 224))
    value, tolerance = PUBLISHED[name]
    assert abs(flops.gmacs - value) <= tolerance, flops.macs
    assert flops.not_counted == {}
    if name == 'lsnet_t':
        assert flops.macs['ska'] > 0


@pytest.mark.slow
def test_timm_reference_counts_match_timm_published():
    # timm's results CSVs: resnet50 at 224 = 4.11 GMACs, 11.11 M activations (fvcore)
    flops = count_flops(timm.create_model('resnet50'), (3, 224, 224))
    assert round(flops.gmacs, 2) == 4.11
    assert round(flops.macts, 2) == 11.11


def test_training_form_costs_more_than_deploy_form():
    model = timm.create_model('unireplknet_a').eval()
    train_form = count_flops(model, (3, 64, 64))
    deploy_form = count_flops(timm.utils.reparameterize_model(model), (3, 64, 64))
    assert train_form.gmacs > deploy_form.gmacs > 0
    assert 'batch_norm' in train_form.macs and 'batch_norm' not in deploy_form.macs
