"""PNG figures of benchmark results and effective receptive fields (matplotlib, no display needed).

Figures are drawn on `matplotlib.figure.Figure` objects directly (no pyplot), so nothing depends on
a GUI backend or on global plotting state. Each `*_figure` function builds a figure (what the tests
inspect); each `plot_*` function saves one as a PNG.

What every figure keeps to: one set of font sizes (`_FONT`); a title that names the device, precision
and batch, wrapped to fit the figure; log axes with plain labels ('300', '20k') on enough ticks for the
range shown; every point inside the axes with a margin, its model name beside it inside the axes; the
measured spread as error bars. Rows carry the median step time and its interquartile range (IQR, ms);
the bars span batch / (median + IQR/2) to batch / (median - IQR/2), the throughput at the step times of
that interval.
"""
import math
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .benchmark import describe_run

__all__ = ['plot_speed', 'plot_accuracy', 'plot_erf', 'save_benchmark_plots', 'plot_kernel_speedups',
           'plot_throughput_bars', 'speed_figure', 'accuracy_figure', 'erf_figure', 'kernel_speedups_figure',
           'throughput_bars_figure', 'SPREAD_NOTE']

_AXIS_LABELS = {
    'infer_gmacs': 'GMACs per image',
    'param_count': 'parameters (M)',
    'infer_samples_per_sec': 'inference throughput (samples/s)',
    'train_samples_per_sec': 'training throughput (samples/s)',
    'top1': 'ImageNet top-1 (%)',
}
_FONT = dict(title=10, label=9, tick=8, note=7)  # points; 'note': point names, legends, in-plot text
SPREAD_NOTE = 'error bars: batch / (median step time \u00b1 IQR/2)'
_MARGIN = 0.06  # of the axis range (log range on log axes), on each side of the outermost point or bar end


def _figure(size: Tuple[float, float] = (9, 5.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, dpi=110, layout='constrained')
    FigureCanvasAgg(fig)  # a renderer to measure text with (titles, point names)
    return fig


def _title(fig, text: str) -> None:
    """The figure's title, each line wrapped until it fits the figure's width."""
    title = fig.suptitle('', fontsize=_FONT['title'])
    renderer = fig.canvas.get_renderer()
    room = 0.97 * fig.bbox.width
    lines = []
    for line in text.split('\n'):
        width = len(line)
        while True:
            candidate = textwrap.fill(line, width)  # at spaces; a word longer than a line is split
            title.set_text(candidate)
            if title.get_window_extent(renderer).width <= room or width <= 20:
                break
            width -= 4
        lines.append(candidate)
    title.set_text('\n'.join(lines))


def _style(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel, fontsize=_FONT['label'])
    ax.set_ylabel(ylabel, fontsize=_FONT['label'])
    ax.tick_params(which='both', labelsize=_FONT['tick'])


def _compact(value: float, _=None) -> str:
    """Plain tick labels: 0.05, 300, 20k, 1.5M (never 5x10^-2)."""
    if value >= 1e6:
        return f'{value / 1e6:g}M'
    if value >= 1e3:
        return f'{value / 1e3:g}k'
    return f'{value:g}'


def _set_limits(ax, which: str, values: Sequence[float], log: bool) -> None:
    """Axis limits holding `values` with a margin; on a log axis, labelled ticks suited to the range."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
    axis = ax.xaxis if which == 'x' else ax.yaxis
    set_lim, set_scale = (ax.set_xlim, ax.set_xscale) if which == 'x' else (ax.set_ylim, ax.set_yscale)
    lo, hi = min(values), max(values)
    if log:
        set_scale('log')
        lo, hi = math.log10(lo), math.log10(hi)
    smallest = 0.3 if log else (0.05 * abs(hi) or 1.0)  # a single value gets a small range around it
    span = max(hi - lo, smallest)
    centre = (lo + hi) / 2
    lo, hi = min(lo, centre - span / 2) - _MARGIN * span, max(hi, centre + span / 2) + _MARGIN * span
    if not log:
        set_lim(lo, hi)
        return
    set_lim(10 ** lo, 10 ** hi)
    decades = hi - lo  # labelled ticks: at least four across the range, spaced about evenly
    if decades >= 5:
        major = LogLocator(base=10, subs=(1.0,))
    elif decades >= 3:
        major = LogLocator(base=10, subs=(1.0, 3.0))
    elif decades >= 1.5:
        major = LogLocator(base=10, subs=(1.0, 2.0, 5.0))
    elif decades >= 0.5:
        major = LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
    else:  # a fraction of a decade: evenly spaced plain values
        major = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], min_n_ticks=4)
    axis.set_major_locator(major)
    axis.set_major_formatter(FuncFormatter(_compact))
    axis.set_minor_locator(LogLocator(base=10, subs='auto'))
    axis.set_minor_formatter(NullFormatter())


def _spread(row: Dict, key: str, meta: Dict) -> Optional[Tuple[float, float]]:
    """(low, high) samples/s of `key` ('<prefix>_samples_per_sec') from the row's step-time median and IQR."""
    if not key.endswith('_samples_per_sec'):
        return None
    prefix = key[:-len('_samples_per_sec')]
    median, iqr = row.get(f'{prefix}_step_time'), row.get(f'{prefix}_step_time_iqr')
    batch = row.get(f'{prefix}_batch_size') or meta.get('settings', {}).get('batch_size')
    if not median or iqr is None or not batch:
        return None
    fast = max(median - iqr / 2, median * 1e-3)  # an IQR wider than the median would give a negative time
    return batch / (median + iqr / 2) * 1e3, batch / fast * 1e3


def _error_extent(value: float, spread: Optional[Tuple[float, float]]) -> Tuple[float, float]:
    """(below, above) `value` for an error bar; the reported value and the interval are rounded
    separately, so a zero spread may put the value a hair outside it: never a negative extent."""
    if spread is None:
        return 0.0, 0.0
    return max(value - spread[0], 0.0), max(spread[1] - value, 0.0)


def _family(row: Dict) -> str:
    return row['model'].split('_')[0] if row.get('source') == 'lkconv' else 'timm reference'


def _scatter(fig, ax, rows: List[Dict], meta: Dict, x: str, y: str, log_y: bool) -> bool:
    """One series per family (timm references in black) with error bars where the rows carry a spread;
    returns whether any error bar was drawn. The points are named (`_label_points`) once the title is set."""
    bounds = {k: [r[k] for r in rows] for k in (x, y)}
    errors = {}
    for key in (x, y):
        spreads = [_spread(r, key, meta) for r in rows]
        if any(spreads):
            errors[key] = [_error_extent(r[key], s) for r, s in zip(rows, spreads)]
            bounds[key] += [v for s in spreads if s for v in s]
    families = sorted({_family(r) for r in rows}, key=lambda f: (f == 'timm reference', f))
    for i, family in enumerate(families):
        index = [j for j, r in enumerate(rows) if _family(r) == family]
        style = dict(color='black', marker='s') if family == 'timm reference' else dict(color=f'C{i}', marker='o')
        err = {f'{k}err': np.array([errors[k][j] for j in index]).T if k in errors else None for k in (x, y)}
        ax.errorbar([rows[j][x] for j in index], [rows[j][y] for j in index], xerr=err[f'{x}err'],
                    yerr=err[f'{y}err'], linestyle='none', markersize=5, capsize=2, elinewidth=0.8,
                    label=family, zorder=3, **style)
    _set_limits(ax, 'x', bounds[x], log=True)
    _set_limits(ax, 'y', bounds[y], log=log_y)
    _style(ax, _AXIS_LABELS.get(x, x), _AXIS_LABELS.get(y, y))
    ax.grid(True, which='major', alpha=0.3)
    ax.grid(True, which='minor', alpha=0.1)
    fig.legend(loc='outside lower center', ncols=len(families), fontsize=_FONT['note'])
    return bool(errors)


def _label_points(fig, ax, rows: List[Dict], x: str, y: str) -> None:
    """Name each point beside it, inside the axes, clear of the names already placed: to the right if it
    fits, else to the left, else a line or more up or down with a leader line (measured on the laid-out
    figure, in display pixels)."""
    fig.draw_without_rendering()  # settle the layout: the positions below are final
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    per_point = fig.dpi / 72.0  # display pixels per typographic point (annotation offsets are in points)
    marker = 4 * per_point  # half a marker's width
    placed = [(px - marker, px + marker, py - marker, py + marker)  # x0, x1, y0, y1: markers, then names
              for px, py in ax.transData.transform([(r[x], r[y]) for r in rows])]
    for r in sorted(rows, key=lambda r: r[y]):
        label = r['model'] + (' (train form)' if r.get('form') == 'train' else '')
        probe = ax.text(0, 0, label, fontsize=_FONT['note'])
        extent = probe.get_window_extent(renderer)
        w, h = extent.width, extent.height
        probe.remove()
        px, py = ax.transData.transform((r[x], r[y]))
        gap = 4 * per_point
        candidates = []  # (dx, dy) of the name's lower left corner from the point
        for lines in (0, 1, -1, 2, -2, 3, -3):
            dy = lines * (h + per_point) + (per_point if lines >= 0 else -h)
            candidates += [(gap, dy), (-gap - w, dy)]
        boxes = [(px + dx, px + dx + w, py + dy, py + dy + h) for dx, dy in candidates]
        inside = [frame.x0 <= b[0] and b[1] <= frame.x1 and frame.y0 <= b[2] and b[3] <= frame.y1 for b in boxes]
        free = [not any(b[0] < q[1] and q[0] < b[1] and b[2] < q[3] and q[2] < b[3] for q in placed) for b in boxes]
        choice = next((i for i in range(len(boxes)) if inside[i] and free[i]),
                      next((i for i in range(len(boxes)) if inside[i]), 0))
        placed.append(boxes[choice])
        dx, dy = candidates[choice]
        leader = dict(arrowstyle='-', linewidth=0.4, color='grey', shrinkA=0, shrinkB=2) if choice >= 2 else None
        text = ax.annotate(label, (r[x], r[y]), xytext=(dx / per_point, dy / per_point), textcoords='offset points',
                           fontsize=_FONT['note'], ha='left', va='bottom', arrowprops=leader)
        text.set_in_layout(False)  # inside the axes: must not move the layout settled above


def _valid(rows: Sequence[Dict], *keys: str) -> List[Dict]:
    return [r for r in rows if all(isinstance(r.get(k), (int, float)) and r[k] > 0 for k in keys)]


def speed_figure(rows: Sequence[Dict], meta: Dict, x: str = 'infer_gmacs', y: str = 'infer_samples_per_sec'):
    """Throughput against cost (GMACs or parameters), log-log; None if no row has both values."""
    points = _valid(rows, x, y)
    if not points:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    bars = _scatter(fig, ax, points, meta, x, y, log_y=True)
    _title(fig, f"{_AXIS_LABELS.get(y, y)} vs {_AXIS_LABELS.get(x, x)}\n{describe_run(meta)}"
                + (f'; {SPREAD_NOTE}' if bars else ''))
    _label_points(fig, ax, points, x, y)
    return fig


def accuracy_figure(rows: Sequence[Dict], meta: Dict, x: str = 'infer_samples_per_sec'):
    """Published top-1 against throughput, for the rows whose cfg (or a given table) carries a top-1."""
    points = _valid(rows, x, 'top1')
    if not points:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    bars = _scatter(fig, ax, points, meta, x, 'top1', log_y=False)
    _title(fig, f"published top-1 vs {_AXIS_LABELS.get(x, x)}\n{describe_run(meta)}"
                + (f'; {SPREAD_NOTE}' if bars else ''))
    _label_points(fig, ax, points, x, 'top1')
    return fig


def _save(fig, path) -> Optional[Path]:
    if fig is None:
        return None
    fig.savefig(path)
    return Path(path)


def plot_speed(rows: Sequence[Dict], meta: Dict, path, x: str = 'infer_gmacs',
               y: str = 'infer_samples_per_sec') -> Optional[Path]:
    return _save(speed_figure(rows, meta, x, y), path)


def plot_accuracy(rows: Sequence[Dict], meta: Dict, path, x: str = 'infer_samples_per_sec') -> Optional[Path]:
    return _save(accuracy_figure(rows, meta, x), path)


def save_benchmark_plots(rows: Sequence[Dict], meta: Dict, out_dir) -> List[Path]:
    """Every benchmark figure the rows have data for, as PNGs in `out_dir`."""
    out_dir = Path(out_dir)
    figures = [
        plot_speed(rows, meta, out_dir / 'infer_throughput_vs_gmacs.png', 'infer_gmacs'),
        plot_speed(rows, meta, out_dir / 'infer_throughput_vs_params.png', 'param_count'),
        plot_speed(rows, meta, out_dir / 'train_throughput_vs_gmacs.png', 'infer_gmacs', 'train_samples_per_sec'),
        plot_accuracy(rows, meta, out_dir / 'top1_vs_infer_throughput.png'),
    ]
    return [f for f in figures if f is not None]


def erf_figure(erf_map: np.ndarray, title: str, ratios: Optional[Dict[float, float]] = None, floor: float = 1e-4):
    """Heat map of an effective receptive field on a log scale relative to its maximum (down to `floor`)."""
    from matplotlib.colors import LogNorm
    relative = np.clip(erf_map / max(float(erf_map.max()), 1e-30), floor, 1.0)
    fig = _figure((5.5, 5))
    ax = fig.add_subplot()
    image = ax.imshow(relative, cmap='RdYlGn', norm=LogNorm(vmin=floor, vmax=1.0), interpolation='nearest')
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label('contribution / max (log scale)', fontsize=_FONT['label'])
    colorbar.ax.tick_params(labelsize=_FONT['tick'])
    if ratios:
        text = '\n'.join(f'{t:.0%} of contribution: {r:.1%} of area' for t, r in ratios.items())
        ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=_FONT['note'], va='bottom',
                bbox=dict(facecolor='white', alpha=0.8, linewidth=0))
    ax.set_xticks([])
    ax.set_yticks([])
    _title(fig, title)
    return fig


def plot_erf(erf_map: np.ndarray, path, title: str, ratios: Optional[Dict[float, float]] = None,
             floor: float = 1e-4) -> Path:
    return _save(erf_figure(erf_map, title, ratios, floor), path)


def kernel_speedups_figure(results: Sequence[Dict], title: str):
    """One horizontal bar per kernel case: best PyTorch time / best Triton time (log scale, 1 = parity).
    The kernel benchmark records medians only, so there are no error bars."""
    points = [r for r in results if r.get('speedup_vs_best_torch')]
    if not points:
        return None
    fig = _figure((9, 1.8 + 0.22 * len(points)))
    ax = fig.add_subplot()
    values = [r['speedup_vs_best_torch'] for r in points]
    colors = ['C2' if v >= 1 else 'C3' for v in values]
    # each bar runs from parity (1) to its speed-up: to the right faster, to the left slower
    ax.barh(range(len(points)), [v - 1.0 for v in values], left=1.0, color=colors)
    ax.set_yticks(range(len(points)), [f"{r['case']} ({', '.join(r['models'])})" for r in points])
    ax.invert_yaxis()
    ax.axvline(1.0, color='black', linewidth=0.8)
    _set_limits(ax, 'x', values + [1.0], log=True)
    _style(ax, 'speed-up of Triton over the best PyTorch path (forward + backward; median of rounds)', '')
    ax.grid(True, axis='x', which='major', alpha=0.3)
    _title(fig, title)
    return fig


def plot_kernel_speedups(results: Sequence[Dict], path, title: str) -> Optional[Path]:
    return _save(kernel_speedups_figure(results, title), path)


def throughput_bars_figure(rows: Sequence[Dict], title: str):
    """Training and inference img/s per model, one bar per (compile mode, kernels) configuration, with the
    step-time IQR as error bars."""
    from matplotlib.ticker import FuncFormatter
    models = list(dict.fromkeys(r['model'] for r in rows))
    configs = list(dict.fromkeys((r['compile'], r['kernels']) for r in rows))
    if not models:
        return None
    fig = _figure((9, 6.5))
    width = 0.8 / len(configs)
    bars = False
    for row_index, key in enumerate(('train_samples_per_sec', 'infer_samples_per_sec')):
        ax = fig.add_subplot(2, 1, row_index + 1)
        for i, (mode, kernels) in enumerate(configs):
            found = {r['model']: r for r in rows if (r['compile'], r['kernels']) == (mode, kernels) and r.get(key)}
            xs = [m for m, name in enumerate(models) if name in found]
            values = [found[models[m]][key] for m in xs]
            spreads = [_spread(found[models[m]], key, {}) for m in xs]
            err = None
            if any(spreads):
                bars = True
                err = np.array([_error_extent(v, s) for v, s in zip(values, spreads)]).T
            label = f"{mode.split(' ')[0]}, kernels {'on' if kernels == 'triton' else 'off'}"
            ax.bar([x + i * width for x in xs], values, width, label=label, color=f'C{i}', yerr=err, capsize=2,
                   error_kw=dict(elinewidth=0.8))
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(models))], models)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.05)
        ax.yaxis.set_major_formatter(FuncFormatter(_compact))
        _style(ax, '', _AXIS_LABELS[key])
        ax.grid(True, axis='y', alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='outside lower center', ncols=len(configs), fontsize=_FONT['note'])
    _title(fig, title + (f'\n{SPREAD_NOTE}' if bars else ''))
    return fig


def plot_throughput_bars(rows: Sequence[Dict], path, title: str) -> Optional[Path]:
    return _save(throughput_bars_figure(rows, title), path)
