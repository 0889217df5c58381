"""Figures a person reads: checked on the drawn matplotlib figures, built from synthetic benchmark rows.

What is checked: every point and error-bar end inside the axes with a margin; enough labelled ticks on
each log axis, their labels apart from each other; every text (titles, point names, legends) inside the
figure, point names inside the axes and apart; error bars at batch / (median +- IQR/2); the run's device,
precision and batch in the title. The PNGs are written too (`--basetemp DIR` keeps them to look at).
"""
import itertools

import numpy as np
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.text import Text

from lkconv.bench.plots import (
    SPREAD_NOTE, accuracy_figure, erf_figure, kernel_speedups_figure, plot_erf, plot_kernel_speedups,
    plot_speed, plot_throughput_bars, save_benchmark_plots, speed_figure, throughput_bars_figure,
)

META = dict(settings=dict(device='cuda', precision='amp_bf16', batch_size=256, channels_last=True, compile=False),
            device_name='NVIDIA H200')
# name, source, GMACs, parameters (M), top-1: four orders of magnitude of cost, the names of both sources
MODELS = [
    ('mobilenetv3_small_050', 'timm', 0.024, 1.6, 57.9), ('lsnet_t', 'lkconv', 0.3, 11.4, 74.9),
    ('unireplknet_a', 'lkconv', 0.6, 4.4, 77.0), ('inceptionnext_atto', 'lkconv', 0.62, 4.2, 75.3),
    ('van_b0', 'lkconv', 0.88, 4.1, 75.4), ('resnet50', 'timm', 4.1, 25.6, 80.4),
    ('convnext_tiny', 'timm', 4.5, 28.6, 82.1), ('unireplknet_t', 'lkconv', 4.9, 31.0, 83.2),
    ('inceptionnext_base', 'lkconv', 14.9, 87.0, 84.0), ('van_b6', 'lkconv', 38.0, 200.0, 86.9),
    ('unireplknet_xl', 'lkconv', 50.0, 386.0, 87.4),
]
MIN_LABELLED_TICKS = 4


def bench_rows(models=MODELS, batch=256):
    rows = []
    for i, (name, source, gmacs, params, top1) in enumerate(models):
        infer_ms = 0.8 + 9 * gmacs  # step time in ms: throughput spans 500 to 300k samples/s
        rows.append(dict(
            model=name, source=source, form='deploy', param_count=params, infer_gmacs=gmacs, top1=top1,
            infer_batch_size=batch, infer_step_time=infer_ms, infer_step_time_iqr=infer_ms * 0.05 * (1 + i % 3),
            infer_samples_per_sec=batch / infer_ms * 1e3, train_batch_size=batch, train_step_time=3 * infer_ms,
            train_step_time_iqr=0.3 * infer_ms, train_samples_per_sec=batch / (3 * infer_ms) * 1e3))
    return rows


def drawn(fig):
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def inside(inner, outer, slack=0.5):
    return (inner.x0 >= outer.x0 - slack and inner.x1 <= outer.x1 + slack and inner.y0 >= outer.y0 - slack
            and inner.y1 <= outer.y1 + slack)


def overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def text_box(text, renderer):
    """The text's own box (an annotation's window extent includes its leader line)."""
    return Text.get_window_extent(text, renderer)


def tick_labels(ax):
    """(x tick labels, y tick labels) drawn: labelled ticks inside the view limits."""
    drawn_labels = []
    for axis, coordinate in ((ax.xaxis, 0), (ax.yaxis, 1)):
        lo, hi = sorted(axis.get_view_interval())
        drawn_labels.append([t for t in axis.get_ticklabels(which='both')
                             if t.get_text() and lo <= t.get_position()[coordinate] <= hi])
    return drawn_labels


def assert_texts_inside_figure(fig):
    renderer = drawn(fig)
    texts = list(fig.texts) + [t for legend in fig.legends for t in legend.get_texts()]
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts, *sum(tick_labels(ax), [])]
    for text in texts:
        if text.get_visible() and text.get_text():
            assert inside(text_box(text, renderer), fig.bbox), f'{text.get_text()!r} is cut off'


def assert_titles_name_the_run(fig, *parts):
    title = fig.get_suptitle().replace('\n', ' ')
    for part in parts:
        assert part in title, (part, title)


def axes_fraction(ax, x, y):
    return ax.transAxes.inverted().transform(ax.transData.transform(np.column_stack([x, y])))


def assert_inside_axes_with_margin(ax, x, y, margin=0.02):
    fractions = axes_fraction(ax, x, y)
    assert fractions.min() >= margin and fractions.max() <= 1 - margin, fractions


def errorbar_ends(ax):
    """x and y of every data point and error-bar end drawn by `ax.errorbar`."""
    xs, ys = [], []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            line, _, bar_lines = container.lines
            xs += list(line.get_xdata())
            ys += list(line.get_ydata())
            for collection in bar_lines:
                for segment in collection.get_segments():
                    xs += list(segment[:, 0])
                    ys += list(segment[:, 1])
    return np.array(xs), np.array(ys)


def labelled_major_ticks(ax, which):
    axis = ax.xaxis if which == 'x' else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if which == 'x' else ax.get_ylim())
    locs = [v for v in axis.get_majorticklocs() if lo <= v <= hi]
    labels = axis.get_major_formatter().format_ticks(locs)
    minor = axis.get_minor_formatter().format_ticks([v for v in axis.get_minorticklocs() if lo <= v <= hi])
    assert not any(minor), f'minor ticks labelled too: {minor}'  # one font size, no crowding
    return [label for label in labels if label]


def assert_tick_labels_apart(fig):
    renderer = drawn(fig)
    for ax in fig.axes:
        for labels in tick_labels(ax):
            boxes = [t.get_window_extent(renderer) for t in labels]
            for a, b in itertools.combinations(boxes, 2):
                assert not overlap(a, b)


def assert_point_names(fig, ax, names):
    """Every model named once, inside the axes, no two names on top of each other."""
    renderer = drawn(fig)
    texts = {t.get_text(): text_box(t, renderer) for t in ax.texts}
    assert sorted(texts) == sorted(names)
    frame = ax.get_window_extent(renderer)
    for name, box in texts.items():
        assert inside(box, frame), f'name {name!r} crosses the axes frame'
    for (a, box_a), (b, box_b) in itertools.combinations(texts.items(), 2):
        assert not overlap(box_a, box_b), (a, b)


def assert_one_font_size_per_role(fig):
    sizes = {t.get_fontsize() for ax in fig.axes for labels in tick_labels(ax) for t in labels}
    assert len(sizes) == 1, sizes
    labels = {ax.xaxis.label.get_fontsize() for ax in fig.axes} | {ax.yaxis.label.get_fontsize() for ax in fig.axes}
    assert len(labels) == 1, labels


@pytest.mark.parametrize('x, y', [('infer_gmacs', 'infer_samples_per_sec'), ('param_count', 'infer_samples_per_sec'),
                                  ('infer_gmacs', 'train_samples_per_sec')])
def test_speed_figure_is_readable(x, y):
    rows = bench_rows()
    fig = speed_figure(rows, META, x, y)
    ax, = fig.axes
    drawn(fig)
    assert ax.get_xscale() == ax.get_yscale() == 'log'
    for which in 'xy':
        assert len(labelled_major_ticks(ax, which)) >= MIN_LABELLED_TICKS
    xs, ys = errorbar_ends(ax)
    assert len(xs) > len(rows)  # the points and their bar ends
    assert_inside_axes_with_margin(ax, xs, ys)
    assert_point_names(fig, ax, [r['model'] for r in rows])
    assert_texts_inside_figure(fig)
    assert_tick_labels_apart(fig)
    assert_one_font_size_per_role(fig)
    assert_titles_name_the_run(fig, 'NVIDIA H200', 'amp_bf16', 'batch 256', SPREAD_NOTE)


def test_error_bars_are_the_step_time_iqr_as_throughput():
    rows = bench_rows()
    fig = speed_figure(rows, META)
    ax, = fig.axes
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert containers and all(c.has_yerr and not c.has_xerr for c in containers)
    ends = {}
    for container in containers:
        line, _, (bars,) = container.lines
        for x, segment in zip(line.get_xdata(), bars.get_segments()):
            ends[x] = sorted(segment[:, 1])
    row = rows[5]  # resnet50: median 37.7 ms, IQR 10% of it
    median, iqr, batch = row['infer_step_time'], row['infer_step_time_iqr'], row['infer_batch_size']
    assert ends[row['infer_gmacs']] == pytest.approx([batch / (median + iqr / 2) * 1e3,
                                                      batch / (median - iqr / 2) * 1e3])


def test_accuracy_figure_has_horizontal_error_bars():
    rows = bench_rows()
    fig = accuracy_figure(rows, META)
    ax, = fig.axes
    drawn(fig)
    assert ax.get_xscale() == 'log' and ax.get_yscale() == 'linear'
    assert len(labelled_major_ticks(ax, 'x')) >= MIN_LABELLED_TICKS
    assert any(isinstance(c, ErrorbarContainer) and c.has_xerr for c in ax.containers)
    xs, ys = errorbar_ends(ax)
    assert_inside_axes_with_margin(ax, xs, ys)
    assert_point_names(fig, ax, [r['model'] for r in rows])
    assert_texts_inside_figure(fig)
    assert_titles_name_the_run(fig, 'NVIDIA H200', 'amp_bf16', 'batch 256', SPREAD_NOTE)


@pytest.mark.parametrize('spread', [1.0, 1.3, 6.0, 30.0], ids=['one value', 'narrow', 'a decade', 'wide'])
def test_log_axes_have_enough_labelled_ticks_at_any_range(spread, tmp_path):
    """Whatever the range of the data, at least MIN_LABELLED_TICKS labelled ticks, and every point inside."""
    models = [(f'model_{i}', 'lkconv', 1.0 * spread ** (i / 3), 10.0 * spread ** (i / 3), 80.0) for i in range(4)]
    fig = speed_figure(bench_rows(models), META)
    ax, = fig.axes
    drawn(fig)
    for which in 'xy':
        assert len(labelled_major_ticks(ax, which)) >= MIN_LABELLED_TICKS, which
    assert_inside_axes_with_margin(ax, *errorbar_ends(ax))
    assert_tick_labels_apart(fig)
    fig.savefig(tmp_path / 'speed.png')


def test_rows_without_a_spread_get_no_error_bars():
    rows = [{k: v for k, v in r.items() if not k.endswith('_iqr')} for r in bench_rows()]
    fig = speed_figure(rows, META)
    assert not any(c.has_yerr for c in fig.axes[0].containers)
    assert SPREAD_NOTE not in fig.get_suptitle()


def test_benchmark_pngs_are_written(tmp_path):
    paths = save_benchmark_plots(bench_rows(), META, tmp_path)
    assert sorted(p.name for p in paths) == ['infer_throughput_vs_gmacs.png', 'infer_throughput_vs_params.png',
                                             'top1_vs_infer_throughput.png', 'train_throughput_vs_gmacs.png']
    assert all(p.read_bytes()[:4] == b'\x89PNG' for p in paths)


@pytest.mark.parametrize('title', [
    'ERF of unireplknet_t (random init), 224x224, 16 noise images',  # what `lkconv erf` writes
    'ERF of fdconv_inceptionnext_atto (checkpoint), 384x384, 64 images from /data/imagenet-1k/validation-subset-a',
    'ERF of van_b0 (checkpoint), 224x224, 16 images from /a/folder/name/longer/than/one/line/of/the/title/'
    'without/any/space/in/it/at/all/so/that/it/has/to/be/split/somewhere',
])
def test_erf_title_fits_the_figure(title, tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-111:113, -111:113]
    erf = np.exp(-(xx ** 2 + yy ** 2) / 800.0) + rng.random((224, 224)) * 1e-4
    ratios = {0.2: 0.01, 0.3: 0.02, 0.5: 0.05, 0.99: 0.6}
    fig = erf_figure(erf, title, ratios)
    assert_texts_inside_figure(fig)
    assert ''.join(fig.get_suptitle().split()) == ''.join(title.split())  # wrapped, nothing dropped
    plot_erf(erf, tmp_path / f'erf_{len(title)}.png', title, ratios)


def kernel_results():
    cases = [(13, 80, 56, 2.1), (13, 160, 28, 1.5), (13, 320, 14, 0.8), (7, 640, 7, 0.4), (17, 96, 56, 3.5),
             (9, 256, 14, 1.1)]
    return [dict(case=f'dw{k}x{k} c{c} {h}x{h}', models=['unireplknet_t', 'unireplknet_s'], speedup_vs_best_torch=s)
            for k, c, h, s in cases]


def test_kernel_speedups_figure(tmp_path):
    results = kernel_results()
    title = 'Triton vs best PyTorch path, fwd+bwd, bfloat16, batch 128, NVIDIA H200'
    fig = kernel_speedups_figure(results, title)
    ax, = fig.axes
    drawn(fig)
    assert len(labelled_major_ticks(ax, 'x')) >= MIN_LABELLED_TICKS
    bars, = [c for c in ax.containers if isinstance(c, BarContainer)]
    ends = [p.get_x() + p.get_width() for p in bars.patches]
    assert ends == pytest.approx([r['speedup_vs_best_torch'] for r in results])
    assert all(p.get_x() == 1.0 for p in bars.patches)  # from parity: right = faster, left = slower
    assert_inside_axes_with_margin(ax, ends, [0.0] * len(ends))
    assert_texts_inside_figure(fig)
    assert_tick_labels_apart(fig)
    assert_titles_name_the_run(fig, 'NVIDIA H200', 'bfloat16', 'batch 128')
    plot_kernel_speedups(results, tmp_path / 'kernel_speed.png', title)


def test_throughput_bars_have_error_bars(tmp_path):
    rows = []
    for (model, *_), mode, kernels in itertools.product(MODELS[1:5], ('eager', 'torch.compile (inductor)'),
                                                        ('torch', 'triton')):
        row = next(r for r in bench_rows(batch=128) if r['model'] == model)
        rows.append(dict(row, compile=mode, kernels=kernels))
    title = 'NVIDIA H200, amp_bf16, batch 128, channels_last'
    fig = throughput_bars_figure(rows, title)
    drawn(fig)
    for ax in fig.axes:
        errors = [c for c in ax.containers if isinstance(c, BarContainer) and c.errorbar is not None]
        assert len(errors) == 4  # one per (compile mode, kernels) configuration
        tops = [p.get_height() for c in errors for p in c.patches]
        assert max(tops) < ax.get_ylim()[1]
    assert_texts_inside_figure(fig)
    assert_one_font_size_per_role(fig)
    assert_titles_name_the_run(fig, 'NVIDIA H200', 'amp_bf16', 'batch 128', SPREAD_NOTE)
    plot_throughput_bars(rows, tmp_path / 'throughput.png', title)


def test_a_single_timed_step_draws_without_negative_error_bars(tmp_path):
    """One timed step (IQR 0), samples/s and step time rounded separately as the benchmark writes them:
    the value can sit a hair outside its zero-width interval, which must not become a negative error bar."""
    row = dict(model='unireplknet_a', source='lkconv', compile='eager', kernels='torch', train_batch_size=2,
               train_step_time=70.123, train_step_time_iqr=0.0, train_samples_per_sec=28.52,
               infer_batch_size=2, infer_step_time=7.001, infer_step_time_iqr=0.0, infer_samples_per_sec=285.68,
               infer_gmacs=0.642, param_count=4.4)
    # both directions of rounding: 2 / 70.123 ms = 28.5213 > 28.52, 2 / 7.001 ms = 285.673 < 285.68
    assert plot_throughput_bars([row], tmp_path / 'throughput.png', 'cpu, amp_bf16, batch 2, channels_last')
    assert plot_speed([row], dict(settings=dict(batch_size=2)), tmp_path / 'speed.png')
