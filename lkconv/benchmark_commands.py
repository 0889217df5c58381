"""Measurement commands: `lkconv bench` (parameters, FLOPs, throughput, memory) and `lkconv erf`."""
import csv
import sys
from pathlib import Path
from typing import Dict, List

import timm
import torch
from timm.data import ImageDataset, create_transform, resolve_model_data_config
from timm.utils import reparameterize_model
from tqdm import tqdm

from .benchmark import (
    BENCH_MODES, FORMS, PRECISIONS, TIMING_METHOD, BenchSettings, describe_run, format_table, resolve_models,
    run_benchmark, write_results,
)
from .commands import resolve_model_name
from .erf import DEFAULT_THRESHOLDS, area_ratios, erf_map
from .flops import FLOP_CONVENTION


class _Progress:
    """Progress on stderr: a tqdm bar on a terminal, else one line per step of work (for logs)."""

    def __init__(self):
        self.bar = tqdm(total=0, unit='step', dynamic_ncols=True, leave=False) if sys.stderr.isatty() else None
        self.last = None

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.bar is not None:
            self.bar.total, self.bar.n = total, done
            self.bar.set_description_str(message[:60], refresh=False)
            self.bar.refresh()
        elif message != self.last:
            print(f'[{done}/{total}] {message}', file=sys.stderr, flush=True)
        self.last = message

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _read_top1(path: str) -> Dict[str, float]:
    """`model` -> `top1` from a CSV with those columns (timm's results-imagenet.csv, validation results)."""
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if rows and not {'model', 'top1'} <= set(rows[0]):
        raise SystemExit(f"lkconv bench: {path} needs 'model' and 'top1' columns, has {list(rows[0])}")
    table = {}
    for row in rows:
        table.setdefault(row['model'], float(row['top1']))
        table.setdefault(row['model'].split('.')[0], float(row['top1']))  # untagged name: first tag listed
    return table


def _describe(settings: BenchSettings, meta: Dict) -> str:
    return (f"device {describe_run(meta)} ({settings.device}, {meta['threads']} threads), backends "
            f"depthwise={settings.depthwise_backend} ska={settings.ska_backend}; inference form: "
            f"{', '.join(settings.forms)}; torch {meta['torch']}, timm {meta['timm']}")


def cmd_bench(args) -> int:
    try:
        specs = resolve_models(args.models)
    except ValueError as e:
        raise SystemExit(f'lkconv bench: {e}')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = BenchSettings(
            bench=args.bench, forms=FORMS if args.form == 'both' else (args.form,), device=device,
            precision=args.precision, channels_last=args.channels_last, compile=args.compile,
            compile_backend=args.compile_backend,
            batch_size=args.batch_size or (256 if device == 'cuda' else 16), img_size=args.img_size,
            warmup=args.warmup, iters=args.iters, rounds=args.rounds, interleave=not args.sequential,
            depthwise_backend=args.depthwise_backend, ska_backend=args.ska_backend,
            num_classes=args.num_classes if args.num_classes >= 0 else None,
        )
        top1 = _read_top1(args.top1_csv) if args.top1_csv else {}
        progress = _Progress()
        # with --out, the results so far are on disk after every round: an interrupted run keeps them
        partial = (lambda result: write_results(result, args.out)) if args.out else None
        try:
            result = run_benchmark(specs, settings, baseline=args.baseline, progress=progress, on_update=partial)
        finally:
            progress.close()
    except ValueError as e:
        raise SystemExit(f'lkconv bench: {e}')
    for row in result.rows:
        known = top1.get(row['model'], top1.get(row['model'].split('.')[0]))
        if known is not None:
            row['top1'] = known
    print(_describe(settings, result.meta))
    print(format_table(result))
    print(f'\n{FLOP_CONVENTION}')
    if settings.bench != 'profile':
        print(f'Timings: {TIMING_METHOD}.')
    if settings.train:
        print('train_* columns are measured on the training form (SGD, cross-entropy, random targets).')
    if result.meta['baseline'] and settings.bench != 'profile':
        print(f"Ratios are samples/s relative to {result.meta['baseline']} measured in the same run"
              + (' (on a shared CPU, quote ratios rather than absolute numbers).' if device == 'cpu' else '.'))
    if args.out:
        paths = write_results(result, args.out)
        try:
            from .plots import save_benchmark_plots
        except ImportError as e:  # the numbers are written either way
            print(f'plots skipped ({e}); install matplotlib to get them')
        else:
            paths += save_benchmark_plots(result.rows, result.meta, args.out)
        print('wrote ' + ', '.join(str(p) for p in paths))
    return 1 if result.errors else 0


def _erf_batches(model, args, input_size) -> List[torch.Tensor]:
    """`args.num_images` images as normalised batches: from `--data-dir` (a seeded random pick) or noise."""
    generator = torch.Generator().manual_seed(0)
    if args.data_dir:
        cfg = resolve_model_data_config(model)
        cfg['input_size'] = input_size
        cfg['crop_pct'] = 1.0
        dataset = ImageDataset(args.data_dir, transform=create_transform(**cfg))
        if len(dataset) == 0:
            raise SystemExit(f'lkconv erf: no images found in {args.data_dir}')
        picks = torch.randperm(len(dataset), generator=generator)[:args.num_images].tolist()
        images = torch.stack([dataset[i][0] for i in picks])
    else:
        images = torch.randn(args.num_images, *input_size, generator=generator)
    return list(images.split(args.batch_size))


def cmd_erf(args) -> int:
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from .plots import plot_erf
    except ImportError as e:
        raise SystemExit(f'lkconv erf: needs matplotlib for its heat maps ({e})')
    rows = []
    for requested in args.models:
        name = resolve_model_name(requested)
        model = timm.create_model(name, pretrained=args.pretrained, checkpoint_path=args.checkpoint)
        # the deploy form computes the same function in eval mode and back-propagates faster
        model = reparameterize_model(model.eval()).to(device)
        size = args.img_size or resolve_model_data_config(model)['input_size'][-1]
        input_size = (3, size, size)
        batches = _erf_batches(model, args, input_size)
        batches = tqdm(batches, desc=f'ERF {name}', unit='batch', disable=None, leave=False)
        try:
            erf = erf_map(model, (b.to(device) for b in batches))
        except ValueError as e:
            raise SystemExit(f'lkconv erf: {name}: {e}')
        ratios = area_ratios(erf, DEFAULT_THRESHOLDS)
        images = f'{args.num_images} ' + (f'images from {args.data_dir}' if args.data_dir else 'noise images')
        weights = 'pretrained' if args.pretrained else ('checkpoint' if args.checkpoint else 'random init')
        title = f'ERF of {name} ({weights}), {size}x{size}, {images}'
        path = plot_erf(erf.numpy(), out / f'erf_{name}.png', title, ratios)
        rows.append(dict(model=name, img_size=size, images=images, weights=weights, png=str(path),
                         **{f'area_ratio_{round(t * 100)}': round(r, 5) for t, r in ratios.items()}))
    width = max(len(r['model']) for r in rows)
    print('High-contribution area ratio: image area of the smallest centred square holding t of the '
          'ERF (mean |d centre output / d input|)')
    print('model'.ljust(width) + ''.join(f't={t:.0%}'.rjust(9) for t in DEFAULT_THRESHOLDS))
    for r in rows:
        ratios = [r[f'area_ratio_{round(t * 100)}'] for t in DEFAULT_THRESHOLDS]
        print(r['model'].ljust(width) + ''.join(f'{v:9.2%}' for v in ratios))
    with open(out / 'erf.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator='\n')
        writer.writeheader()
        writer.writerows(rows)
    if not (args.pretrained or args.checkpoint):
        print('note: randomly initialised weights show the architecture at initialisation (zero-initialised '
              'residual branches, global SE/GRN paths), not what a trained model looks at; use --pretrained '
              'or --checkpoint for the published kind of ERF')
    print('wrote ' + ', '.join([r['png'] for r in rows] + [str(out / 'erf.csv')]))
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        'bench', help='parameters, GMACs, throughput and memory of models, side by side with timm models',
        description='Measure lkconv and timm models in one run. MODELS are names (with or without a '
                    "pretrained tag), wildcards ('van_*'), families ('lsnet', 'convnext') or 'all' (the zoo).")
    p.add_argument('models', nargs='+', metavar='MODEL')
    p.add_argument('--bench', choices=BENCH_MODES, default='both',
                   help="'profile' = parameters and FLOPs only (default: both inference and train)")
    p.add_argument('--form', choices=FORMS + ('both',), default='deploy',
                   help='form for inference and FLOPs: re-parameterised (deploy, default) or as trained')
    p.add_argument('-b', '--batch-size', type=int, default=None, help='default: 256 on CUDA, 16 on CPU')
    p.add_argument('--img-size', type=int, default=None, help="default: each model's pretrained-cfg input size")
    p.add_argument('--num-classes', type=int, default=1000,
                   help="classifier size for every model (default 1000; -1: each pretrained cfg's)")
    p.add_argument('--precision', choices=tuple(PRECISIONS), default='fp32')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile', action='store_true', help='torch.compile the timed models')
    p.add_argument('--compile-backend', default='inductor', help='torch.compile backend (with --compile)')
    p.add_argument('--device', default=None, help='cpu or cuda[:N] (default: cuda if available)')
    p.add_argument('--depthwise-backend', default='auto', help="depthwise conv backend: auto, torch, triton, ...")
    p.add_argument('--ska-backend', default='auto', help='SKA backend: auto, torch, triton, ...')
    p.add_argument('--threads', type=int, default=None, help='CPU threads (torch.set_num_threads)')
    p.add_argument('--warmup', type=int, default=5, help='warm-up steps per model and workload')
    p.add_argument('--iters', type=int, default=10, help='timed steps per model, workload and round')
    p.add_argument('--rounds', type=int, default=4, help='rounds, each visiting every model in turn')
    p.add_argument('--sequential', action='store_true',
                   help='finish and free each model before the next (less memory, no interleaving)')
    p.add_argument('--baseline', default=None, help='model the speed ratios refer to (default: first timm model)')
    p.add_argument('--top1-csv', default=None, help="CSV with 'model' and 'top1' columns for the accuracy plot")
    p.add_argument('--out', default=None, help='folder for benchmark.csv, benchmark.json and PNG plots')
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser('erf', help='effective receptive field heat map and high-contribution area ratios')
    p.add_argument('models', nargs='+', metavar='MODEL')
    p.add_argument('--img-size', type=int, default=None, help="default: the model's pretrained-cfg input size")
    p.add_argument('--num-images', type=int, default=16)
    p.add_argument('-b', '--batch-size', type=int, default=4)
    p.add_argument('--data-dir', default=None, help='image folder to draw images from (default: Gaussian noise)')
    p.add_argument('--pretrained', action='store_true', help='load the published weights')
    p.add_argument('--checkpoint', default=None, help='weights file to load')
    p.add_argument('--device', default=None)
    p.add_argument('--out', default='.', help='folder for erf_<model>.png and erf.csv')
    p.set_defaults(func=cmd_erf)
