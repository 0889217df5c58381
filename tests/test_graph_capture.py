"""Whole-graph capture: torch.compile without graph breaks, torch.fx tracing and its documented exclusions.

TorchScript is covered by tests/test_contract.py (`test_torchscript`, smallest model of each family).
"""
import pytest
import timm
import torch
from timm.utils import reparameterize_model

from helpers import SMALLEST_PER_FAMILY

SIZE = 64

# plain `torch.fx.symbolic_trace` cannot follow Python branches on tensor sizes: LSNet's attention
# (bias grid from the feature map size) and FDConv (per-sample attention placement from the map size)
# have them. timm's fx tracer treats those layers as leaves, so its feature extraction works for all.
PLAIN_FX_EXCLUDED = {'lsnet', 'fdconv'}


def _model(name, form):
    model = timm.create_model(name)
    if form == 'deploy':
        return reparameterize_model(model.eval())
    return model.train()


@pytest.mark.parametrize('form', ['train', 'deploy'])
@pytest.mark.parametrize('name', SMALLEST_PER_FAMILY)
def test_dynamo_captures_forward_in_one_graph(name, form):
    torch._dynamo.reset()
    model = _model(name, form)
    x = torch.randn(2, 3, SIZE, SIZE)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_training_step_and_inference_match_eager():
    """Training through dynamo and AOTAutograd (the graphs Inductor would compile; generating C++ for the
    backward takes minutes on a small CPU), inference of the deploy form through Inductor itself."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = timm.create_model('unireplknet_a', num_classes=10).train()
    x, target = torch.randn(2, 3, SIZE, SIZE), torch.tensor([1, 7])
    eager_loss = torch.nn.functional.cross_entropy(model(x), target)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))

    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    loss = torch.nn.functional.cross_entropy(compiled(x), target)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-5)
    for grad, eager in zip(grads, eager_grads):
        torch.testing.assert_close(grad, eager, rtol=1e-3, atol=1e-5)

    deployed = reparameterize_model(model.eval())
    with torch.no_grad():
        expected = deployed(x)
        torch.testing.assert_close(torch.compile(deployed, fullgraph=True)(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', SMALLEST_PER_FAMILY)
def test_plain_fx_tracing_or_documented_exclusion(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    if name.split('_')[0] in PLAIN_FX_EXCLUDED:
        with pytest.raises(torch.fx.proxy.TraceError, match='control flow'):
            torch.fx.symbolic_trace(model)
        return
    graph = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x))


@pytest.mark.parametrize('name', SMALLEST_PER_FAMILY)
def test_timm_fx_feature_extraction(name):
    x = torch.randn(1, 3, SIZE, SIZE)
    torch.manual_seed(0)
    traced = timm.create_model(name, features_only=True, feature_cls='fx').eval()
    torch.manual_seed(0)  # the same initial weights
    model = timm.create_model(name).eval()
    with torch.no_grad():
        expected, actual = model.forward_intermediates(x, intermediates_only=True), traced(x)
    assert len(actual) == len(expected) == len(traced.feature_info)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


def test_ska_operator_decomposes_for_compilers_and_runs_on_meta():
    """LSNet's SKA is the operator `lkconv::small_kernel_aggregation`: one node for tracers that record
    operators (FLOP counting), but below autograd it is its PyTorch decomposition, so compilers fuse it
    and autograd, meta tensors and compiled training need nothing of their own."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from lkconv.layers import LSConv, small_kernel_aggregation
    gen = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 16, 8, 8, generator=gen), torch.randn(2, 2, 9, 8, 8, generator=gen)
    traced = make_fx(small_kernel_aggregation)(x, weight)
    assert not any('lkconv' in str(node.target) for node in traced.graph.nodes)
    torch.testing.assert_close(traced(x, weight), small_kernel_aggregation(x, weight))
    on_meta = small_kernel_aggregation(x.to('meta'), weight.to('meta'))
    assert on_meta.device.type == 'meta' and on_meta.shape == x.shape

    torch._dynamo.reset()
    layer = LSConv(16).train()
    eager_grads = torch.autograd.grad(layer(x).square().sum(), list(layer.parameters()))
    compiled = torch.compile(layer, backend='aot_eager', fullgraph=True)
    grads = torch.autograd.grad(compiled(x).square().sum(), list(layer.parameters()))
    for grad, eager in zip(grads, eager_grads):
        torch.testing.assert_close(grad, eager, rtol=1e-4, atol=1e-5)
