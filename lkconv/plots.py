"""PNG figures of benchmark results and effective receptive fields (matplotlib, no display needed).

Figures are drawn on `matplotlib.figure.Figure` objects directly (no pyplot), so nothing depends on
a GUI backend or on global plotting state.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .benchmark import describe_run

__all__ = ['plot_speed', 'plot_accuracy', 'plot_erf', 'save_benchmark_plots', 'plot_kernel_speedups',
           'plot_throughput_bars']

_AXIS_LABELS = {
    'infer_gmacs': 'GMACs per image',
    'param_count': 'parameters (M)',
    'infer_samples_per_sec': 'inference throughput (samples/s)',
    'train_samples_per_sec': 'training throughput (samples/s)',
    'top1': 'ImageNet top-1 (%)',
}


def _figure(size=(8, 5.5)):
    from matplotlib.figure import Figure
    return Figure(figsize=size, dpi=110, layout='constrained')


def _family(row: Dict) -> str:
    return row['model'].split('_')[0] if row.get('source') == 'lkconv' else 'timm reference'


def _scatter(ax, rows: List[Dict], x: str, y: str, log_y: bool) -> None:
    """One series per family (timm references in black), each point labelled with its model name."""
    _log_axes(ax, log_y)  # before placing labels: their spacing is computed on the final scales
    families = sorted({_family(r) for r in rows}, key=lambda f: (f == 'timm reference', f))
    for i, family in enumerate(families):
        points = [r for r in rows if _family(r) == family]
        style = dict(color='black', marker='s') if family == 'timm reference' else dict(color=f'C{i}', marker='o')
        ax.scatter([r[x] for r in points], [r[y] for r in points], label=family, s=30, zorder=3, **style)
    ax.autoscale_view()
    _label_points(ax, rows, x, y)
    ax.set_xlabel(_AXIS_LABELS.get(x, x))
    ax.set_ylabel(_AXIS_LABELS.get(y, y))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _label_points(ax, rows: List[Dict], x: str, y: str, line: float = 9.0) -> None:
    """Name each point; a label that would overlap one already placed moves up a line (in points)."""
    placed = []  # (x0, x1, y) of labels, in points
    to_points = 72.0 / ax.figure.dpi
    for r in sorted(rows, key=lambda r: r[y]):
        label = r['model'] + (' (train form)' if r.get('form') == 'train' else '')
        px, py = (v * to_points for v in ax.transData.transform((r[x], r[y])))
        width, dy = 4.2 * len(label), 3.0
        while any(x0 < px + 4 + width and px + 4 < x1 and abs(py + dy - ly) < line for x0, x1, ly in placed):
            dy += line
        placed.append((px + 4, px + 4 + width, py + dy))
        ax.annotate(label, (r[x], r[y]), textcoords='offset points', xytext=(4, dy), fontsize=7,
                    arrowprops=dict(arrowstyle='-', linewidth=0.4, color='grey') if dy > 3.0 else None)


def _log_axes(ax, y_too: bool = True) -> None:
    """Log scale with plain tick labels (0.5, 300 rather than 5x10^-1, 3x10^2)."""
    from matplotlib.ticker import FuncFormatter
    plain = FuncFormatter(lambda v, _: f'{v:g}')
    axes = [ax.xaxis, ax.yaxis] if y_too else [ax.xaxis]
    ax.set_xscale('log')
    if y_too:
        ax.set_yscale('log')
    for axis in axes:
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.tick_params(which='minor', labelsize=7)


def _valid(rows: Sequence[Dict], *keys: str) -> List[Dict]:
    return [r for r in rows if all(isinstance(r.get(k), (int, float)) and r[k] > 0 for k in keys)]


def plot_speed(rows: Sequence[Dict], meta: Dict, path, x: str = 'infer_gmacs',
               y: str = 'infer_samples_per_sec') -> Optional[Path]:
    """Throughput against cost (GMACs or parameters), log-log; None if no row has both values."""
    points = _valid(rows, x, y)
    if not points:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    _scatter(ax, points, x, y, log_y=True)
    ax.set_title(f"{_AXIS_LABELS.get(y, y)} vs {_AXIS_LABELS.get(x, x)}\n{describe_run(meta)}", fontsize=10)
    fig.savefig(path)
    return Path(path)


def plot_accuracy(rows: Sequence[Dict], meta: Dict, path, x: str = 'infer_samples_per_sec') -> Optional[Path]:
    """Published top-1 against throughput, for the rows whose cfg (or a given table) carries a top-1."""
    points = _valid(rows, x, 'top1')
    if not points:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    _scatter(ax, points, x, 'top1', log_y=False)
    ax.set_title(f"published top-1 vs {_AXIS_LABELS.get(x, x)}\n{describe_run(meta)}", fontsize=10)
    fig.savefig(path)
    return Path(path)


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


def plot_erf(erf_map: np.ndarray, path, title: str, ratios: Optional[Dict[float, float]] = None,
             floor: float = 1e-4) -> Path:
    """Heat map of an effective receptive field on a log scale relative to its maximum (down to `floor`)."""
    from matplotlib.colors import LogNorm
    relative = np.clip(erf_map / max(float(erf_map.max()), 1e-30), floor, 1.0)
    fig = _figure((5.5, 5))
    ax = fig.add_subplot()
    image = ax.imshow(relative, cmap='RdYlGn', norm=LogNorm(vmin=floor, vmax=1.0), interpolation='nearest')
    fig.colorbar(image, ax=ax, shrink=0.8, label='contribution / max (log scale)')
    if ratios:
        text = '\n'.join(f'{t:.0%} of contribution: {r:.1%} of area' for t, r in ratios.items())
        ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=7, va='bottom',
                bbox=dict(facecolor='white', alpha=0.8, linewidth=0))
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.savefig(path)
    return Path(path)


def plot_kernel_speedups(results: Sequence[Dict], path, title: str) -> Optional[Path]:
    """One horizontal bar per kernel case: best PyTorch time / best Triton time (log scale, 1 = parity)."""
    points = [r for r in results if r.get('speedup_vs_best_torch')]
    if not points:
        return None
    fig = _figure((8, 1.5 + 0.17 * len(points)))
    ax = fig.add_subplot()
    values = [r['speedup_vs_best_torch'] for r in points]
    colors = ['C2' if v >= 1 else 'C3' for v in values]
    ax.barh(range(len(points)), values, color=colors)
    ax.set_yticks(range(len(points)), [f"{r['case']} ({', '.join(r['models'])})" for r in points], fontsize=6)
    ax.invert_yaxis()
    ax.axvline(1.0, color='black', linewidth=0.8)
    ax.set_xscale('log')
    ax.set_xlabel('speed-up of Triton over the best PyTorch path (forward + backward)')
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis='x', alpha=0.3)
    fig.savefig(path)
    return Path(path)


def plot_throughput_bars(rows: Sequence[Dict], path, title: str) -> Optional[Path]:
    """Training and inference img/s per model, one bar per (compile mode, kernels) configuration."""
    models = list(dict.fromkeys(r['model'] for r in rows))
    configs = list(dict.fromkeys((r['compile'], r['kernels']) for r in rows))
    if not models:
        return None
    fig = _figure((9, 6))
    width = 0.8 / len(configs)
    for row_index, key in enumerate(('train_samples_per_sec', 'infer_samples_per_sec')):
        ax = fig.add_subplot(2, 1, row_index + 1)
        for i, (mode, kernels) in enumerate(configs):
            values = [next((r.get(key) or 0 for r in rows if r['model'] == m and (r['compile'], r['kernels']) ==
                            (mode, kernels)), 0) for m in models]
            label = f"{mode.split(' ')[0]}, kernels {'on' if kernels == 'triton' else 'off'}"
            ax.bar([x + i * width for x in range(len(models))], values, width, label=label)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(models))], models, fontsize=7)
        ax.set_ylabel(_AXIS_LABELS[key], fontsize=8)
        ax.grid(True, axis='y', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    return Path(path)
