"""Shared primitives: backend registry and depthwise conv dispatch, re-parameterisation algebra, Dilated Reparam
Block, GRN."""
import ast
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lkconv.backends import DEPTHWISE_BACKENDS, Backends, check_depthwise_inputs, check_ska_inputs
from lkconv.layers import (
    DILATED_BRANCHES, ConvBn, DepthwiseConv2d, DilatedReparamBlock, GlobalResponseNormNHWC, dilate_kernel,
    fuse_conv_bn, merge_kernels, pad_kernel, register_depthwise_backend, set_depthwise_backend,
)

LKCONV = Path(__file__).resolve().parent.parent / 'lkconv'


def _randomize_bn(bn, gen):
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)


@pytest.mark.parametrize('kernel_size,dilation,stride', [(13, 1, 1), ((1, 11), 1, 1), (3, 4, 1), (7, 1, 2)])
def test_depthwise_conv_is_a_conv2d(kernel_size, dilation, stride):
    conv = DepthwiseConv2d(8, kernel_size, stride=stride, dilation=dilation)
    ref = nn.Conv2d(8, 8, kernel_size, stride=stride, dilation=dilation, padding=conv.padding, groups=8)
    assert set(conv.state_dict()) == set(ref.state_dict())
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, 17, 23)
    torch.testing.assert_close(conv(x), ref(x))
    if stride == 1:
        assert conv(x).shape == x.shape  # 'same' padding by default


def test_depthwise_backend_dispatch():
    calls = []

    def fake_backend(x, weight, bias, stride, padding, dilation):
        calls.append(tuple(weight.shape))
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups=weight.shape[0])

    register_depthwise_backend('fake', fake_backend, supports=lambda x, w, *a: w.shape[-1] >= 7, priority=50)
    try:
        x = torch.randn(1, 4, 9, 9)
        DepthwiseConv2d(4, 3)(x)
        assert calls == []  # unsupported shape: the PyTorch path runs
        DepthwiseConv2d(4, 7)(x)
        assert calls == [(4, 1, 7, 7)]
        set_depthwise_backend('torch')
        DepthwiseConv2d(4, 7)(x)
        assert len(calls) == 1  # forced backend wins over 'auto'
        with pytest.raises(ValueError, match='Unknown depthwise backend'):
            set_depthwise_backend('nope')
    finally:
        set_depthwise_backend('auto')
        DEPTHWISE_BACKENDS.unregister('fake')
    assert 'fake' not in DEPTHWISE_BACKENDS.names()


def test_backend_registry():
    calls = []
    registry = Backends('toy')
    registry.register('slow', lambda x: calls.append('slow') or x, supports=lambda x: True, priority=0)
    registry.register('fast', lambda x: calls.append('fast') or x, supports=lambda x: x > 0)
    assert registry.names() == ['fast', 'slow']  # highest priority first
    registry.dispatch(1), registry.dispatch(-1)
    assert calls == ['fast', 'slow']
    with registry.using('slow'):
        assert registry.selected() == 'slow'
        registry.dispatch(1)
    assert registry.selected() == 'auto' and calls[-1] == 'slow'
    with pytest.raises(ValueError, match="Unknown toy backend 'gpu'; registered: auto, fast, slow"):
        registry.select('gpu')
    registry.select('fast')
    registry.unregister('fast')  # the selection falls back to 'auto'
    assert registry.selected() == 'auto' and registry.names() == ['slow']
    with pytest.raises(ValueError, match="registered: auto, slow"):
        registry.unregister('fast')
    registry.unregister('slow')
    with pytest.raises(RuntimeError, match='No registered toy backend'):
        registry.dispatch(1)


def test_shared_input_contracts():
    x = torch.randn(2, 8, 5, 6)
    check_depthwise_inputs(x, torch.randn(8, 1, 3, 3))
    for weight in (torch.randn(4, 1, 3, 3), torch.randn(8, 2, 3, 3), torch.randn(8, 3, 3)):
        with pytest.raises(ValueError, match=r'weight \(C, 1, KH, KW\)'):
            check_depthwise_inputs(x, weight)
    assert check_ska_inputs(x, torch.randn(2, 2, 25, 5, 6)) == 5
    with pytest.raises(ValueError, match='does not fit'):
        check_ska_inputs(x, torch.randn(2, 3, 9, 5, 6))
    with pytest.raises(ValueError, match='odd K'):
        check_ska_inputs(x, torch.randn(2, 2, 16, 5, 6))


def test_depthwise_conv_takes_an_unbatched_image_like_conv2d():
    conv = DepthwiseConv2d(4, 5)
    x = torch.randn(4, 9, 9)
    torch.testing.assert_close(conv(x), conv(x[None])[0])


def test_layers_never_import_the_kernels():
    """The Triton kernels register themselves with lkconv.backends; the layers must not depend on them."""
    for path in sorted((LKCONV / 'layers').rglob('*.py')) + [LKCONV / 'backends.py']:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [('.' * node.level) + (node.module or '') + '.' + a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert 'kernels' not in name.split('.'), f'{path.relative_to(LKCONV)} imports {name}'
                if path.name == 'backends.py':  # below every subpackage
                    assert not name.startswith(('.', 'lkconv')), f'backends.py imports {name}'


def test_layer_backends_selects_and_restores():
    from lkconv.layers import get_depthwise_backend, get_ska_backend, layer_backends
    with layer_backends(depthwise='torch'):
        assert (get_depthwise_backend(), get_ska_backend()) == ('torch', 'auto')
        with layer_backends(ska='torch'):
            assert (get_depthwise_backend(), get_ska_backend()) == ('torch', 'torch')
        assert get_ska_backend() == 'auto'
    assert get_depthwise_backend() == 'auto'
    # an unknown name raises after the first selection was made: both are restored
    with pytest.raises(ValueError, match='Unknown SKA backend'):
        with layer_backends(depthwise='torch', ska='nope'):
            pass
    assert (get_depthwise_backend(), get_ska_backend()) == ('auto', 'auto')
    with pytest.raises(RuntimeError, match='inside'):
        with layer_backends(depthwise='torch', ska='torch'):
            raise RuntimeError('inside')
    assert (get_depthwise_backend(), get_ska_backend()) == ('auto', 'auto')


def test_dilate_and_pad_kernel_match_dilated_conv():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 1, 3, 3, generator=gen)
    x = torch.randn(2, 6, 21, 21, generator=gen)
    dilated = F.conv2d(x, weight, padding=4, dilation=4, groups=6)
    dense = dilate_kernel(weight, 4)
    assert dense.shape[-2:] == (9, 9)
    torch.testing.assert_close(F.conv2d(x, dense, padding=4, groups=6), dilated)
    padded = pad_kernel(dense, 13)
    torch.testing.assert_close(F.conv2d(x, padded, padding=6, groups=6), dilated, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        pad_kernel(weight, 4)


def test_fuse_conv_bn_and_merge():
    gen = torch.Generator().manual_seed(0)
    branch = ConvBn(DepthwiseConv2d(5, 5, bias=False))
    _randomize_bn(branch.bn, gen)
    branch.eval()
    x = torch.randn(2, 5, 12, 12, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(branch.fuse()(x), branch(x), rtol=1e-5, atol=1e-5)
        w, b = fuse_conv_bn(branch.conv.weight, None, branch.bn)
        weight, bias = merge_kernels([(w, b, 1), (w, b, 1)], 7)
        torch.testing.assert_close(F.conv2d(x, weight, bias, padding=3, groups=5), 2 * branch(x), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize('kernel_size', sorted(DILATED_BRANCHES))
def test_dilated_reparam_block_fuses_exactly(kernel_size):
    gen = torch.Generator().manual_seed(kernel_size)
    block = DilatedReparamBlock(8, kernel_size)
    for branch in block.branches.values():
        _randomize_bn(branch.bn, gen)
        with torch.no_grad():
            branch.conv.weight.copy_(torch.randn(branch.conv.weight.shape, generator=gen))
    block.eval()
    names = list(block.branches)
    assert names[0] == f'k{kernel_size}_d1' and len(names) == 1 + len(DILATED_BRANCHES[kernel_size])
    x = torch.randn(2, 8, 24, 19, generator=gen)
    with torch.no_grad():
        ref = block(x)
        fused = block.fuse()
        out = fused(x)
    assert isinstance(fused, DepthwiseConv2d) and fused.kernel_size == (kernel_size, kernel_size)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_dilated_reparam_block_rejects_unknown_kernel():
    with pytest.raises(ValueError, match='kernel sizes'):
        DilatedReparamBlock(8, 8)


def test_grn_matches_formula_and_optional_bias():
    grn = GlobalResponseNormNHWC(6)
    with torch.no_grad():
        grn.weight.normal_()
        grn.bias.normal_()
    x = torch.randn(2, 5, 7, 6)
    gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(x), (grn.weight * nx + 1) * x + grn.bias)
    assert grn.weight.shape == (1, 1, 1, 6)
    no_bias = GlobalResponseNormNHWC(6, bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ['weight']
