"""Triton kernels (lkconv.kernels) against the PyTorch reference, on CPU under Triton's interpreter.

Triton decides whether it interprets when it is *imported* (TRITON_INTERPRET=1 must be set by then),
and in a test session torch has usually imported it already (torchvision imports torch._dynamo, which
imports triton). So the kernel cases run in one spawned child process started with TRITON_INTERPRET=1
(the `interpreter` fixture); when this process itself was started with TRITON_INTERPRET=1 they run here.
Inputs and the reference come from this process; the child only runs the Triton path.

Also here: the custom ops (opcheck, torch.compile with a fake-tensor backend, autocast), the selection
rule, that a CPU model never imports triton, and the benchmark script's smoke run.
"""
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lkconv.kernels import selection
from lkconv.layers import DepthwiseConv2d, LSConv, layer_backends
from lkconv.layers.ska import _torch_ska

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')

# relative tolerance per dtype: one rounding of an fp32-accumulated result, with a margin
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _runs_interpreted() -> bool:
    """Whether triton in this process was imported in interpreter mode (its own jit helpers are interpreted)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(tl.zeros, InterpretedFunction)


class _InProcess:
    @staticmethod
    def apply(fn, args=()):
        return fn(*args)


@pytest.fixture(scope='module')
def interpreter():
    """`.apply(fn, args)` runs fn under Triton's interpreter: in this process if it can, else in a child."""
    if not _triton_installed():
        message = 'triton is not installed: the kernels cannot be tested'
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    if _runs_interpreted():
        yield _InProcess()
        return
    previous = os.environ.get('TRITON_INTERPRET')
    os.environ['TRITON_INTERPRET'] = '1'  # inherited by the child, which imports triton afresh
    try:
        pool = multiprocessing.get_context('spawn').Pool(1)
    finally:
        if previous is None:
            del os.environ['TRITON_INTERPRET']
        else:
            os.environ['TRITON_INTERPRET'] = previous
    try:
        assert pool.apply(_runs_interpreted), 'the child process did not run triton in interpreter mode'
        yield pool
    finally:
        pool.terminate()
        pool.join()


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str,
                  precision: torch.dtype = None) -> None:
    """`actual` has `dtype` and matches `expected` within the tolerance of `precision` (default: dtype)."""
    assert actual.dtype == dtype, f'{what}: dtype {actual.dtype}, expected {dtype}'
    tol = TOL[precision or dtype]
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * scale,
                               msg=lambda m: f'{what}: {m}')


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


# ------------------------------------------------------------------------ run in the interpreter
# (module-level so that the spawned child can unpickle them)

def _triton_depthwise_with_grads(x, weight, bias, stride, padding, dilation, grad):
    from lkconv.kernels.ops import triton_depthwise_conv2d
    inputs = [t.detach().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    y = triton_depthwise_conv2d(inputs[0], inputs[1], inputs[2] if bias is not None else None, stride, padding,
                                dilation)
    grads = torch.autograd.grad(y, inputs, grad)
    return (y.detach(),) + grads


def _triton_depthwise_tiled(x, weight, stride, padding, dilation, grad, tile, wgrad):
    from lkconv.kernels import depthwise_triton as k
    return (k.depthwise_forward(x, weight, None, stride, padding, dilation, config=k.TileConfig(*tile)),
            k.depthwise_input_grad(grad, weight, x.shape, stride, padding, dilation, config=k.TileConfig(*tile)),
            k.depthwise_weight_grad(grad, x, weight.shape, stride, padding, dilation,
                                    config=k.WeightGradConfig(*wgrad)))


def _triton_ska_with_grads(x, weight, grad, tile=None):
    if tile is not None:
        from lkconv.kernels import ska_triton as k
        from lkconv.kernels.launch import TileConfig
        cfg = TileConfig(*tile)
        return (k.ska_forward(x, weight, cfg), k.ska_input_grad(grad, weight, cfg),
                k.ska_weight_grad(grad, x, weight, cfg))
    from lkconv.kernels.ops import triton_small_kernel_aggregation
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    y = triton_small_kernel_aggregation(x, weight)
    return (y.detach(),) + torch.autograd.grad(y, (x, weight), grad)


def _module_with_backend(module, x, backend, autocast_dtype=None):
    """Forward + backward of `module` with every depthwise conv / SKA forced to `backend`."""
    module.zero_grad(set_to_none=True)
    with layer_backends(depthwise=backend, ska=backend):
        x = x.detach().requires_grad_()
        with torch.autocast('cpu', dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            y = module(x)
        y.float().square().sum().backward()
        return y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


def _opcheck(op_name, args):
    import lkconv.kernels.ops  # noqa: F401  (registers the ops)
    result = torch.library.opcheck(getattr(torch.ops.lkconv, op_name).default, args)
    return {test: str(outcome) for test, outcome in result.items()}


def _compiled_depthwise_and_ska(x, weight, bias, ska_weight):
    """Gradients of a small graph using both ops, eager and through torch.compile (fake tensors, autograd)."""
    from lkconv.kernels.ops import triton_depthwise_conv2d, triton_small_kernel_aggregation

    def loss(x, weight, bias, ska_weight):
        y = triton_depthwise_conv2d(x, weight, bias, (1, 1), (1, 2), (1, 1))
        return triton_small_kernel_aggregation(y, ska_weight).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, backend='aot_eager', fullgraph=True)
    out = []
    for fn in (loss, compiled):
        inputs = [t.detach().requires_grad_() for t in (x, weight, bias, ska_weight)]
        out.append(torch.autograd.grad(fn(*inputs), inputs))
    return out


# ------------------------------------------------------------------------------ depthwise kernels

# (kernel, stride, dilation, dtype, channels_last): every kernel family of the zoo, both layouts, all dtypes
DEPTHWISE_CASES = [
    ((3, 3), (1, 1), (1, 1), torch.float32, False),
    ((5, 5), (1, 1), (2, 2), torch.float32, True),
    ((7, 7), (1, 1), (3, 3), torch.bfloat16, False),      # VAN's dilated LKA conv
    ((13, 13), (1, 1), (1, 1), torch.bfloat16, True),     # UniRepLKNet
    ((13, 13), (1, 1), (1, 1), torch.float16, False),
    ((31, 31), (1, 1), (1, 1), torch.float32, False),     # RepLKNet, kernel larger than the map
    ((29, 29), (1, 1), (1, 1), torch.float16, True),
    ((51, 5), (1, 1), (1, 1), torch.bfloat16, False),     # SLaK's bands
    ((5, 49), (1, 1), (1, 1), torch.float32, True),
    ((1, 11), (1, 1), (1, 1), torch.float32, False),      # InceptionNeXt bands
    ((11, 1), (1, 1), (1, 1), torch.bfloat16, True),
    ((3, 3), (1, 1), (5, 5), torch.float16, True),        # UniRepLKNet's widest dilated branch
    ((3, 3), (1, 1), (4, 4), torch.bfloat16, False),
    ((3, 3), (2, 2), (1, 1), torch.float32, False),
    ((7, 7), (2, 2), (1, 1), torch.bfloat16, True),
    ((5, 5), (2, 2), (2, 2), torch.float16, False),
    ((13, 13), (2, 2), (1, 1), torch.float32, True),
]


def _case_id(case):
    (kh, kw), (sh, _), (dh, _), dtype, cl = case
    return f'{kh}x{kw}-s{sh}-d{dh}-{str(dtype)[6:]}-{"nhwc" if cl else "nchw"}'


def _depthwise_reference(x, weight, bias, stride, padding, dilation, grad):
    """PyTorch conv in float64 on the same (rounded) inputs: output and the three gradients."""
    inputs = [t.detach().double().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    y = F.conv2d(inputs[0], inputs[1], inputs[2] if bias is not None else None, stride, padding, dilation,
                 groups=x.shape[1])
    return (y.detach(),) + torch.autograd.grad(y, inputs, grad.double())


def _depthwise_problem(case, batch, channels, size, seed=0):
    """Inputs of one case (in the case's layout), its float64 reference and a checker for the results."""
    kernel, stride, dilation, dtype, channels_last = case
    gen = torch.Generator().manual_seed(seed)
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    x = _layout(torch.randn(batch, channels, *size, generator=gen).to(dtype), channels_last)
    weight = torch.randn(channels, 1, *kernel, generator=gen).to(dtype)
    bias = torch.randn(channels, generator=gen).to(dtype)
    out_shape = F.conv2d(x.float(), weight.float(), None, stride, padding, dilation, groups=channels).shape
    grad = _layout(torch.randn(out_shape, generator=gen).to(dtype), channels_last)
    expected = _depthwise_reference(x, weight, bias, stride, padding, dilation, grad)

    def check(actual):
        for name, a, e in zip(('output', 'input grad', 'weight grad', 'bias grad'), actual, expected):
            _assert_close(a.cpu(), e, dtype, name)
        assert _is_channels_last(actual[0]) == channels_last, 'the output keeps the input layout'
        assert _is_channels_last(actual[1]) == channels_last

    return (x, weight, bias, stride, padding, dilation, grad), check


@pytest.mark.parametrize('case', DEPTHWISE_CASES, ids=_case_id)
def test_depthwise_kernels_match_pytorch(interpreter, case):
    inputs, check = _depthwise_problem(case, 1, 3, (9, 11) if max(case[0]) < 31 else (6, 7))
    check(interpreter.apply(_triton_depthwise_with_grads, inputs))


def test_depthwise_small_tiles_ragged_edges_and_split_reduction(interpreter):
    """Many programs per image: partial tiles at every edge, channel blocks, several weight-grad slices."""
    gen = torch.Generator().manual_seed(1)
    stride, padding, dilation = (2, 1), (0, 3), (1, 2)  # asymmetric, not 'same'
    x = torch.randn(2, 3, 5, 7, generator=gen)
    weight = torch.randn(3, 1, 3, 4, generator=gen)  # even kernel width
    out_shape = F.conv2d(x, weight, None, stride, padding, dilation, groups=3).shape
    grad = torch.randn(out_shape, generator=gen)
    y, gx, gw = interpreter.apply(_triton_depthwise_tiled,
                                  (x, weight, stride, padding, dilation, grad, (2, 2, 4), (2, 8, 3)))
    expected = _depthwise_reference(x, weight, None, stride, padding, dilation, grad)
    for name, a, e in zip(('output', 'input grad', 'weight grad'), (y, gx, gw), expected):
        _assert_close(a, e, torch.float32, name)


def test_depthwise_module_forced_to_triton_matches_torch_under_autocast(interpreter):
    """The layer seam: DepthwiseConv2d with the 'triton' backend under CPU autocast, like F.conv2d."""
    torch.manual_seed(0)
    module = DepthwiseConv2d(4, (1, 7), dilation=(1, 2))
    x = torch.randn(2, 4, 6, 9)
    y_ref, gx_ref, grads_ref = _module_with_backend(module, x, 'torch', autocast_dtype=torch.bfloat16)
    y, gx, grads = interpreter.apply(_module_with_backend, (module, x, 'triton', torch.bfloat16))
    assert y.dtype == y_ref.dtype == torch.bfloat16
    _assert_close(y, y_ref.double(), torch.bfloat16, 'output')
    # fp32 leaves whose gradients were computed in bf16 and cast back, on both paths
    _assert_close(gx, gx_ref, torch.float32, 'input grad', precision=torch.bfloat16)
    for name in grads_ref:
        _assert_close(grads[name], grads_ref[name], torch.float32, name, precision=torch.bfloat16)


# ------------------------------------------------------------------------------------ SKA kernels

# (channels, kernels G, K, dtype of x, dtype of the dynamic weights, channels_last)
SKA_CASES = [
    (16, 2, 3, torch.float32, torch.float32, False),   # LSNet: groups = 8 channels per kernel
    (16, 2, 3, torch.bfloat16, torch.bfloat16, True),
    (8, 8, 3, torch.float16, torch.float16, False),   # one channel per kernel
    (12, 4, 3, torch.float16, torch.float32, True),    # mixed precision, as the reference allows
    (8, 2, 5, torch.float32, torch.float32, False),
]


@pytest.mark.parametrize('case', SKA_CASES, ids=lambda c: f'c{c[0]}-g{c[1]}-k{c[2]}-{str(c[3])[6:]}-{str(c[4])[6:]}'
                         f'-{"nhwc" if c[5] else "nchw"}')
def test_ska_kernels_match_pytorch(interpreter, case):
    inputs, check = _ska_problem(case, 2, (5, 7))
    check(interpreter.apply(_triton_ska_with_grads, inputs))


def _ska_problem(case, batch, size, seed=0):
    c, g, k, dtype, wdtype, channels_last = case
    gen = torch.Generator().manual_seed(seed)
    x = _layout(torch.randn(batch, c, *size, generator=gen).to(dtype), channels_last)
    weight = torch.randn(batch, g, k * k, *size, generator=gen).to(wdtype)
    grad = _layout(torch.randn(batch, c, *size, generator=gen).to(dtype), channels_last)
    xr, wr = x.double().requires_grad_(), weight.double().requires_grad_()
    yr = _torch_ska(xr, wr)
    expected = (yr.detach(),) + torch.autograd.grad(yr, (xr, wr), grad.double())

    def check(actual):
        for name, a, e, dt in zip(('output', 'input grad', 'weight grad'), actual, expected, (dtype, dtype, wdtype)):
            _assert_close(a.cpu(), e, dt, name)
        assert _is_channels_last(actual[0]) == channels_last

    return (x, weight, grad), check


def test_ska_small_tiles(interpreter):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 6, 5, 6, generator=gen)
    weight = torch.randn(1, 3, 9, 5, 6, generator=gen)
    grad = torch.randn(1, 6, 5, 6, generator=gen)
    xr, wr = x.double().requires_grad_(), weight.double().requires_grad_()
    yr = _torch_ska(xr, wr)
    expected = (yr.detach(),) + torch.autograd.grad(yr, (xr, wr), grad.double())
    actual = interpreter.apply(_triton_ska_with_grads, (x, weight, grad, (2, 2, 4)))
    for name, a, e in zip(('output', 'input grad', 'weight grad'), actual, expected):
        _assert_close(a, e, torch.float32, name)


def test_lsconv_forced_to_triton_matches_torch(interpreter):
    """An LSNet block part (LKP's 7x7 depthwise conv + SKA) with both dispatchers forced to Triton."""
    torch.manual_seed(0)
    module = LSConv(16)
    x = torch.randn(2, 16, 6, 6)
    y_ref, gx_ref, grads_ref = _module_with_backend(module, x, 'torch')
    y, gx, grads = interpreter.apply(_module_with_backend, (module, x, 'triton'))
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-4)
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device (compiled kernels); CPU runs '
                    'the same cases under the interpreter above')
def test_compiled_kernels_on_cuda_match_pytorch():
    """The same cases at larger sizes (several tiles and channel blocks) with the kernels compiled for the GPU."""
    for case in DEPTHWISE_CASES:
        inputs, check = _depthwise_problem(case, 2, 80, (28, 30))
        check(_triton_depthwise_with_grads(*[t.cuda() if torch.is_tensor(t) else t for t in inputs]))
    for case in SKA_CASES:
        c, g = case[0] * 8, case[1] * 8
        inputs, check = _ska_problem((c, g) + case[2:], 2, (28, 30))
        check(_triton_ska_with_grads(*[t.cuda() for t in inputs]))


# --------------------------------------------------------------------------------- custom ops

def _opcheck_cases():
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(1, 4, 6, 7, generator=gen), torch.randn(4, 1, 3, 5, generator=gen), torch.randn(4)
    geometry = ([1, 2], [1, 2], [1, 1])
    grad = torch.randn(1, 4, 6, 4, generator=gen)
    xs, ws = torch.randn(1, 8, 5, 6, generator=gen), torch.randn(1, 2, 9, 5, 6, generator=gen)
    gs = torch.randn(1, 8, 5, 6, generator=gen)
    return {
        'depthwise_conv2d': (x.requires_grad_(), w.requires_grad_(), b.requires_grad_()) + geometry,
        'depthwise_conv2d_input_grad': (grad, x.detach(), w.detach()) + geometry,
        'depthwise_conv2d_weight_grad': (grad, x.detach(), w.detach()) + geometry,
        'ska': (xs.requires_grad_(), ws.requires_grad_()),
        'ska_input_grad': (gs, ws.detach()),
        'ska_weight_grad': (gs, xs.detach(), ws.detach()),
    }


@pytest.mark.parametrize('op_name', list(_opcheck_cases()))
def test_custom_op_opcheck(interpreter, op_name):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of every op."""
    result = interpreter.apply(_opcheck, (op_name, _opcheck_cases()[op_name]))
    assert result and all(outcome == 'SUCCESS' for outcome in result.values()), result


def test_torch_compile_traces_the_ops_in_one_graph(interpreter):
    gen = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(2, 8, 5, 6, generator=gen), torch.randn(8, 1, 3, 5, generator=gen), torch.randn(8)
    ska_weight = torch.randn(2, 2, 9, 5, 6, generator=gen)
    eager, compiled = interpreter.apply(_compiled_depthwise_and_ska, (x, w, b, ska_weight))
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)


def test_kernels_refuse_cpu_tensors_without_the_interpreter(monkeypatch):
    pytest.importorskip('triton')
    from lkconv.kernels import launch
    from lkconv.kernels.ops import triton_depthwise_conv2d, triton_small_kernel_aggregation
    monkeypatch.setattr(launch, 'interpreting', lambda: False)
    with pytest.raises(RuntimeError, match='CUDA tensors'):
        triton_depthwise_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3), None, (1, 1), (1, 1), (1, 1))
    with pytest.raises(RuntimeError, match='CUDA tensors'):
        triton_small_kernel_aggregation(torch.randn(1, 2, 5, 5), torch.randn(1, 1, 9, 5, 5))
    with pytest.raises(TypeError, match='float32, float16 and bfloat16'):
        x, w = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(2, 1, 3, 3, dtype=torch.float64)
        triton_depthwise_conv2d(x, w, None, (1, 1), (1, 1), (1, 1))


# ---------------------------------------------------------------------------------- selection rule

def test_speedup_table_picks_the_nearest_measured_size():
    points = ((56, 56, 1.5), (7, 7, 0.8))
    assert selection.prefers_triton(points, 28, 28)      # nearer 56x56 than 7x7 in log pixels
    assert not selection.prefers_triton(points, 8, 8)
    assert not selection.prefers_triton(points, 56, 56, margin=2.0)
    assert not selection.prefers_triton(None, 56, 56)


def test_add_speedups_merges_and_replaces(monkeypatch):
    monkeypatch.setattr(selection, 'DEPTHWISE_SPEEDUPS', {})
    monkeypatch.setattr(selection, 'SKA_SPEEDUPS', {})
    case = selection.depthwise_case('sm90', 'bfloat16', 'nchw', (13, 13), (1, 1), (1, 1))
    selection.add_speedups([(case, 56, 56, 1.3), (case, 14, 14, 0.9), (case, 56, 56, 1.6)])
    # as loaded from the benchmark's JSON output: lists instead of tuples
    selection.add_speedups([[['sm90', 'ska', 'bfloat16', 'nchw', 3], 28, 28, 2.0],
                            [['sm90', 'depthwise', 'bfloat16', 'nchw', [13, 13], [1, 1], [1, 1]], 7, 7, 1.2]])
    assert sorted(selection.DEPTHWISE_SPEEDUPS[case]) == [(7, 7, 1.2), (14, 14, 0.9), (56, 56, 1.6)]
    assert list(selection.SKA_SPEEDUPS) == [('sm90', 'ska', 'bfloat16', 'nchw', 3)]


def test_auto_never_picks_triton_for_cpu_tensors(monkeypatch):
    x, w = torch.randn(2, 4, 8, 8), torch.randn(4, 1, 13, 13)
    case = selection.depthwise_case('sm90', 'float32', 'nchw', (13, 13), (1, 1), (1, 1))
    monkeypatch.setattr(selection, 'DEPTHWISE_SPEEDUPS', {case: ((8, 8, 10.0),)})
    monkeypatch.setattr(selection, 'SKA_SPEEDUPS', {selection.ska_case('sm90', 'float32', 'nchw', 3): ((8, 8, 10.0),)})
    assert not selection.use_triton_depthwise(x, w, (1, 1), (6, 6), (1, 1))
    assert not selection.use_triton_ska(x, torch.randn(2, 1, 9, 8, 8))


def test_case_key_uses_the_autocast_dtype_and_the_layout():
    x = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last)
    w = torch.randn(4, 1, 1, 11)
    assert selection.depthwise_case_of(x, w, (1, 1), (1, 2), 'sm90') == \
        ('sm90', 'depthwise', 'float32', 'channels_last', (1, 11), (1, 1), (1, 2))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert selection.depthwise_case_of(x.contiguous(), w, (2, 2), (1, 1), 'sm80')[2:4] == ('bfloat16', 'nchw')
    assert selection.depthwise_case_of(x.double(), w.double(), (1, 1), (1, 1), 'sm90') is None


def test_shipped_table_is_empty_until_measured():
    """No GPU measurement has been recorded: 'auto' must keep PyTorch on every device."""
    assert selection.DEPTHWISE_SPEEDUPS == {} and selection.SKA_SPEEDUPS == {}


# ------------------------------------------------------------------------------ CPU-only imports

_NO_TRITON_SCRIPT = r'''
import importlib.abc, sys, traceback

asked_by_lkconv = []

class NoTriton(importlib.abc.MetaPathFinder):
    """Behave like an install without triton, and note whether lkconv code asked for it."""
    def find_spec(self, name, path=None, target=None):
        if name == 'triton' or name.startswith('triton.'):
            asked_by_lkconv.append(any('/lkconv/' in f.filename for f in traceback.extract_stack()))
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        return None

sys.meta_path.insert(0, NoTriton())
import timm, torch, lkconv
model = timm.create_model('lsnet_t', num_classes=10)
model(torch.randn(2, 3, 64, 64)).sum().backward()
with torch.no_grad():
    timm.create_model('unireplknet_a').eval()(torch.randn(1, 3, 64, 64))
loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'triton' or m in (
    'lkconv.kernels.depthwise_triton', 'lkconv.kernels.ska_triton', 'lkconv.kernels.launch'))
print('asked_by_lkconv', any(asked_by_lkconv), 'loaded', loaded)
'''


def test_cpu_models_never_import_triton():
    """Creating and training a model on CPU must work without triton and never try to import it."""
    result = subprocess.run([sys.executable, '-c', _NO_TRITON_SCRIPT], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'asked_by_lkconv False loaded []' in result.stdout, result.stdout


# ------------------------------------------------------------------------------------- benchmark

def test_bench_kernels_smoke_run(tmp_path):
    """scripts/bench_kernels.py --smoke: every convolution of the models, all dtypes and both layouts checked
    against PyTorch, every path timed, selection rows emitted."""
    env = dict(os.environ, TRITON_INTERPRET='1')
    result = subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'bench_kernels.py'), '--smoke',
                             '--json', str(tmp_path / 'kernels.json'), '--emit-table'],
                            capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / 'kernels.json').read_text())
    checks, speed = report['checks'], report['speed']
    assert checks and all(c['ok'] for c in checks) and 'FAIL' not in result.stdout
    assert {c['dtype'] for c in checks} == {'float32', 'float16', 'bfloat16'}
    assert {c['layout'] for c in checks} == {'nchw', 'channels_last'}
    models = {m for r in speed for m in r['models']}
    assert models == {'unireplknet_t', 'van_b2', 'lsnet_t', 'inceptionnext_tiny'}  # the interpreted default
    for r in speed:
        assert set(r['ms']) == {'torch/nchw', 'torch/channels_last', 'triton/nchw', 'triton/channels_last'}
    assert any(r['op'] == 'ska' for r in speed)
    assert len(report['selection_rows']) == 2 * len(speed)
    assert 'DEPTHWISE_SPEEDUPS' in result.stdout and "'depthwise', 'bfloat16'" in result.stdout
