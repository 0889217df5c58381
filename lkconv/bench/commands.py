"""Measurement commands: `lkconv bench` (parameters, FLOPs, throughput, memory) and `lkconv erf`.

torch, timm and the models are imported inside the command functions: see `lkconv.cli`.
"""
import csv
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from .options import BENCH_MODES, FORMS, INTERPRETED_KERNEL_MODELS, KERNEL_DTYPES, KERNEL_MODELS, PRECISION_NAMES
from ..cli_args import check_output_folder, non_negative_int, positive_int
from ..utils import atomic_write_text, csv_text
from ..zoo.commands import add_weights_arguments, load_model, resolve_model_name


class _Progress:
    """Progress on stderr: a tqdm bar on a terminal, else one line per step of work (for logs)."""

    def __init__(self):
        from tqdm import tqdm
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


def _device(name: Optional[str], command: str) -> str:
    """`name` (default: cuda if a GPU is visible, else cpu), checked to exist before any work."""
    from ..utils import device_problem, resolve_device_name  # the check `lkconv train` makes
    problem = device_problem(name or 'auto')
    if problem:
        raise SystemExit(f'lkconv {command}: --device: {problem}')
    return resolve_device_name(name or 'auto')


def _read_top1(path: str) -> Dict[str, float]:
    """`model` -> `top1` from a CSV with those columns (timm's results-imagenet.csv, validation results)."""
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise SystemExit(f"lkconv bench: cannot read --top1-csv '{path}': {e.strerror or e}") from None
    if rows and not {'model', 'top1'} <= set(rows[0]):
        raise SystemExit(f"lkconv bench: {path} needs 'model' and 'top1' columns, has {list(rows[0])}")
    table = {}
    for row in rows:
        try:
            top1 = float(row['top1'])
        except (TypeError, ValueError):
            raise SystemExit(f"lkconv bench: {path}: top1 of {row['model']} is not a number: {row['top1']!r}") from None
        table.setdefault(row['model'], top1)
        table.setdefault(row['model'].split('.')[0], top1)  # untagged name: first tag listed
    return table


def _describe(settings, meta: Dict) -> str:
    from .benchmark import describe_run
    return (f"device {describe_run(meta)} ({settings.device}, {meta['threads']} threads), backends "
            f"depthwise={settings.depthwise_backend} ska={settings.ska_backend}; inference form: "
            f"{', '.join(settings.forms)}; torch {meta['torch']}, timm {meta['timm']}")


def cmd_bench(args) -> int:
    import torch
    from .benchmark import TIMING_METHOD, BenchSettings, format_table, resolve_models, run_benchmark, write_results
    from .flops import FLOP_CONVENTION
    # everything a user can get wrong is checked before the first model is built
    try:
        specs = resolve_models(args.models)
    except ValueError as e:
        raise SystemExit(f'lkconv bench: {e}') from None
    if args.out:
        check_output_folder(args.out, 'bench')
    top1 = _read_top1(args.top1_csv) if args.top1_csv else {}
    device = _device(args.device, 'bench')
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = BenchSettings(
            bench=args.bench, forms=FORMS if args.form == 'both' else (args.form,), device=device,
            precision=args.precision, channels_last=args.channels_last, compile=args.compile,
            compile_backend=args.compile_backend,
            batch_size=args.batch_size if args.batch_size is not None else (256 if device.startswith("cuda") else 16),
            img_size=args.img_size,
            warmup=args.warmup, iters=args.iters, rounds=args.rounds, interleave=not args.sequential,
            depthwise_backend=args.depthwise_backend, ska_backend=args.ska_backend,
            num_classes=args.num_classes if args.num_classes >= 0 else None,
        )
        progress = _Progress()
        # with --out, the results so far are on disk after every round: an interrupted run keeps them
        partial = (lambda result: write_results(result, args.out)) if args.out else None
        try:
            result = run_benchmark(specs, settings, baseline=args.baseline, progress=progress, on_update=partial)
        finally:
            progress.close()
    except ValueError as e:
        raise SystemExit(f'lkconv bench: {e}') from None
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


def _erf_batches(data_config: Dict, args, input_size) -> List:
    """`args.num_images` images as normalised batches: from `--data-dir` (a seeded random pick) or noise."""
    import torch
    from timm.data import ImageDataset, create_transform
    generator = torch.Generator().manual_seed(0)
    if args.data_dir:
        transform = create_transform(**dict(data_config, input_size=input_size, crop_pct=1.0))
        dataset = ImageDataset(args.data_dir, transform=transform)
        picks = torch.randperm(len(dataset), generator=generator)[:args.num_images].tolist()
        images = torch.stack([dataset[i][0] for i in picks])
    else:
        images = torch.randn(args.num_images, *input_size, generator=generator)
    return list(images.split(args.batch_size))


def _check_image_folder(folder: str) -> None:
    """`--data-dir` holds images timm can read (.png/.jpg files, in class subfolders or not)."""
    from timm.data import ImageDataset
    if not Path(folder).is_dir():
        raise SystemExit(f"lkconv erf: --data-dir '{folder}' is not a folder")
    try:
        ImageDataset(folder)
    except RuntimeError as e:  # timm: 'Found 0 images in subfolders of ...'
        raise SystemExit(f'lkconv erf: --data-dir: {e}') from None


def cmd_erf(args) -> int:
    import torch
    from timm.data import resolve_model_data_config
    from tqdm import tqdm
    from .erf import DEFAULT_THRESHOLDS, area_ratios, erf_map, feature_map
    # everything a user can get wrong is checked before the first ERF is computed
    if args.checkpoint and len(args.models) > 1:
        raise SystemExit('lkconv erf: --checkpoint holds the weights of one model; name at most one MODEL')
    if not (args.models or args.checkpoint):
        raise SystemExit('lkconv erf: name the models (e.g. lkconv erf unireplknet_t convnext_tiny), '
                         'or give the --checkpoint of a training run')
    if args.pretrained and args.checkpoint:
        raise SystemExit('lkconv erf: give --pretrained or --checkpoint, not both')
    names = [resolve_model_name(m, 'erf') for m in args.models] or [None]  # None: the checkpoint's model
    if args.data_dir:
        _check_image_folder(args.data_dir)
    try:
        from .plots import plot_erf
    except ImportError as e:
        raise SystemExit(f'lkconv erf: needs matplotlib for its heat maps ({e})') from None
    device = torch.device(_device(args.device, 'erf'))
    out = check_output_folder(args.out or Path('output', 'erf', time.strftime('%Y%m%d-%H%M%S')), 'erf')
    # every model is loaded (its weights fetched) and run once at the input size before any ERF
    models = []
    for requested in names:
        # the deploy form computes the same function in eval mode and back-propagates faster
        model, data_config, name = load_model(args, 'erf', requested, reparam=True)
        size = args.img_size or resolve_model_data_config(model)['input_size'][-1]
        input_size = (data_config['input_size'][0], size, size)
        try:
            with torch.no_grad():
                feature_map(model, torch.zeros(1, *input_size))
        except ValueError as e:
            size_note = f'--img-size {size} does not fit ' if args.img_size else ''
            raise SystemExit(f'lkconv erf: {size_note}{name}: {e}') from None
        models.append((model, data_config, name, input_size))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    while models:
        model, data_config, name, input_size = models.pop(0)  # frees each model once its ERF is drawn
        model, size = model.to(device), input_size[-1]
        batches = _erf_batches(data_config, args, input_size)
        count = sum(b.shape[0] for b in batches)
        erf = erf_map(model, (b.to(device) for b in tqdm(batches, desc=f'ERF {name}', unit='batch', disable=None,
                                                           leave=False)))
        ratios = area_ratios(erf, DEFAULT_THRESHOLDS)
        images = f'{count} ' + (f'images from {args.data_dir}' if args.data_dir else 'noise images')
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
    atomic_write_text(out / 'erf.csv', csv_text(rows, rows[0]))
    if not (args.pretrained or args.checkpoint):
        print('note: randomly initialised weights show the architecture at initialisation (zero-initialised '
              'residual branches, global SE/GRN paths), not what a trained model looks at; use --pretrained '
              'or --checkpoint for the published kind of ERF')
    print('wrote ' + ', '.join([r['png'] for r in rows] + [str(out / 'erf.csv')]))
    return 0


def cmd_demo(args) -> None:
    """List the zoo, then build one model and run it on a batch, reporting size, FLOPs and timing."""
    import timm
    import torch
    from ..version import __version__
    from ..zoo import list_models
    from ..utils import count_params
    from .benchmark import count_gmacs, time_forward
    name = resolve_model_name(args.model, 'demo')
    names = list_models()
    print(f'lkconv {__version__}: {len(names)} models registered with timm')
    for zoo_name in names:
        print(f'  {zoo_name:<28} {count_params(timm.create_model(zoo_name, device="meta")) / 1e6:8.2f} M params')
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    size = model.pretrained_cfg['input_size']
    x = torch.randn(args.batch_size, *size)
    print(f'\n{name}: {count_params(model):,} parameters, '
          f'{count_gmacs(model, size):.3f} GMACs per {size[1]}x{size[2]} image (fvcore)')
    with torch.no_grad():
        logits = model(x)
    print(f'forward of a {tuple(x.shape)} batch -> logits {tuple(logits.shape)}, '
          f'top-1 class ids {logits.argmax(-1).tolist()}')
    timing = time_forward(model, x)
    print(f'CPU eval forward, fp32, batch {args.batch_size}: median {timing.median * 1e3:.1f} ms '
          f'({timing.samples_per_sec:.1f} img/s over {len(timing.step_times)} runs)')
    deployed = timm.utils.reparameterize_model(model)
    with torch.no_grad():
        gap = (deployed(x) - logits).abs().max().item()
    fused = time_forward(deployed, x)
    print(f're-parameterised: {count_params(deployed):,} parameters, max |logit difference| {gap:.2e}, '
          f'median {fused.median * 1e3:.1f} ms ({timing.median / fused.median:.2f}x the training form speed)')


def cmd_bench_kernels(args) -> int:
    from .kernels import run
    args.models = args.models or list(INTERPRETED_KERNEL_MODELS if args.smoke else KERNEL_MODELS)
    return run(args)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        'bench', help='parameters, GMACs, throughput and memory of models, side by side with timm models',
        description='Measure lkconv and timm models in one run. MODELS are names (with or without a '
                    "pretrained tag), wildcards ('van_*'), families ('lsnet', 'convnext') or 'all' (the zoo).")
    p.add_argument('models', nargs='+', metavar='MODEL', help='models to measure (see above)')
    p.add_argument('--bench', choices=BENCH_MODES, default='both',
                   help="what to measure: inference and training, one of them, or 'profile' (parameters and "
                        "FLOPs only)")
    p.add_argument('--form', choices=FORMS + ('both',), default='deploy',
                   help='form for inference and FLOPs: re-parameterised (deploy), as trained, or a row of each')
    p.add_argument('-b', '--batch-size', type=positive_int, default=None, help='default: 256 on CUDA, 16 on CPU')
    p.add_argument('--img-size', type=positive_int, default=None,
                   help="input side in pixels (default: each model's pretrained-cfg input size)")
    p.add_argument('--num-classes', type=int, default=1000,
                   help="classifier size for every model (-1: each pretrained cfg's)")
    p.add_argument('--precision', choices=PRECISION_NAMES, default='fp32',
                   help='fp32, or torch.autocast to bfloat16 / float16')
    p.add_argument('--channels-last', action='store_true', help='model and input in the NHWC memory layout')
    p.add_argument('--compile', action='store_true', help='torch.compile the timed models')
    p.add_argument('--compile-backend', default='inductor', help='torch.compile backend (with --compile)')
    p.add_argument('--device', default=None, help='cpu or cuda[:N] (default: cuda if available)')
    p.add_argument('--depthwise-backend', default='auto', help="depthwise conv backend: auto, torch, triton, ...")
    p.add_argument('--ska-backend', default='auto', help='SKA backend: auto, torch, triton, ...')
    p.add_argument('--threads', type=positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument('--warmup', type=non_negative_int, default=5, help='warm-up steps per model and workload')
    p.add_argument('--iters', type=positive_int, default=10, help='timed steps per model, workload and round')
    p.add_argument('--rounds', type=positive_int, default=4, help='rounds, each visiting every model in turn')
    p.add_argument('--sequential', action='store_true',
                   help='finish and free each model before the next (less memory, no interleaving)')
    p.add_argument('--baseline', default=None, help='model the speed ratios refer to (default: first timm model)')
    p.add_argument('--top1-csv', default=None, help="CSV with 'model' and 'top1' columns for the accuracy plot")
    p.add_argument('--out', default=None, help='folder for benchmark.csv, benchmark.json and PNG plots '
                                               '(default: none, the table only)')
    p.set_defaults(func=cmd_bench)

    p = subparsers.add_parser(
        'erf', help='effective receptive field heat map and high-contribution area ratios',
        description='Draw the effective receptive field of models and compute their high-contribution area '
                    'ratios. With --checkpoint of an lkconv training run or deploy checkpoint, MODEL may be '
                    'left out: the checkpoint names it.')
    p.add_argument('models', nargs='*', metavar='MODEL', help='models to draw (lkconv or timm names)')
    p.add_argument('--img-size', type=positive_int, default=None,
                   help="input side in pixels (default: the model's pretrained-cfg input size)")
    p.add_argument('--num-images', type=positive_int, default=16, help='images the ERF is averaged over')
    p.add_argument('-b', '--batch-size', type=positive_int, default=4, help='images per forward/backward pass')
    p.add_argument('--data-dir', default=None, help='image folder to draw images from (default: Gaussian noise)')
    add_weights_arguments(p)
    p.add_argument('--device', default=None, help='cpu or cuda[:N] (default: cuda if available)')
    p.add_argument('--out', default=None,
                   help='folder for erf_<model>.png and erf.csv (default: a new output/erf/<date>-<time>)')
    p.set_defaults(func=cmd_erf)

    p = subparsers.add_parser('demo', help='list the zoo, build a model and run it on a batch')
    p.add_argument('--model', default='unireplknet_a', help='model to build and run')
    p.add_argument('-b', '--batch-size', type=positive_int, default=4, help='images in the batch')
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser(
        'bench-kernels', help="the Triton kernels against PyTorch at the models' own convolutions",
        description="Check the Triton depthwise-conv and SKA kernels against PyTorch at every convolution the "
                    "models run (all dtypes, both layouts: forward, input and weight gradients), then time "
                    "forward+backward of every path. Needs a CUDA GPU, or --smoke on the CPU.")
    p.add_argument('--models', nargs='+', default=None,
                   help=f"models whose convolutions to run (default: {' '.join(KERNEL_MODELS)}; with --smoke "
                        f"{' '.join(INTERPRETED_KERNEL_MODELS)})")
    p.add_argument('--img-size', type=positive_int, default=224, help='input side the geometries come from')
    p.add_argument('--batch', type=positive_int, default=128, help='batch of the timed steps')
    p.add_argument('--dtype', choices=KERNEL_DTYPES, default='bfloat16', help='dtype of the timed steps')
    p.add_argument('--warmup', type=non_negative_int, default=3, help='untimed steps per path')
    p.add_argument('--rounds', type=positive_int, default=20, help='timed steps per path')
    p.add_argument('--json', type=Path, default=None,
                   help='write every check and measurement, and the selection rows, here')
    p.add_argument('--emit-table', action='store_true', help='print entries for lkconv/kernels/selection.py')
    p.add_argument('--smoke', action='store_true',
                   help='CPU under TRITON_INTERPRET=1: tiny shapes, one timed step per path')
    p.set_defaults(func=cmd_bench_kernels)
