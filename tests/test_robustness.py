"""Numerical robustness of the smallest model of UniRepLKNet, InceptionNeXt, VAN, LSNet and FDConv: the
UniRepLKNet 384x128 case, the smallest accepted input, float16 / bfloat16 autocast on CPU (whole models, and
alone the layers where float16 could overflow), batch size 1 in training, and inputs no model can use.

Most checks use `non_trivial` weights (tests/helpers.py): initialisation makes several branches nearly silent
(layer scales of 1e-6, GRN and some BatchNorm weights at 0, zero attention biases, identity BatchNorm
statistics), which would hide precision problems in exactly those branches.
"""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from lkconv.detection import TimmFpnBackbone
from lkconv.layers import FDConv, GlobalResponseNormNHWC, LargeKernelAttention, LSConv
from lkconv.models.lsnet import LSNetAttention
from lkconv.utils import relative_error
from helpers import non_trivial

FAMILY_MODELS = ['unireplknet_a', 'inceptionnext_atto', 'van_b0', 'lsnet_t', 'fdconv_inceptionnext_atto']
LOW_PRECISION = [torch.bfloat16, torch.float16]
FLOAT16_MAX = torch.finfo(torch.float16).max
# Tolerance of autocast against float32, in units of the format's unit roundoff u (bfloat16 2^-8, float16
# 2^-11). Each low-precision op rounds its output with a relative error <= u, and along the 20-40 rounded ops
# of these networks the errors add up like a random walk: a few u up to ~11u of relative L2 error are
# measured (VAN's gated attention multiplies two rounded branches and is the largest). 16u leaves room for
# other CPUs' kernels while a real fault (an overflow, a wrong cast, a dropped branch) gives O(1) errors.
AUTOCAST_TOLERANCE_IN_U = 16


def _unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def _relative_l2(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return relative_error(ours, ref, norm='l2')


def _all_finite(tensors) -> bool:
    return all(torch.isfinite(t).all().item() for t in tensors)


def _grads_finite(model: nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(grads) and _all_finite(grads)


def _two_by_two_size(model: nn.Module) -> int:
    """The input side that leaves 2x2 maps at the deepest stage (64 for stride 32, 128 for LSNet's 64)."""
    return 2 * max(info['reduction'] for info in model.feature_info)


# ------------------------------------------------------------------------------ input sizes
def test_unireplknet_384x128_stays_finite():
    """UniRepLKNet issue #14: at 384x128 stage 3 sees 12x4 maps under 13x13 kernels, reported to give NaN."""
    torch.manual_seed(0)
    model = non_trivial(timm.create_model('unireplknet_a', num_classes=10)).eval()
    x = torch.randn(2, 3, 384, 128)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        with torch.autocast('cpu', dtype=torch.float16):
            half = model(x)
    assert tuple(taps[-1].shape[-2:]) == (12, 4)
    assert _all_finite(taps) and _all_finite([half])

    _train_steps_stay_finite(model, x, torch.tensor([1, 7]), steps=3)
    with torch.no_grad():
        assert _all_finite([model.eval()(x)])  # with the BatchNorm statistics the steps updated


def _train_steps_stay_finite(model, x, target, steps):
    """AdamW steps in train mode: every loss, gradient and updated parameter stays finite."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), target)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        assert _grads_finite(model)
        optimizer.step()
    assert _all_finite(model.parameters())


@pytest.mark.parametrize('name', FAMILY_MODELS)
def test_smallest_accepted_input(name):
    torch.manual_seed(0)
    model = non_trivial(timm.create_model(name, num_classes=10))
    size = model.min_input_size
    # at the minimum size the deepest maps are 1x1, so train-mode BatchNorm normalises over the batch alone;
    # with 2 values per channel its output is +-1 whatever the input and the gradient is rounding noise
    # amplified by 1/sigma (up to 1e29 for LSNet), so training there needs a real batch
    x = torch.randn(8, 3, size, size)
    with torch.no_grad():
        assert _all_finite([model.eval()(x[:2])])
    _train_steps_stay_finite(model, x, torch.arange(8), steps=2)


# ---------------------------------------------------------------------------------- autocast
@pytest.mark.parametrize('dtype', LOW_PRECISION, ids=str)
@pytest.mark.parametrize('name', FAMILY_MODELS)
def test_autocast_close_to_float32_and_trains(name, dtype):
    torch.manual_seed(0)
    model = non_trivial(timm.create_model(name, num_classes=10)).eval()
    size = _two_by_two_size(model)
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        with torch.autocast('cpu', dtype=dtype):
            low = model.forward_intermediates(x, intermediates_only=True)
    assert _all_finite(low)
    tolerance = AUTOCAST_TOLERANCE_IN_U * _unit_roundoff(dtype)
    errors = [_relative_l2(a, b) for a, b in zip(low, ref)]
    assert max(errors) < tolerance, errors

    model.train()
    with torch.autocast('cpu', dtype=dtype):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), torch.arange(4))
    assert torch.isfinite(loss)
    loss.backward()
    assert _grads_finite(model)


@pytest.mark.parametrize('name', FAMILY_MODELS)
def test_autocast_with_unnormalised_inputs(name):
    """Inputs 100x the normalised scale (e.g. a forgotten normalisation of 0..255 images), in eval mode.

    bfloat16 has float32's range and stays finite everywhere. float16 stays finite and accurate exactly when
    the float32 activations fit its range: they do for every family but VAN, whose Large Kernel Attention
    multiplies the input by a linear function of itself, so 100x the input gives ~10^4x the activations
    per block; there float16 cannot represent the result, and no reduction order can help.
    """
    torch.manual_seed(0)
    model = non_trivial(timm.create_model(name)).eval()
    size = _two_by_two_size(model)
    x = torch.randn(2, 3, size, size) * 100
    peak = [0.]

    def record_peak(module, inputs, output):
        if isinstance(output, torch.Tensor):
            peak.append(output.abs().max().item())

    hooks = [m.register_forward_hook(record_peak) for m in model.modules()]
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert _all_finite(model.forward_intermediates(x, intermediates_only=True))
        with torch.autocast('cpu', dtype=torch.float16):
            half = model.forward_intermediates(x, intermediates_only=True)
    fits_float16 = max(peak) < FLOAT16_MAX
    assert fits_float16 == (name != 'van_b0'), f'{name}: peak activation {max(peak):.3g}'
    if fits_float16:
        assert _all_finite(half)
        errors = [_relative_l2(a, b) for a, b in zip(half, ref)]
        assert max(errors) < AUTOCAST_TOLERANCE_IN_U * _unit_roundoff(torch.float16), errors


def _grn():
    return GlobalResponseNormNHWC(40)


def _fdconv_1x1():
    return FDConv(64, 64, 1, kernel_num=8)


def _fdconv_3x3():
    return FDConv(64, 64, 3, padding=1, kernel_num=8)


# layer, input (shape, scale): the scales put each layer where float16 overflow is plausible
LARGE_INPUT_LAYERS = {
    # ||x||_HW of a 200x304 map (an 800x1216 image at stride 4) at RMS 300 is ~74000 > 65504
    'grn': (_grn, (1, 200, 304, 40), 300.),
    # the FDConv attention MLP squares its hidden units (StarReLU): > 256 overflows float16
    'fdconv_1x1': (_fdconv_1x1, (2, 64, 16, 16), 3000.),
    'fdconv_3x3': (_fdconv_3x3, (2, 64, 16, 16), 3000.),
    # q.k over 16 channels per head, then softmax
    'lsnet_attention': (lambda: LSNetAttention(384, resolution=4), (2, 384, 4, 4), 100.),
    'ls_conv': (lambda: LSConv(64), (2, 64, 16, 16), 100.),
    'large_kernel_attention': (lambda: LargeKernelAttention(32), (2, 32, 16, 16), 100.),
}


@pytest.mark.parametrize('dtype', LOW_PRECISION, ids=str)
@pytest.mark.parametrize('case', list(LARGE_INPUT_LAYERS))
def test_layers_with_large_inputs_under_autocast(case, dtype):
    """The layer receives a low-precision input, as it does inside an autocast network."""
    torch.manual_seed(0)
    make_layer, shape, scale = LARGE_INPUT_LAYERS[case]
    layer = non_trivial(make_layer()).eval()
    x = (torch.randn(shape) * scale).to(dtype)
    with torch.no_grad():
        ref = layer(x.float())
        with torch.autocast('cpu', dtype=dtype):
            out = layer(x)
    assert torch.isfinite(out).all()
    assert _relative_l2(out, ref) < AUTOCAST_TOLERANCE_IN_U * _unit_roundoff(dtype)


def test_float16_cases_really_overflow_without_the_fixes():
    """The inputs above are in the overflow regime: the plain float16 computations give inf or NaN."""
    torch.manual_seed(0)
    _, shape, scale = LARGE_INPUT_LAYERS['grn']
    x = (torch.randn(shape) * scale).half()
    assert torch.isinf(torch.norm(x, p=2, dim=(1, 2))).any()  # the GRN norm, as float16 computes it

    for case in ('fdconv_1x1', 'fdconv_3x3'):
        torch.manual_seed(0)
        make_layer, shape, scale = LARGE_INPUT_LAYERS[case]
        ksm = non_trivial(make_layer()).eval().ksm_global
        pooled = (torch.randn(shape) * scale).half().mean(dim=(2, 3), keepdim=True)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.float16):
            in_float16 = ksm._attentions(pooled)  # the attention MLP as autocast would run it
            fixed = ksm(pooled)
        assert not _all_finite([a for a in in_float16 if a is not None]), case
        assert _all_finite([a for a in fixed if a is not None]), case


def test_grn_float32_result_unchanged():
    """The float32 path of GRN is bit-for-bit the formula (only float16 / bfloat16 take the float32 norm)."""
    torch.manual_seed(0)
    grn = non_trivial(GlobalResponseNormNHWC(24))
    x = torch.randn(2, 9, 11, 24) * 10
    gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + grn.eps)
    with torch.no_grad():
        assert torch.equal(grn(x), x + grn.weight * (x * nx) + grn.bias)
        assert grn(x.bfloat16()).dtype == torch.float32  # float32 parameters promote, as before
        assert grn.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


# ------------------------------------------------------------------------------ batch size 1
@pytest.mark.parametrize('name', FAMILY_MODELS)
def test_batch_of_one_trains_when_every_batchnorm_sees_several_values(name):
    """Feature extraction (the dense-prediction use) with one image per step, deepest maps 2x2."""
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True).train()
    size = 2 * model.feature_info.reduction()[-1]
    maps = model(torch.randn(1, 3, size, size))
    loss = sum(m.float().pow(2).mean() for m in maps)
    assert torch.isfinite(loss)
    loss.backward()
    assert _grads_finite(model)


@pytest.mark.parametrize('name', FAMILY_MODELS)
def test_batch_of_one_with_single_value_batchnorm_is_a_value_error(name):
    torch.manual_seed(0)
    model = timm.create_model(name).train()
    x = torch.randn(1, 3, model.min_input_size, model.min_input_size)  # 1x1 deepest maps
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        model(x)
    with torch.no_grad():
        assert _all_finite([model.eval()(x)])  # eval mode uses the running statistics


def test_lsnet_classifier_needs_a_batch_in_training():
    """LSNet's head normalises pooled features with BatchNorm (as the official BN-Linear head), so training
    the classifier always needs more than one image; its feature extractor does not (see above)."""
    model = timm.create_model('lsnet_t').train()
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        model(torch.randn(1, 3, 128, 128))
    assert _all_finite([model(torch.randn(2, 3, 128, 128))])


# ----------------------------------------------------------------------------- unusable inputs
@pytest.mark.parametrize('name', FAMILY_MODELS)
def test_detection_backbone_rejects_unusable_inputs(name):
    backbone = TimmFpnBackbone(name, out_channels=16).eval()
    with pytest.raises(ValueError, match='expected 3 input channels, got 4'):
        backbone(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match='4-D'):
        backbone(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='too small: this model needs at least 32x32'):
        backbone(torch.randn(1, 3, 31, 200))
    with torch.no_grad():
        assert len(backbone(torch.randn(1, 3, 32, 200))) == 5  # the smallest accepted size works
