"""The Triton depthwise-conv and SKA kernels against PyTorch, at the geometries the models really run.

Cases come from the models themselves: every `DepthwiseConv2d` and `SKA` call of a model (training and
deploy form, built on the meta device) is recorded with its input shape, kernel, stride, padding,
dilation and bias, so UniRepLKNet's dilated branches, InceptionNeXt's 1x11 / 11x1 bands, VAN's 7x7
dilation-3 conv and LSNet's stride-2 convs and SKA are all covered as the models use them.

* `check_case`: forward, input gradient and weight (and bias) gradient of the Triton path against a
  float64 PyTorch reference computed from the same rounded inputs, as norm-wise relative errors
  ||out - ref|| / ||ref||; a non-finite result never passes.
* `time_case`: forward + backward step time of every path on fresh random inputs, interleaved in
  rounds (each round visits every path once), each step between CUDA events; the median is reported.
  Paths: PyTorch on NCHW and on channels_last input (and, where this torch has
  `torch.backends.cudnn.depthwise_kernel`, with it forced to 'cudnn' and to 'native'), Triton on both.
* `selection_rows`: the speed-ups (PyTorch 'auto' time / Triton time on the same layout) in the form
  `lkconv.kernels.selection.add_speedups` reads.

Roofline (specs/performance.md section 8): FLOPs = 2 * MACs * 3 (forward, input grad, weight grad),
padded taps counted; ideal traffic = every activation tensor read or written once per pass; the kernels
accumulate in fp32 on CUDA cores, so the compute ceiling is the fp32 FMA rate.
"""
import json
import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..utils import relative_error
from .options import KERNEL_DTYPES

__all__ = [
    'DTYPES', 'TOLERANCE', 'KernelCase', 'model_cases', 'shrink_cases', 'check_case', 'time_case', 'torch_paths',
    'roofline_for', 'case_cost', 'selection_rows', 'table_entries', 'run',
]

DTYPES = {name: getattr(torch, name) for name in KERNEL_DTYPES}
# norm-wise relative error allowed against the float64 reference: a few roundings of an fp32-accumulated result
TOLERANCE = {'float32': 1e-5, 'float16': 2e-3, 'bfloat16': 1.6e-2}
LAYOUTS = ('nchw', 'channels_last')
# device name fragment -> (HBM bytes/s, fp32 FMA FLOP/s), from specs/performance.md section 8
ROOFLINES = {'H200': (4.8e12, 66.9e12), 'H100': (3.35e12, 66.9e12)}
IntPair = Tuple[int, int]


@dataclass(frozen=True)
class KernelCase:
    """One convolution as a model runs it (per image: channels x height x width input)."""
    op: str  # 'depthwise' or 'ska'
    channels: int
    height: int
    width: int
    kernel: IntPair
    stride: IntPair = (1, 1)
    padding: IntPair = (0, 0)
    dilation: IntPair = (1, 1)
    bias: bool = False
    groups: int = 0  # SKA: dynamic kernels per pixel (G); channel c uses kernel c mod G
    models: Tuple[str, ...] = ()

    @property
    def geometry(self) -> str:
        kh, kw = self.kernel
        text = f'{kh}x{kw}'
        if self.op == 'ska':
            return f'ska {text} G{self.groups}'
        if self.dilation != (1, 1):
            text += f' d{self.dilation[0]}' if self.dilation[0] == self.dilation[1] else f' d{self.dilation}'
        if self.stride != (1, 1):
            text += f' s{self.stride[0]}'
        return text + (' +bias' if self.bias else '')

    @property
    def label(self) -> str:
        return f'{self.geometry} {self.channels}x{self.height}x{self.width}'

    def key(self) -> tuple:
        return tuple(v for k, v in asdict(self).items() if k != 'models')

    @classmethod
    def from_dict(cls, d: Dict) -> 'KernelCase':
        d = dict(d)
        for k in ('kernel', 'stride', 'padding', 'dilation', 'models'):
            d[k] = tuple(d[k])
        return cls(**d)

    def output_size(self) -> IntPair:
        if self.op == 'ska':
            return self.height, self.width
        from ..kernels.geometry import conv_output_size
        return tuple(conv_output_size(s, k, st, p, d) for s, k, st, p, d in zip(
            (self.height, self.width), self.kernel, self.stride, self.padding, self.dilation))


# ------------------------------------------------------------------------------------------- cases

def _merge(cases: Sequence[KernelCase]) -> List[KernelCase]:
    """One case per distinct convolution, listing every model that runs it, in first-seen order."""
    merged: Dict[tuple, KernelCase] = {}
    for case in cases:
        key = case.key()
        if key in merged:
            models = merged[key].models + tuple(m for m in case.models if m not in merged[key].models)
            merged[key] = replace(merged[key], models=models)
        else:
            merged[key] = case
    return list(merged.values())


def model_cases(models: Sequence[str], img_size: int = 224, forms: Sequence[str] = ('train', 'deploy')
                ) -> List[KernelCase]:
    """Every depthwise conv and SKA call of `models` at `img_size`, recorded from a meta-device forward."""
    import timm
    from timm.utils import reparameterize_model

    from lkconv.layers import SKA, DepthwiseConv2d

    found: List[KernelCase] = []
    for name in models:
        for form in forms:
            model = timm.create_model(name, device='meta').eval()
            if form == 'deploy':
                model = reparameterize_model(model)

            def record(module, args, name=name):
                c, h, w = args[0].shape[1:]
                if isinstance(module, SKA):
                    g, taps = args[1].shape[1:3]
                    k = math.isqrt(taps)
                    found.append(KernelCase('ska', c, h, w, (k, k), padding=(k // 2, k // 2), groups=g,
                                            models=(name,)))
                else:
                    found.append(KernelCase('depthwise', c, h, w, module.kernel_size, module.stride, module.padding,
                                            module.dilation, module.bias is not None, models=(name,)))

            hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, (DepthwiseConv2d, SKA))]
            with torch.no_grad():
                model(torch.empty(1, 3, img_size, img_size, device='meta'))
            for hook in hooks:
                hook.remove()
    return _merge(found)


def shrink_cases(cases: Sequence[KernelCase], channels: int = 4, size: int = 6) -> List[KernelCase]:
    """The same geometries on tiny tensors (for the CPU interpreter); cases that coincide are merged."""
    small = []
    for case in cases:
        if case.op == 'ska':
            groups = min(case.groups, 2)
            c = groups * min(case.channels // case.groups, 2)
        else:
            groups, c = 0, min(case.channels, channels)
        small.append(replace(case, channels=c, groups=groups, height=min(case.height, size),
                             width=min(case.width, size)))
    return _merge(small)


# --------------------------------------------------------------------------------------- the paths

def _cudnn_modes() -> Tuple[str, ...]:
    """Values of `torch.backends.cudnn.depthwise_kernel` besides 'auto', where this torch has the setting."""
    return ('cudnn', 'native') if hasattr(torch._C, '_set_cudnn_depthwise_kernel') else ()


@contextmanager
def _cudnn_depthwise(mode: Optional[str]) -> Iterator[None]:
    if mode is None:
        yield
        return
    previous = torch.backends.cudnn.depthwise_kernel
    torch.backends.cudnn.depthwise_kernel = mode
    try:
        yield
    finally:
        torch.backends.cudnn.depthwise_kernel = previous


def torch_paths(case: KernelCase, device: torch.device) -> List[str]:
    """PyTorch paths for a case: 'torch/<layout>' (cuDNN's own choice), and on CUDA, where this torch can
    force it, 'torch+cudnn/<layout>' and 'torch+native/<layout>'."""
    modes = _cudnn_modes() if case.op == 'depthwise' and device.type == 'cuda' else ()
    return [f'torch/{layout}' for layout in LAYOUTS] + [f'torch+{m}/{layout}' for m in modes for layout in LAYOUTS]


def _parse_path(path: str) -> Tuple[str, Optional[str], str]:
    backend, layout = path.split('/')
    backend, _, mode = backend.partition('+')
    return backend, mode or None, layout


def _forward(case: KernelCase, backend: str) -> Callable:
    if case.op == 'ska':
        from lkconv.kernels.ops import triton_small_kernel_aggregation
        import lkconv.layers  # noqa: F401  (defines the PyTorch SKA operator)
        return torch.ops.lkconv.small_kernel_aggregation if backend == 'torch' else triton_small_kernel_aggregation
    geometry = (case.stride, case.padding, case.dilation)
    if backend == 'torch':
        return lambda x, w, b=None: F.conv2d(x, w, b, *geometry, groups=case.channels)
    from lkconv.kernels.ops import triton_depthwise_conv2d
    return lambda x, w, b=None: triton_depthwise_conv2d(x, w, b, *geometry)


def _inputs(case: KernelCase, batch: int, generator: torch.Generator) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """fp32 CPU tensors: the op's inputs (x, weight[, bias]) and the gradient of its output."""
    x = torch.randn(batch, case.channels, case.height, case.width, generator=generator)
    kh, kw = case.kernel
    if case.op == 'ska':
        params = [torch.randn(batch, case.groups, kh * kw, case.height, case.width, generator=generator) / kh]
    else:
        params = [torch.randn(case.channels, 1, kh, kw, generator=generator) / math.sqrt(kh * kw)]
        if case.bias:
            params.append(torch.randn(case.channels, generator=generator))
    oh, ow = case.output_size()
    grad = torch.randn(batch, case.channels, oh, ow, generator=generator)
    return [x] + params, grad


def _place(t: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    t = t.to(device, dtype)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def _step(forward: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = forward(*leaves)
    return (y,) + torch.autograd.grad(y, leaves, grad)


# --------------------------------------------------------------------------------------- correctness

_OUTPUTS = ('out', 'grad_input', 'grad_weight', 'grad_bias')


def check_case(case: KernelCase, dtype: str, layout: str, device: torch.device, batch: int = 2, seed: int = 0
               ) -> Dict:
    """Triton forward and gradients against float64 PyTorch on the same (rounded) inputs, on `device`."""
    from lkconv.kernels.geometry import is_channels_last
    torch_dtype = DTYPES[dtype]
    channels_last = layout == 'channels_last'
    inputs, grad = _inputs(case, batch, torch.Generator().manual_seed(seed))
    inputs = [_place(t, device, torch_dtype, channels_last) for t in inputs]
    grad = _place(grad, device, torch_dtype, channels_last)
    reference = _step(_forward(case, 'torch'), [t.double() for t in inputs], grad.double())
    actual = _step(_forward(case, 'triton'), inputs, grad)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    errors = {name: relative_error(a, e, norm='l2') for name, a, e in zip(_OUTPUTS, actual, reference)}
    worst = max(errors.values())
    layout_kept = is_channels_last(actual[0]) == is_channels_last(inputs[0])
    dtype_kept = all(a.dtype == torch_dtype for a in actual)
    problems = []
    if not (math.isfinite(worst) and worst <= TOLERANCE[dtype]):
        problems.append(f'error {worst:.2e} above {TOLERANCE[dtype]:.0e}')
    if not layout_kept:
        problems.append('output layout differs from the input layout')
    if not dtype_kept:
        problems.append('a result has another dtype than the inputs')
    return dict(case=case.label, op=case.op, dtype=dtype, layout=layout, batch=batch,
                errors={k: float(f'{v:.3g}') for k, v in errors.items()}, max_error=float(f'{worst:.3g}'),
                tolerance=TOLERANCE[dtype], ok=not problems, problem='; '.join(problems) or None)


# ------------------------------------------------------------------------------------------- speed

def _timed_ms(step: Callable[[], object], device: torch.device) -> float:
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    began = time.perf_counter()
    step()
    return (time.perf_counter() - began) * 1e3


def case_cost(case: KernelCase, batch: int, dtype: str) -> Tuple[float, float]:
    """(FLOPs, ideal bytes) of one forward + backward step (see the module docstring)."""
    oh, ow = case.output_size()
    kh, kw = case.kernel
    x_elems = batch * case.channels * case.height * case.width
    y_elems = batch * case.channels * oh * ow
    flops = 2.0 * y_elems * kh * kw * 3
    size = torch.empty((), dtype=DTYPES[dtype]).element_size()
    extra = batch * case.groups * kh * kw * oh * ow if case.op == 'ska' else 0  # the dynamic weights
    return flops, 3.0 * (x_elems + y_elems + extra) * size


def roofline_for(device_name: str) -> Optional[Tuple[float, float]]:
    return next((v for k, v in ROOFLINES.items() if k in device_name), None)


def time_case(case: KernelCase, device: torch.device, dtype: str = 'bfloat16', batch: int = 128, warmup: int = 3,
              rounds: int = 20, seed: int = 0, roofline: Optional[Tuple[float, float]] = None) -> Dict:
    """Median forward+backward time of every path (ms), speed-ups and roofline figures of one case."""
    torch_dtype = DTYPES[dtype]
    inputs, grad = _inputs(case, batch, torch.Generator().manual_seed(seed))
    placed = {layout: ([_place(t, device, torch_dtype, layout == 'channels_last') for t in inputs],
                       _place(grad, device, torch_dtype, layout == 'channels_last')) for layout in LAYOUTS}
    steps, errors = {}, {}
    for path in torch_paths(case, device) + [f'triton/{layout}' for layout in LAYOUTS]:
        backend, mode, layout = _parse_path(path)
        forward = _forward(case, backend)

        def step(forward=forward, mode=mode, args=placed[layout]):
            with _cudnn_depthwise(mode):
                return _step(forward, *args)
        try:
            step()  # first call: compiles, autotunes, and shows whether this path runs at all
        except Exception as e:  # e.g. a forced cuDNN mode that has no kernel for this geometry
            errors[path] = f'{type(e).__name__}: {e}'.splitlines()[0]
            continue
        steps[path] = step
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: Dict[str, List[float]] = {path: [] for path in steps}
    for _ in range(max(rounds, 1)):
        for path, step in steps.items():
            times[path].append(_timed_ms(step, device))
    ms = {path: statistics.median(t) for path, t in times.items()}
    flops, traffic = case_cost(case, batch, dtype)
    result = dict(case=case.label, op=case.op, geometry=case.geometry, models=list(case.models), dtype=dtype,
                  batch=batch, ms={p: round(v, 4) for p, v in ms.items()}, errors=errors, flops=flops, bytes=traffic)
    torch_ms = [v for p, v in ms.items() if p.startswith('torch')]
    triton_ms = [v for p, v in ms.items() if p.startswith('triton')]
    for layout in LAYOUTS:  # what 'auto' decides: Triton or PyTorch for an input in this layout
        if f'torch/{layout}' in ms and f'triton/{layout}' in ms:
            result[f'speedup_{layout}'] = round(ms[f'torch/{layout}'] / ms[f'triton/{layout}'], 3)
    if torch_ms and triton_ms:
        best_torch = min(ms, key=lambda p: ms[p] if p.startswith('torch') else math.inf)
        best_triton = min(ms, key=lambda p: ms[p] if p.startswith('triton') else math.inf)
        result.update(best_torch=best_torch, best_triton=best_triton,
                      speedup_vs_best_torch=round(ms[best_torch] / ms[best_triton], 3))
    if triton_ms:
        seconds = min(triton_ms) / 1e3
        result.update(triton_tflops=round(flops / seconds / 1e12, 2), triton_gbps=round(traffic / seconds / 1e9, 1))
        if roofline:
            bound = max(traffic / roofline[0], flops / roofline[1])
            result['triton_roofline_pct'] = round(100 * bound / seconds, 1)
    return result


# --------------------------------------------------------------------------------------- selection

def selection_rows(results: Sequence[Dict], cases: Sequence[KernelCase], arch: str) -> List[list]:
    """[case key, h, w, speedup] rows for `lkconv.kernels.selection.add_speedups` (JSON-friendly lists)."""
    from lkconv.kernels import selection
    rows = []
    for result, case in zip(results, cases):
        for layout in LAYOUTS:
            speedup = result.get(f'speedup_{layout}')
            if speedup is None:
                continue
            if case.op == 'depthwise':
                key = selection.depthwise_case(arch, result['dtype'], layout, case.kernel, case.stride, case.dilation)
            else:
                key = selection.ska_case(arch, result['dtype'], layout, case.kernel[0])
            rows.append([list(key), case.height, case.width, speedup])
    return rows


def table_entries(rows: Sequence[Sequence]) -> Dict[tuple, tuple]:
    """Rows grouped by table key; measurements at the same map size share a point (geometric mean)."""
    by_size: Dict[tuple, Dict[Tuple[int, int], list]] = {}
    for key, h, w, speedup in rows:
        key = tuple(tuple(v) if isinstance(v, list) else v for v in key)
        by_size.setdefault(key, {}).setdefault((h, w), []).append(speedup)
    return {key: tuple((h, w, round(math.exp(statistics.fmean(map(math.log, s))), 3)) for (h, w), s in sizes.items())
            for key, sizes in by_size.items()}


# -------------------------------------------------------------------------------------- command line

def format_speed(results: Sequence[Dict]) -> List[str]:
    lines = [f'{"case":<34}{"models":<30}{"best PyTorch":>24}{"ms":>9}{"Triton":>22}{"ms":>9}{"x best":>8}'
             f'{"TFLOP/s":>9}{"%roof":>7}']
    for r in results:
        if 'best_torch' not in r:
            lines.append(f'{r["case"]:<34}no timing: {r.get("errors")}')
            continue
        roof = f'{r["triton_roofline_pct"]:6.1f}%' if 'triton_roofline_pct' in r else '      -'
        lines.append(f'{r["case"]:<34}{",".join(r["models"])[:29]:<30}{r["best_torch"]:>24}{r["ms"][r["best_torch"]]:9.3f}'
                     f'{r["best_triton"]:>22}{r["ms"][r["best_triton"]]:9.3f}{r["speedup_vs_best_torch"]:7.2f}x'
                     f'{r["triton_tflops"]:9.2f}{roof}')
    return lines


def run(args) -> int:
    """`lkconv bench-kernels`: check the kernels at the models' convolutions, then time them; 1 if a check
    fails. `args` holds the options that `lkconv.bench.commands` defines."""
    if args.smoke:
        from lkconv.kernels.launch import interpreting
        if not interpreting():
            raise SystemExit('--smoke runs the kernels on CPU: set TRITON_INTERPRET=1 in the environment')
        device, args.batch, args.warmup, args.rounds = torch.device('cpu'), 1, 0, 1
    elif torch.cuda.is_available():
        device = torch.device('cuda')
        torch.backends.cudnn.benchmark = True  # cuDNN's fastest algorithm for the PyTorch paths
    else:
        raise SystemExit('no CUDA device: run with --smoke and TRITON_INTERPRET=1 for a CPU check')
    cases = model_cases(args.models, args.img_size)
    if args.smoke:
        cases = shrink_cases(cases)
    device_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (Triton interpreter)'
    roofline = roofline_for(device_name)
    checks = [check_case(case, dtype, layout, device, seed=i)
              for i, case in enumerate(cases) for dtype in DTYPES for layout in LAYOUTS]
    failed = [c for c in checks if not c['ok']]
    print(f'{device_name}: {len(checks) - len(failed)} of {len(checks)} kernel checks pass '
          f'({len(cases)} convolutions x {len(DTYPES)} dtypes x {len(LAYOUTS)} layouts)')
    for c in failed:
        print(f'FAIL {c["case"]} {c["dtype"]} {c["layout"]}: {c["problem"]}')
    results = [time_case(case, device, args.dtype, args.batch, args.warmup, args.rounds, seed=i, roofline=roofline)
               for i, case in enumerate(cases)]
    print(f'\nforward+backward, {args.dtype}, batch {args.batch}, median of {args.rounds} interleaved rounds')
    print('\n'.join(format_speed(results)))
    arch = 'sm{}{}'.format(*torch.cuda.get_device_capability(device)) if device.type == 'cuda' else 'cpu'
    rows = selection_rows(results, cases, arch)
    if args.emit_table:
        print('\n# entries for DEPTHWISE_SPEEDUPS / SKA_SPEEDUPS in lkconv/kernels/selection.py '
              '(or pass the rows to selection.add_speedups):')
        for key, points in table_entries(rows).items():
            print(f'{key!r}: {points!r},')
    if args.json:
        args.json.write_text(json.dumps(dict(device=device_name, arch=arch, roofline=roofline, checks=checks,
                                             speed=results, selection_rows=rows), indent=1) + '\n')
    return 1 if failed else 0
