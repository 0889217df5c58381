"""FLOP accounting with fvcore: what is counted, how, and what is not counted.

fvcore traces a model with `torch.jit.trace` and asks a handler per operator for its cost. Out of the box
it counts convolutions, matmuls and norms, and reports everything else (FFTs, custom autograd Functions,
elementwise arithmetic) as unsupported, i.e. zero. `count_flops` runs one trace with a complete handler
table, so every operator in the trace ends up in exactly one of four places:

* `gmacs`       multiply-accumulates, one fused multiply-add = 1 (fvcore's, timm's `infer_gmacs` and the
                papers' convention). Convolution, linear/matmul/einsum/attention, norms, pooling and
                upsampling as fvcore counts them, plus
                - SKA (LSNet's per-pixel dynamic 3x3 aggregation): B*C*K*K*H*W, like the depthwise conv
                  the official `flops.py` substitutes for it;
                - FFTs: a complex transform of N points = 2.5 * N * log2(N) MACs (the 5 N log2 N real
                  flops of a radix-2 FFT, halved); a real-input or real-output transform (rfft, irfft,
                  hfft, ihfft) half of that.
* `elementwise` arithmetic that is not a multiply-accumulate (add, mul, gating, activations, softmax,
                reductions): one op per element of the largest operand. Kept out of `gmacs`, which
                would otherwise stop being comparable with published numbers.
* ignored       operators that do no arithmetic (views, copies, padding, concatenation, comparisons
                such as ReLU and max).
* `not_counted` anything else, by name and number of calls. Never silently zero.

Counting selects the PyTorch backends of `lkconv.layers` (a GPU kernel computes the same operation but
would trace as an opaque custom op): depthwise convolutions then trace as aten convolutions, and SKA as
its one operator `lkconv::small_kernel_aggregation` (`lkconv.layers.SKA_OP`), which has its own handle.
"""
import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..layers import SKA_OP, layer_backends

__all__ = ['FlopCount', 'count_flops', 'fft_macs', 'FLOP_CONVENTION']

FLOP_CONVENTION = (
    'GMACs = multiply-accumulates per image (1 fused multiply-add = 1; fvcore convention): conv, linear, '
    'matmul, attention, norms, pooling, upsampling, plus SKA as B*C*K*K*H*W and FFTs as 2.5*N*log2(N) per complex '
    'transform (half for real ones). Elementwise ops (add, mul, gating, activations, softmax, reductions) '
    'are counted separately as one op per element, not in GMACs. Activations (macts) = output elements '
    'of conv/linear/matmul/SKA layers.'
)

_MACS, _ELEMENTWISE, _ACTS = 'macs', 'elementwise', 'acts'
Handle = Callable[[List[Any], List[Any]], Counter]


def _fvcore():
    with warnings.catch_warnings():  # fvcore scripts a loss at import, which newer torch flags as deprecated
        warnings.simplefilter('ignore', FutureWarning)
        from fvcore.nn import jit_handles
        from fvcore.nn.jit_analysis import JitModelAnalysis
    return JitModelAnalysis, jit_handles


def _shape(value) -> Optional[List[int]]:
    return value.type().sizes() if value.isCompleteTensor() else None


def _numel(value) -> int:
    shape = _shape(value)
    return math.prod(shape) if shape is not None else 0


def _constant(value):
    """The value of a constant jit argument (an int, a list of ints, None), or None if it is computed."""
    node = value.node()
    if node.kind() == 'prim::ListConstruct':
        items = [_constant(v) for v in node.inputs()]
        return None if any(item is None for item in items) else items
    return value.toIValue()


# ---------------------------------------------------------------------------------------------- FFTs

def fft_macs(signal_shape: Sequence[int], real: bool) -> float:
    """MACs of one FFT over an N-point signal of `signal_shape`: 2.5 N log2 N, halved for real transforms."""
    n = math.prod(signal_shape)
    if n <= 1:
        return 0.0
    return 2.5 * n * math.log2(n) * (0.5 if real else 1.0)


# op -> (transform rank: 1, 2 or None for n-D; kind): 'complex' (signal = output), 'r2c' (real input,
# one-sided output), 'c2r' (one-sided input, real output = signal)
_FFT_OPS = {
    'fft': (1, 'complex'), 'ifft': (1, 'complex'), 'rfft': (1, 'r2c'), 'irfft': (1, 'c2r'),
    'hfft': (1, 'c2r'), 'ihfft': (1, 'r2c'),
    'fft2': (2, 'complex'), 'ifft2': (2, 'complex'), 'rfft2': (2, 'r2c'), 'irfft2': (2, 'c2r'),
    'hfft2': (2, 'c2r'), 'ihfft2': (2, 'r2c'),
    'fftn': (None, 'complex'), 'ifftn': (None, 'complex'), 'rfftn': (None, 'r2c'), 'irfftn': (None, 'c2r'),
    'hfftn': (None, 'c2r'), 'ihfftn': (None, 'r2c'),
}


def _fft_handle(op: str) -> Handle:
    rank, kind = _FFT_OPS[op]

    def handle(inputs, outputs) -> Counter:
        # aten::fft_<op>(self, n or s, dim, norm)
        in_shape, out_shape = _shape(inputs[0]), _shape(outputs[0])
        sizes, dims = _constant(inputs[1]), _constant(inputs[2])
        ndim = len(out_shape)
        if rank == 1:
            dims = [dims if isinstance(dims, int) else -1]
            sizes = None if sizes is None else [sizes]
        elif dims is None:  # the default dims: the last `rank`, else the last len(s), else all of them
            dims = list(range(-(rank or len(sizes or out_shape)), 0))
        dims = [d % ndim for d in dims]
        if kind == 'r2c':
            # the one-sided output has n//2+1 entries on the last transformed dim: take n from the
            # requested size if it is a constant, else from the (real) input
            signal = [out_shape[d] for d in dims[:-1]]
            signal.append(sizes[-1] if sizes is not None and sizes[-1] not in (None, -1) else in_shape[dims[-1]])
        else:  # complex: output size = signal size; c2r: the real output is the signal
            signal = [out_shape[d] for d in dims]
        transforms = math.prod(out_shape) // math.prod(out_shape[d] for d in dims)
        return Counter({f'{_MACS}/fft_{op}': transforms * fft_macs(signal, real=kind != 'complex')})

    return handle


# ----------------------------------------------------------------------------------------------- SKA

def _ska_handle(inputs, outputs) -> Counter:
    # lkconv::small_kernel_aggregation(x (B, C, H, W), weight (B, G, K*K, H, W))
    b, c, h, w = _shape(inputs[0])
    taps = _shape(inputs[1])[2]
    return Counter({f'{_MACS}/ska': b * c * taps * h * w, f'{_ACTS}/ska': b * c * h * w})


# ----------------------------------------------------------------------------------------- the table

def _scaled_attention_handle(inputs, outputs) -> Counter:
    # q (..., L, E) @ k^T (..., E, S) then attn (..., L, S) @ v (..., S, Ev)
    q, k, v = _shape(inputs[0]), _shape(inputs[1]), _shape(inputs[2])
    batch = math.prod(q[:-2])
    macs = batch * q[-2] * k[-2] * (q[-1] + v[-1])
    op = 'scaled_dot_product_attention'
    return Counter({f'{_MACS}/{op}': macs, f'{_ACTS}/{op}': _numel(outputs[0])})


def _elementwise_handle(op: str) -> Handle:
    def handle(inputs, outputs) -> Counter:
        largest = max([_numel(v) for v in list(inputs) + list(outputs)] or [0])
        return Counter({f'{_ELEMENTWISE}/{op}': largest})
    return handle


def _avg_pool_handle(inputs, outputs) -> Counter:
    # aten::avg_pool2d(self, kernel_size, ...): one add per window tap and output
    kernel = _constant(inputs[1]) or [1]
    taps = math.prod(kernel) if len(kernel) > 1 else kernel[0] ** 2
    return Counter({f'{_MACS}/avg_pool2d': _numel(outputs[0]) * taps})


def _tagged(category: str, op: str, fvcore_handle: Callable) -> Handle:
    def handle(inputs, outputs) -> Counter:
        value = fvcore_handle(inputs, outputs)
        if isinstance(value, Counter):
            return Counter({f'{category}/{k}': v for k, v in value.items()})
        return Counter({f'{category}/{op}': value})
    return handle


def _with_activations(op: str, macs: Handle) -> Handle:
    def handle(inputs, outputs) -> Counter:
        return macs(inputs, outputs) + Counter({f'{_ACTS}/{op}': _numel(outputs[0])})
    return handle


# arithmetic that is not a multiply-accumulate; trailing-underscore (in-place) forms are added below
_ELEMENTWISE_OPS = (
    'add', 'sub', 'rsub', 'mul', 'div', 'neg', 'reciprocal', 'addcmul', 'addcdiv', 'lerp', 'square', 'pow',
    'sqrt', 'rsqrt', 'exp', 'log', 'abs', 'sin', 'cos', 'erf', 'tanh', 'sigmoid', 'hardsigmoid', 'gelu',
    'silu', 'hardswish', 'mish', 'elu', 'leaky_relu', 'softplus', 'softmax', 'log_softmax', 'mean', 'sum',
    'var', 'std', 'norm', 'linalg_vector_norm', 'frobenius_norm', 'complex', 'polar',
)
# no arithmetic (views, copies, padding, selection, comparisons), in addition to fvcore's own list
_ZERO_COST_OPS = (
    'pad', 'reflection_pad2d', 'replication_pad2d', 'real', 'imag', 'view_as_real', 'view_as_complex', 'repeat',
    'repeat_interleave', 'flip', 'clone', 'unflatten', 'movedim', 'unfold', 'expand_as', 'view_as',
    'reshape_as', 'fill_', 'zero_', 'ones_like', 'empty_like', 'new_ones', 'pixel_shuffle', 'pixel_unshuffle',
    'channel_shuffle', 'index_select', 'where', 'lt', 'le', 'ne', 'minimum', 'maximum', 'min', 'argmax',
    'hardtanh', 'hardtanh_', 'relu6', 'threshold', 'max_pool2d', 'alias', 'lift_fresh', 'scalar_tensor',
    'masked_fill_',
)


def _handles() -> Dict[str, Optional[Handle]]:
    _, jh = _fvcore()
    fvcore_macs = {
        'aten::_convolution': ('conv', jh.conv_flop_jit, True),
        'aten::addmm': ('addmm', jh.addmm_flop_jit, True),
        'aten::bmm': ('bmm', jh.bmm_flop_jit, True),
        'aten::einsum': ('einsum', jh.einsum_flop_jit, True),
        'aten::matmul': ('matmul', jh.matmul_flop_jit, True),
        'aten::mm': ('mm', jh.matmul_flop_jit, True),
        'aten::linear': ('linear', jh.linear_flop_jit, True),
        'aten::batch_norm': ('batch_norm', jh.batchnorm_flop_jit, False),
        'aten::group_norm': ('group_norm', jh.norm_flop_counter(2), False),
        'aten::layer_norm': ('layer_norm', jh.norm_flop_counter(2), False),
        'aten::instance_norm': ('instance_norm', jh.norm_flop_counter(1), False),
        'aten::upsample_nearest2d': ('upsample_nearest2d', jh.elementwise_flop_counter(0, 1), False),
        'aten::upsample_bilinear2d': ('upsample_bilinear2d', jh.elementwise_flop_counter(0, 4), False),
        'aten::upsample_bicubic2d': ('upsample_bicubic2d', jh.elementwise_flop_counter(0, 16), False),
        'aten::adaptive_avg_pool2d': ('adaptive_avg_pool2d', jh.elementwise_flop_counter(1, 0), False),
        'aten::grid_sampler': ('grid_sampler', jh.elementwise_flop_counter(0, 4), False),
    }
    handles: Dict[str, Optional[Handle]] = {}
    for name, (op, fn, is_layer) in fvcore_macs.items():
        macs = _tagged(_MACS, op, fn)
        handles[name] = _with_activations(op, macs) if is_layer else macs
    handles['aten::scaled_dot_product_attention'] = _scaled_attention_handle
    handles['aten::avg_pool2d'] = _avg_pool_handle
    handles[SKA_OP] = _ska_handle
    for op in _FFT_OPS:
        handles[f'aten::fft_{op}'] = _fft_handle(op)
    for op in _ELEMENTWISE_OPS:
        handles[f'aten::{op}'] = handles[f'aten::{op}_'] = _elementwise_handle(op)
    for op in _ZERO_COST_OPS:
        handles[f'aten::{op}'] = None
    return handles


# --------------------------------------------------------------------------------------------- count

@dataclass
class FlopCount:
    """Costs of one forward pass at the traced input (use batch 1 for per-image numbers)."""
    macs: Dict[str, float] = field(default_factory=dict)  # MACs by operator
    elementwise: Dict[str, float] = field(default_factory=dict)  # elementwise ops by operator
    activations: Dict[str, float] = field(default_factory=dict)  # output elements by layer operator
    not_counted: Dict[str, int] = field(default_factory=dict)  # operator -> number of calls

    @property
    def gmacs(self) -> float:
        return sum(self.macs.values()) / 1e9

    @property
    def elementwise_gops(self) -> float:
        return sum(self.elementwise.values()) / 1e9

    @property
    def macts(self) -> float:
        """Activations in millions (timm's `infer_macts`)."""
        return sum(self.activations.values()) / 1e6

    def not_counted_summary(self) -> str:
        return '; '.join(f'{op} x{n}' for op, n in sorted(self.not_counted.items()))


def count_flops(model: nn.Module, input_size: Tuple[int, ...], batch_size: int = 1) -> FlopCount:
    """Trace `model` in eval mode on zeros of shape (batch_size, *input_size) and count its costs.

    The model's train/eval mode is restored afterwards. Use the deploy form (after
    `timm.utils.reparameterize_model`) for numbers comparable with published ones.
    """
    JitModelAnalysis, _ = _fvcore()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    x = torch.zeros(batch_size, *input_size, device=device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    logging.getLogger('fvcore').setLevel(logging.ERROR)  # `not_counted` carries what it would warn about
    try:
        with layer_backends(depthwise='torch', ska='torch'), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # tracer and deprecation warnings about jit.trace
            analysis = JitModelAnalysis(model, (x,)).set_op_handle(**_handles())
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_op = analysis.by_operator()
            not_counted = analysis.unsupported_ops()
    finally:
        for m, training in modes:
            m.training = training
    result = FlopCount(not_counted=dict(not_counted))
    buckets = {_MACS: result.macs, _ELEMENTWISE: result.elementwise, _ACTS: result.activations}
    for key, value in by_op.items():
        category, op = key.split('/', 1)
        buckets[category][op] = buckets[category].get(op, 0) + float(value)
    return result
