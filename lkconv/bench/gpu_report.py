"""The files a GPU check leaves: gpu_check.json, gpu_check.md, kernels.json and two PNG figures.

Every table names what its figures depend on (device, dtype, batch, layout, compile mode); the markdown
is written to be pasted into docs/benchmarks.md as it is. The summary checks the targets the kernels are
meant to reach (13x13 depthwise forward+backward at least 1.5x the best PyTorch path in bf16 at
UniRepLKNet-T's stage shapes; UniRepLKNet-T training at least 1.3x with the kernels) and reports them;
it asserts nothing.
"""
import json
import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional

from ..utils import atomic_write_text
from . import kernels

__all__ = ['write_report', 'summarize', 'TARGETS']

TARGETS = dict(depthwise_13x13_speedup=1.5, unireplknet_t_train_speedup=1.3)


def _results(reports: Dict[str, Dict], name: str) -> List[Dict]:
    return reports.get(name, {}).get('results', [])


def _geomean(values: List[float]) -> Optional[float]:
    values = [v for v in values if v and v > 0]
    return round(math.exp(statistics.fmean(map(math.log, values))), 3) if values else None


def _throughput(rows: List[Dict], model: str, compiled: bool, kernels_on: bool, key: str) -> Optional[float]:
    for r in rows:
        if r['model'] == model and r['compile'].startswith('torch.compile') == compiled and \
                (r['kernels'] == 'triton') == kernels_on:
            return r.get(key)
    return None


def summarize(reports: Dict[str, Dict], smoke: bool = False) -> Dict:
    """The headline figures and how they compare with the targets (None where not measured, and in a smoke
    run, whose timings are of interpreted kernels on a CPU)."""
    speed = [r for r in _results(reports, 'kernel_speed')
             if r['geometry'].startswith('13x13') and 'unireplknet_t' in r['models'] and 'speedup_vs_best_torch' in r]
    e2e = _results(reports, 'end_to_end')
    summary = dict(depthwise_13x13_speedup=_geomean([r['speedup_vs_best_torch'] for r in speed]),
                   depthwise_13x13_cases=[dict(case=r['case'], speedup=r['speedup_vs_best_torch']) for r in speed])
    for compiled, suffix in ((False, ''), (True, '_compiled')):
        on = _throughput(e2e, 'unireplknet_t', compiled, True, 'train_samples_per_sec')
        off = _throughput(e2e, 'unireplknet_t', compiled, False, 'train_samples_per_sec')
        summary[f'unireplknet_t_train_speedup{suffix}'] = round(on / off, 3) if on and off else None
    summary['targets'] = {k: dict(target=v, measured=summary.get(k),
                                  met=None if smoke or summary.get(k) is None else summary[k] >= v)
                          for k, v in TARGETS.items()}
    return summary


def kernel_table(reports: Dict[str, Dict], environment: Dict) -> Dict:
    """kernels.json: the measured speed-up rows in the form `selection.add_speedups` reads."""
    results = _results(reports, 'kernel_speed')
    cases = [kernels.KernelCase.from_dict(r['case_fields']) for r in results]
    arch = environment.get('capability', 'cpu')
    rows = kernels.selection_rows(results, cases, arch)
    return dict(device=environment.get('device'), arch=arch, dtype='bfloat16',
                batch=results[0]['batch'] if results else None,
                measured='forward+backward, PyTorch (cuDNN auto) time / Triton time on the same input layout',
                selection_rows=rows,
                table=[[list(k), [list(p) for p in v]] for k, v in kernels.table_entries(rows).items()])


# -------------------------------------------------------------------------------------------- markdown

def _row(cells) -> str:
    return '| ' + ' | '.join('-' if c is None else str(c) for c in cells) + ' |'


def _table(header: List[str], rows: List[List]) -> List[str]:
    return [_row(header), _row(['---'] * len(header))] + [_row(r) for r in rows]


def _fmt(value, spec: str = '.1f') -> Optional[str]:
    return None if value is None else format(value, spec)


def markdown(meta: Dict, reports: Dict[str, Dict], summary: Dict) -> str:
    env = (_results(reports, 'environment') or [{}])[0]
    device = env.get('device', meta['settings']['device'])
    lines = [f'# GPU check: {device}', '',
             f'`{meta["command"]}`, {meta["started"]}, {meta["seconds"]:.0f} s of a {meta["budget_s"]:.0f} s budget.', '']
    lines += ['## Sections', ''] + _table(
        ['section', 'status', 'done', 'failed', 'skipped', 'seconds (limit)'],
        [[r['title'], r['status'], r['counts']['done'], r['counts']['failed'], r['counts']['skipped'],
          f'{r["seconds"]:.0f} ({r["time_limit_s"]:.0f})'] for r in reports.values()])
    if env:
        lines += ['', '## Environment', ''] + _table(['', ''], [[k, v] for k, v in env.items() if k not in ('id', 'seconds')])
    lines += _targets(summary, meta['settings']['smoke'])
    lines += _correctness(reports.get('kernel_correctness'))
    lines += _speed(reports.get('kernel_speed'), device)
    lines += _end_to_end(reports.get('end_to_end'), device)
    lines += _training(reports.get('training'), device)
    problems = [(r['title'], f['id'], f['error']) for r in reports.values() for f in r['failures']]
    skipped = [(r['title'], s['id'], s['reason']) for r in reports.values() for s in r['skipped']]
    if problems:
        lines += ['', '## Failures', ''] + _table(['section', 'item', 'error'], [list(p) for p in problems])
    if skipped:
        lines += ['', '## Skipped', ''] + _table(['section', 'item', 'reason'], [list(s) for s in skipped])
    return '\n'.join(lines) + '\n'


def _targets(summary: Dict, smoke: bool) -> List[str]:
    names = dict(depthwise_13x13_speedup='13x13 depthwise fwd+bwd, Triton vs best PyTorch path (bf16, batch 128, '
                                         'unireplknet_t stage shapes, geometric mean)',
                 unireplknet_t_train_speedup='unireplknet_t training throughput, kernels on / off (AMP bf16, '
                                             'channels_last, batch 128, eager)')
    rows = [[names[k], f'>= {t["target"]}', _fmt(t['measured'], '.2f'),
             None if t['met'] is None else ('met' if t['met'] else 'not met')] for k, t in summary['targets'].items()]
    compiled = summary.get('unireplknet_t_train_speedup_compiled')
    rows.append(['the same under torch.compile', '', _fmt(compiled, '.2f'), ''])
    note = ['Smoke run on a CPU: its timings are of interpreted kernels and say nothing about GPU speed; '
            'the targets are not evaluated.', ''] if smoke else []
    return ['', '## Targets', ''] + note + _table(['figure', 'target', 'measured', ''], rows)


def _correctness(report: Optional[Dict]) -> List[str]:
    if not report or not (report['results'] or report['failures']):
        return []
    groups: Dict[tuple, List] = {}
    for r in report['results'] + [f['record'] for f in report['failures'] if f.get('record')]:
        groups.setdefault((r['op'], r['dtype'], r['layout']), []).append(r)
    rows = [[op, dtype, layout, f'{sum(r["ok"] for r in rs)} / {len(rs)}', f'{max(r["max_error"] for r in rs):.2e}',
             f'{rs[0]["tolerance"]:.0e}'] for (op, dtype, layout), rs in sorted(groups.items())]
    return ['', '## Kernel correctness', '',
            'Triton forward, input gradient and weight/bias gradient against float64 PyTorch on the same rounded '
            'inputs, batch 2, at every convolution the models run (error = ||out - ref|| / ||ref||, worst of the '
            'outputs).', ''] + _table(['op', 'dtype', 'layout', 'pass', 'worst error', 'tolerance'], rows)


def _speed(report: Optional[Dict], device: str) -> List[str]:
    if not report or not report['results']:
        return []
    results = report['results']
    r0 = results[0]
    rows = []
    for r in results:
        ms = r['ms']
        rows.append([r['case'], ', '.join(r['models']), r.get('best_torch'), _fmt(ms.get(r.get('best_torch')), '.3f'),
                     _fmt(ms.get('triton/nchw'), '.3f'), _fmt(ms.get('triton/channels_last'), '.3f'),
                     _fmt(r.get('speedup_nchw'), '.2f'), _fmt(r.get('speedup_channels_last'), '.2f'),
                     _fmt(r.get('speedup_vs_best_torch'), '.2f'), _fmt(r.get('triton_tflops'), '.2f'),
                     _fmt(r.get('triton_gbps'), '.0f'), _fmt(r.get('triton_roofline_pct'), '.1f')])
    return ['', '## Kernel speed', '',
            f'{device}, {r0["dtype"]}, batch {r0["batch"]}, forward + input grad + weight grad, eager; median of '
            'interleaved rounds (ms). speed-up = PyTorch on the same layout / Triton (what `auto` decides); '
            'x best = best PyTorch path of any layout / best Triton path. TFLOP/s, GB/s and % of roofline of the '
            'faster Triton path (roofline: specs/performance.md section 8, fp32-FMA and HBM).', ''] + _table(
        ['case', 'models', 'best PyTorch path', 'ms', 'Triton NCHW ms', 'Triton NHWC ms', 'speed-up NCHW',
         'speed-up NHWC', 'x best', 'TFLOP/s', 'GB/s', '% roof'], rows)


def _end_to_end(report: Optional[Dict], device: str) -> List[str]:
    if not report or not report['results']:
        return []
    results = report['results']
    rows = [[r['model'], r['compile'], 'on' if r['kernels'] == 'triton' else 'off',
             _fmt(r.get('train_samples_per_sec')), _fmt(r.get('infer_samples_per_sec')),
             _fmt(r.get('train_peak_mem_mb'), '.0f'), _fmt(r.get('infer_peak_mem_mb'), '.0f')] for r in results]
    return ['', '## End to end', '',
            f'{results[0]["run"]}; training = forward + backward + SGD step of the training form, inference = '
            'the deploy form; img/s = batch / median step time; peak memory in MB.', ''] + _table(
        ['model', 'mode', 'kernels', 'train img/s', 'infer img/s', 'train MB', 'infer MB'], rows)


def _training(report: Optional[Dict], device: str) -> List[str]:
    if not report:
        return []
    rows = [[r['id'], 'passed', r.get('steps'), r.get('train_loss', [None])[-1], r.get('eval_top1'),
             ', '.join(f'{k} {v}' for k, v in r.items() if k in ('identical_weights', 'identical_summary',
                                                                  'loss_scaler_saved', 'backend_nccl', 'sync_bn'))]
            for r in report['results']]
    rows += [[f['id'], 'FAILED', None, None, None, f['error']] for f in report['failures']]
    rows += [[s['id'], 'skipped', None, None, None, s['reason']] for s in report['skipped']]
    return ['', '## Training path', '', f'`lkconv train` on {device}: inceptionnext_atto, synthetic 4-class image '
            'folder, batch 8, 4 epochs, deterministic algorithms.', ''] + _table(
        ['run', 'status', 'steps', 'final train loss', 'eval top-1', 'checked'], rows)


# ------------------------------------------------------------------------------------------------ files

def write_report(out: Path, meta: Dict, reports: Dict[str, Dict], final: bool) -> str:
    """Write every file of the check into `out` (atomically, so a reader never sees half a file); returns
    the markdown."""
    environment = (_results(reports, 'environment') or [{}])[0]
    summary = summarize(reports, meta['settings']['smoke'])
    text = markdown(dict(meta, complete=final), reports, summary)
    atomic_write_text(out / 'gpu_check.json', json.dumps(dict(meta=dict(meta, complete=final), summary=summary,
                                                              sections=reports), indent=1, default=str) + '\n')
    atomic_write_text(out / 'gpu_check.md', text)
    atomic_write_text(out / 'kernels.json', json.dumps(kernel_table(reports, environment), indent=1) + '\n')
    if final:
        _plots(out, reports, environment.get('device', meta['settings']['device']))
    return text


def _plots(out: Path, reports: Dict[str, Dict], device: str) -> None:
    try:
        from .plots import plot_kernel_speedups, plot_throughput_bars
    except ImportError:  # matplotlib missing: the numbers are written either way
        return
    speed = _results(reports, 'kernel_speed')
    if speed:
        plot_kernel_speedups(speed, out / 'kernel_speed.png',
                             f'Triton vs best PyTorch path, fwd+bwd, {speed[0]["dtype"]}, batch {speed[0]["batch"]}, '
                             f'{device}')
    e2e = _results(reports, 'end_to_end')
    if e2e:
        plot_throughput_bars(e2e, out / 'throughput.png', e2e[0]['run'])
