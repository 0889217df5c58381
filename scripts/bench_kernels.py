#!/usr/bin/env python3
"""Forward+backward speed of the Triton depthwise-conv and SKA kernels against PyTorch, with a roofline.

For every stage of the chosen models (channels and feature-map size at --img-size), a KxK depthwise conv
(default 13x13, 'same' padding, with bias) runs forward + input grad + weight grad + bias grad at
--batch / --dtype through four paths: PyTorch on NCHW input (the native depthwise kernel for k > 5),
PyTorch on channels_last input (cuDNN), and the Triton kernels on either layout. For LSNet models the
stage shapes are also run through SKA (3x3 dynamic kernels, one kernel per 8 channels).

Each path is first checked against a float32 PyTorch reference (max error relative to the largest
reference value; FAIL above the dtype's tolerance), then timed: warm-up steps, then rounds that visit
every path in turn, each step between CUDA events; the median is reported. Columns:
  ms       median forward+backward step time
  TFLOP/s  2 * MACs * 3 (forward, input grad, weight grad) / time, padded taps counted
  GB/s     ideal HBM traffic / time: every tensor read or written once per pass
           (forward x -> y, input grad dy -> dx, weight grad dy, x -> dw)
  %roof    roofline time / measured time, roofline = max(traffic / HBM bandwidth, FLOPs / FP32-FMA peak);
           the kernels accumulate in fp32 on CUDA cores (specs: H100 SXM 3.35 TB/s, H200 4.8 TB/s,
           66.9 TFLOP/s fp32 FMA on both)
  speedup  PyTorch time / Triton time on the same input layout (what the backend selection decides)

Examples:
  python scripts/bench_kernels.py                                 # GPU: 13x13, bf16, batch 128
  python scripts/bench_kernels.py --json kernels.json --emit-table  # + selection-table entries
  TRITON_INTERPRET=1 python scripts/bench_kernels.py --smoke        # CPU: tiny shapes, correctness only
"""
import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F

import lkconv  # noqa: F401  (registers the models)
from lkconv.kernels import selection
from lkconv.kernels.ops import triton_depthwise_conv2d, triton_small_kernel_aggregation
from lkconv.layers.ska import _torch_ska

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
# device name fragment -> (HBM bytes/s, fp32 FMA FLOP/s), from specs/performance.md section 8
ROOFLINES = {'H200': (4.8e12, 66.9e12), 'H100 80GB HBM3': (3.35e12, 66.9e12), 'H100 SXM': (3.35e12, 66.9e12)}
PATHS = ('torch/nchw', 'torch/channels_last', 'triton/nchw', 'triton/channels_last')
SKA_GROUPS = 8  # LSNet: channels per dynamic kernel


@dataclass
class Case:
    op: str                 # 'depthwise' or 'ska'
    model: str
    stage: int
    batch: int
    channels: int
    height: int
    width: int
    kernel: int
    dtype: str
    macs: int = 0           # forward multiply-accumulates
    traffic: int = 0        # ideal bytes for forward + both backward passes
    results: Dict[str, dict] = field(default_factory=dict)


def stage_shapes(model: str, img_size: int) -> List[Tuple[int, int, int]]:
    """(channels, height, width) of each stage, from the model's feature_info (built on the meta device)."""
    info = timm.create_model(model, device='meta').feature_info
    return [(f['num_chs'], math.ceil(img_size / f['reduction']), math.ceil(img_size / f['reduction'])) for f in info]


def make_case(op: str, model: str, stage: int, batch: int, shape, kernel: int, dtype: torch.dtype) -> Case:
    c, h, w = shape
    elements = batch * c * h * w  # stride 1, 'same' padding: output = input size
    size = torch.empty((), dtype=dtype).element_size()
    if op == 'depthwise':
        macs, traffic = elements * kernel * kernel, 3 * 2 * elements * size
    else:  # SKA: x, y and the dynamic weights (9/8 of x's size) in every pass
        weights = batch * (c // SKA_GROUPS) * kernel * kernel * h * w
        macs, traffic = elements * kernel * kernel, 3 * (2 * elements + weights) * size
    return Case(op, model, stage, batch, c, h, w, kernel, str(dtype)[6:], macs, traffic)


def _inputs(case: Case, device: torch.device, channels_last: bool, gen: torch.Generator):
    dtype = DTYPES[case.dtype]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (case.batch, case.channels, case.height, case.width)
    x = torch.randn(shape, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
    if case.op == 'depthwise':
        params = [torch.randn(case.channels, 1, case.kernel, case.kernel, generator=gen) / case.kernel,
                  torch.randn(case.channels, generator=gen)]
    else:
        params = [torch.randn(case.batch, case.channels // SKA_GROUPS, case.kernel ** 2, case.height, case.width,
                              generator=gen) / case.kernel]
    return [x] + [p.to(device, dtype) for p in params], grad


def _forward(case: Case, backend: str) -> Callable:
    pad = case.kernel // 2
    if case.op == 'depthwise':
        if backend == 'torch':
            return lambda x, w, b: F.conv2d(x, w, b, 1, pad, 1, case.channels)
        return lambda x, w, b: triton_depthwise_conv2d(x, w, b, (1, 1), (pad, pad), (1, 1))
    return _torch_ska if backend == 'torch' else triton_small_kernel_aggregation


def _step(forward: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = forward(*leaves)
    return (y,) + torch.autograd.grad(y, leaves, grad)


def _max_error(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """Largest |actual - expected| relative to max |expected|, over the output and every gradient."""
    return max(((a.float() - e).abs().max() / e.abs().max().clamp_min(1e-12)).item()
               for a, e in zip(actual, expected))


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed_ms(fn: Callable, device: torch.device) -> float:
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def run_case(case: Case, device: torch.device, warmup: int, rounds: int) -> None:
    """Check every path against a float32 reference, then time them in interleaved rounds."""
    steps = {}
    reference = None
    for path in PATHS:
        backend, layout = path.split('/')
        inputs, grad = _inputs(case, device, layout == 'channels_last', torch.Generator().manual_seed(case.stage))
        if reference is None:  # same values in every layout: one reference serves all paths
            reference = _step(_forward(case, 'torch'), [t.float() for t in inputs], grad.float())
        forward = _forward(case, backend)
        out = []
        checked_ms = _timed_ms(lambda: out.extend(_step(forward, inputs, grad)), device)
        error = _max_error(out, reference)
        case.results[path] = dict(max_error=error, ok=error <= TOLERANCE[DTYPES[case.dtype]],
                                  channels_last_out=out[0].is_contiguous(memory_format=torch.channels_last))
        steps[path] = (lambda f=forward, i=inputs, g=grad: _step(f, i, g))
        if not rounds:  # smoke run: the checked (first, uncompiled or interpreted) step is the only timing
            case.results[path]['ms'] = checked_ms
    if not rounds:
        return _speedups(case)
    for _ in range(warmup):
        for step in steps.values():
            step()
    _synchronize(device)
    times = {path: [] for path in PATHS}
    for _ in range(rounds):
        for path, step in steps.items():
            times[path].append(_timed_ms(step, device))
    for path in PATHS:
        case.results[path]['ms'] = statistics.median(times[path])
    _speedups(case)


def _speedups(case: Case) -> None:
    for layout in ('nchw', 'channels_last'):
        case.results[f'triton/{layout}']['speedup'] = \
            case.results[f'torch/{layout}']['ms'] / case.results[f'triton/{layout}']['ms']
    best_torch = min(case.results[p]['ms'] for p in PATHS if p.startswith('torch'))
    for layout in ('nchw', 'channels_last'):
        case.results[f'triton/{layout}']['speedup_vs_best_torch'] = best_torch / case.results[f'triton/{layout}']['ms']


def roofline_for(device: torch.device, peak_bw: Optional[float], peak_flops: Optional[float]):
    if peak_bw and peak_flops:
        return peak_bw, peak_flops
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in ROOFLINES.items() if k in name), None)


def report(cases: List[Case], roofline) -> List[str]:
    lines = [f'{"model":<14}{"op":<10}{"stage":>5}  {"C x H x W":<13}{"path":<22}{"ms":>9}{"TFLOP/s":>9}'
             f'{"GB/s":>8}{"%roof":>7}{"speedup":>9}{"max error":>11}  check']
    for case in cases:
        flops = 2 * case.macs * 3
        bound_s = max(case.traffic / roofline[0], flops / roofline[1]) if roofline else None
        for path, r in case.results.items():
            seconds = r['ms'] / 1e3
            roof = f'{100 * bound_s / seconds:6.1f}%' if bound_s else '      -'
            speedup = f'{r["speedup"]:8.2f}x' if 'speedup' in r else '        -'
            shape = f'{case.channels}x{case.height}x{case.width}'
            lines.append(
                f'{case.model:<14}{case.op:<10}{case.stage:>5}  {shape:<13}'
                f'{path:<22}{r["ms"]:9.3f}{flops / seconds / 1e12:9.2f}{case.traffic / seconds / 1e9:8.0f}{roof}'
                f'{speedup}{r["max_error"]:11.2e}  {"ok" if r["ok"] else "FAIL"}')
    return lines


def selection_rows(cases: List[Case], arch: str) -> List[tuple]:
    rows = []
    for case in cases:
        for layout in ('nchw', 'channels_last'):
            if case.op == 'depthwise':
                key = selection.depthwise_case(arch, case.dtype, layout, (case.kernel,) * 2, (1, 1), (1, 1))
            else:
                key = selection.ska_case(arch, case.dtype, layout, case.kernel)
            rows.append((key, case.height, case.width, case.results[f'triton/{layout}']['speedup']))
    return rows


def table_entries(rows: List[tuple]) -> Dict[tuple, tuple]:
    """Group rows by case; stages of different models with the same map size share a point (geometric mean)."""
    by_size: Dict[tuple, Dict[tuple, list]] = {}
    for key, h, w, speedup in rows:
        by_size.setdefault(key, {}).setdefault((h, w), []).append(speedup)
    return {key: tuple((h, w, round(math.exp(statistics.fmean(map(math.log, s))), 3)) for (h, w), s in sizes.items())
            for key, sizes in by_size.items()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=['unireplknet_t', 'van_b2', 'lsnet_t'])
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--kernel-size', type=int, default=13, help='depthwise kernel (odd)')
    p.add_argument('--dtype', choices=list(DTYPES), default='bfloat16')
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--rounds', type=int, default=50, help='timed steps per path')
    p.add_argument('--peak-bw', type=float, help='HBM bytes/s for the roofline (default: from the GPU name)')
    p.add_argument('--peak-flops', type=float, help='FP32 FMA FLOP/s for the roofline')
    p.add_argument('--json', type=Path, help='write every measurement here')
    p.add_argument('--emit-table', action='store_true',
                   help='print the measurements as entries for lkconv/kernels/selection.py')
    p.add_argument('--smoke', action='store_true',
                   help='CPU with TRITON_INTERPRET=1: batch 1, at most 4 channels (32 for LSNet), 6x6 maps, '
                        'one step per path')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        from lkconv.kernels.launch import interpreting
        if not interpreting():
            print('--smoke runs the kernels on CPU: set TRITON_INTERPRET=1 in the environment', file=sys.stderr)
            return 2
        device, args.batch, args.warmup, args.rounds = torch.device('cpu'), 1, 0, 0
    elif torch.cuda.is_available():
        device = torch.device('cuda')
        torch.backends.cudnn.benchmark = True  # let cuDNN pick its fastest algorithm for the PyTorch paths
    else:
        print('no CUDA device: run with --smoke and TRITON_INTERPRET=1 for a CPU check', file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    cases, seen = [], set()
    for model in args.models:
        for stage, shape in enumerate(stage_shapes(model, args.img_size)):
            if args.smoke:  # shrunk stages often coincide: run each distinct shape once
                shape = (min(shape[0], 4 * SKA_GROUPS if 'lsnet' in model else 4), min(shape[1], 6), min(shape[2], 6))
                if (model, shape) in seen:
                    continue
                seen.add((model, shape))
            cases.append(make_case('depthwise', model, stage, args.batch, shape, args.kernel_size, dtype))
            if 'lsnet' in model:
                cases.append(make_case('ska', model, stage, args.batch, shape, 3, dtype))
    roofline = roofline_for(device, args.peak_bw, args.peak_flops)
    device_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (Triton interpreter)'
    print(f'device: {device_name}; {args.dtype}, batch {args.batch}, {args.kernel_size}x{args.kernel_size} depthwise '
          f'and 3x3 SKA, forward+backward; roofline: '
          + (f'{roofline[0] / 1e12:.2f} TB/s, {roofline[1] / 1e12:.1f} TFLOP/s fp32 FMA' if roofline else 'unknown'))
    for case in cases:
        run_case(case, device, args.warmup, args.rounds)
    print('\n'.join(report(cases, roofline)))
    if args.emit_table or args.json:
        arch = 'sm{}{}'.format(*torch.cuda.get_device_capability(device)) if device.type == 'cuda' else 'cpu'
        rows = selection_rows(cases, arch)
        if args.emit_table:
            print('\n# entries for DEPTHWISE_SPEEDUPS / SKA_SPEEDUPS in lkconv/kernels/selection.py '
                  '(or pass these rows to selection.add_speedups):')
            for key, points in table_entries(rows).items():
                print(f'{key!r}: {points!r},')
        if args.json:
            args.json.write_text(json.dumps(dict(
                device=device_name, arch=arch, args={k: str(v) for k, v in vars(args).items()},
                roofline=roofline, cases=[asdict(c) for c in cases],
                selection_rows=[[list(k), h, w, round(s, 4)] for k, h, w, s in rows]), indent=1))
    failed = [c for c in cases if not all(r['ok'] for r in c.results.values())]
    if failed:
        print(f'FAIL: {len(failed)} case(s) differ from the PyTorch reference beyond tolerance', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
