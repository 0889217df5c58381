"""Model measurements: parameters, FLOPs, throughput, step time and peak memory, side by side.

`run_benchmark` measures lkconv models and timm reference models in one run, under the same settings,
and returns one row per (model, form) with timm's `benchmark.py` column names (`param_count` in
millions, `infer_gmacs` per image at batch 1, `infer_samples_per_sec`, `infer_step_time` in ms, ...).

How timings are taken, so that numbers from a shared or noisy machine still compare fairly:
* every model is warmed up first (this is also where peak memory is read, on CUDA);
* timed steps run in rounds that visit every model in turn (interleaved), so a slow-down of the
  machine affects all models alike; ratios against a reference model of the same run are the
  figures to quote from a shared machine;
* each step is timed on its own, with the device synchronised before and after it; a row reports
  the median step time, samples/s = batch / median, and the interquartile range as the spread.
"""
import copy
import json
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.data import resolve_model_data_config
from timm.optim import create_optimizer_v2
from timm.utils import NativeScaler, reparameterize_model

from .options import BENCH_MODES, FORMS, PRECISION_NAMES
from .flops import FLOP_CONVENTION, count_flops
from ..layers import layer_backends
from ..zoo.names import ModelSpec, resolve_models
from ..utils import atomic_write_text, autocast_factory, count_params, csv_text, did_you_mean
from ..version import __version__

__all__ = [
    'count_gmacs', 'count_nonzero_params', 'zero_weight_macs', 'time_forward', 'Timing', 'ModelSpec',
    'resolve_models', 'BenchSettings',
    'BenchmarkResult', 'run_benchmark', 'published_top1', 'write_results', 'format_table', 'CSV_COLUMNS',
    'PRECISIONS', 'FORMS', 'BENCH_MODES', 'TIMING_METHOD', 'describe_run', 'device_name',
]

PRECISIONS = dict(zip(PRECISION_NAMES, (None, torch.bfloat16, torch.float16)))  # name -> autocast dtype
TIMING_METHOD = (
    'warm-up steps first; timed steps in rounds interleaved across models; each step timed alone with '
    'device synchronisation; step time = median, spread = interquartile range, samples/s = batch / median'
)


def count_gmacs(model: nn.Module, input_size: Tuple[int, int, int]) -> float:
    """GMACs of one image through `model` (see `lkconv.bench.flops` for what is counted)."""
    return count_flops(model, input_size).gmacs


# ------------------------------------------------------------------------------------------ sparsity
# Sparse-trained models (SLaK) store their pruned weights as zeros of dense tensors and publish parameter and
# FLOP counts of the non-zeros only; the `*_nonzero` columns count that way, next to the dense ones.

_WEIGHTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def count_nonzero_params(model: nn.Module) -> int:
    """Parameters less the exact zeros of weight matrices and kernels (tensors of 2 or more dimensions, what
    sparse training masks); biases, norm parameters and layer scales count whatever their value."""
    zeros = sum(int((p == 0).sum()) for p in model.parameters() if p.dim() >= 2)
    return count_params(model) - zeros


@torch.no_grad()
def zero_weight_macs(model: nn.Module, input_size: Tuple[int, int, int]) -> int:
    """Multiply-accumulates of one image that multiply a zero weight of a conv or linear layer.

    Each weight of such a layer is used once per output position (per output pixel of a conv, per row of a
    linear), so a layer's zero weights cost (its zeros) x (its output positions). Dense GMACs less this is the
    sparse count of SLaK's `FLOPs_counter.py`. No forward pass is run when no such weight is zero.
    """
    zeros = {}
    for module in model.modules():
        weight = getattr(module, 'weight', None)
        if isinstance(module, _WEIGHTED_LAYERS) and isinstance(weight, torch.Tensor):
            count = int((weight == 0).sum())
            if count:
                zeros[module] = count
    if not zeros:
        return 0
    total = 0

    def record(module: nn.Module, args, output: torch.Tensor) -> None:
        nonlocal total
        out_features = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
        total += zeros[module] * (output.numel() // out_features)

    hooks = [m.register_forward_hook(record) for m in zeros]
    training = model.training
    try:
        param = next(model.parameters())
        model.eval()(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return total


@dataclass
class Timing:
    batch_size: int
    step_times: List[float]  # seconds

    @property
    def median(self) -> float:
        return statistics.median(self.step_times)

    @property
    def iqr(self) -> float:
        if len(self.step_times) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.step_times, n=4, method='inclusive')
        return q3 - q1

    @property
    def samples_per_sec(self) -> float:
        return self.batch_size / self.median


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _time_steps(step: Callable[[], None], device: torch.device, n: int) -> List[float]:
    times = []
    for _ in range(n):
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def time_forward(model: nn.Module, x: torch.Tensor, warmup: int = 2, repeats: int = 5) -> Timing:
    """Median wall time of eval-mode forward passes, synchronising the device around each step."""
    model.eval()
    for _ in range(warmup):
        model(x)
    return Timing(x.shape[0], _time_steps(lambda: model(x), x.device, repeats))


# ------------------------------------------------------------------------------------------ accuracy

_TOP1_NOTE = re.compile(r'top-?1\D{0,20}?(\d{2}\.\d+)', re.IGNORECASE)
_TOP1_FILE = re.compile(r'acc(\d{2}\.\d+)')


def published_top1(pretrained_cfg: Dict) -> Optional[float]:
    """ImageNet top-1 (%) a pretrained cfg carries: a 'top-1 NN.N' note, else an 'accNN.NN' weight file name.

    A file name counts only if it names the cfg's architecture: a model initialised from another
    network's weights (the FDConv conversions) has no published accuracy of its own.
    """
    for note in pretrained_cfg.get('notes') or ():
        match = _TOP1_NOTE.search(str(note))
        if match:
            return float(match.group(1))
    architecture = pretrained_cfg.get('architecture') or ''
    for key in ('hf_hub_filename', 'file', 'url'):
        file_name = str(pretrained_cfg.get(key) or '').rsplit('/', 1)[-1]
        match = _TOP1_FILE.search(file_name)
        if match and file_name.startswith(architecture):
            return float(match.group(1))
    return None


# ------------------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class BenchSettings:
    bench: str = 'both'  # 'both', 'inference', 'train' or 'profile' (parameters and FLOPs only)
    forms: Tuple[str, ...] = ('deploy',)  # forms whose inference and FLOPs are reported, one row each
    device: str = 'cpu'
    precision: str = 'fp32'  # 'fp32', 'amp_bf16', 'amp_fp16'
    channels_last: bool = False
    compile: bool = False  # torch.compile the timed models (FLOPs are counted on the eager model)
    compile_backend: str = 'inductor'  # the torch.compile backend when `compile` is set
    flops: bool = True  # count GMACs (fvcore); False leaves the FLOP columns out
    batch_size: int = 256
    img_size: Optional[int] = None  # None: each model's input size from its pretrained cfg
    num_classes: Optional[int] = 1000  # classifier size for every model (None: each cfg's, e.g. 21841)
    warmup: int = 5
    iters: int = 10  # timed steps per model and round
    rounds: int = 4
    interleave: bool = True  # False: finish (and free) one model before building the next
    depthwise_backend: str = 'auto'  # lkconv.layers depthwise conv backend ('auto', 'torch', 'triton', ...)
    ska_backend: str = 'auto'  # lkconv.layers SKA backend

    def __post_init__(self):
        checks = [
            (self.bench in BENCH_MODES, f'bench must be one of {BENCH_MODES}'),
            (bool(self.forms) and set(self.forms) <= set(FORMS), f'forms must be a subset of {FORMS}'),
            (self.precision in PRECISIONS, f'precision must be one of {tuple(PRECISIONS)}'),
            (self.batch_size >= 1 and self.iters >= 1 and self.rounds >= 1 and self.warmup >= 0,
             'batch_size, iters and rounds must be >= 1 and warmup >= 0'),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def inference(self) -> bool:
        return self.bench in ('both', 'inference')

    @property
    def train(self) -> bool:
        return self.bench in ('both', 'train')


# ------------------------------------------------------------------------------------------- runners

class _Runner:
    """One timed workload (inference of one form, or training) of one model."""

    def __init__(self, row: Dict, prefix: str, model: nn.Module, settings: BenchSettings, input_size):
        self.row, self.prefix, self.settings = row, prefix, settings
        self.device = torch.device(settings.device)
        self.batch_size = settings.batch_size
        fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.module = model.to(memory_format=fmt)
        self.model = torch.compile(self.module, backend=settings.compile_backend) if settings.compile else self.module
        self.x = torch.randn(self.batch_size, *input_size, device=self.device).contiguous(memory_format=fmt)
        amp_dtype = PRECISIONS[settings.precision]
        self.autocast = autocast_factory(self.device.type, amp_dtype)
        self.step_times: List[float] = []

    def _set_mode(self) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Free what the workload holds between its turns (other models run in between)."""

    @property
    def label(self) -> str:
        return 'train' if self.prefix == 'train' else f"{self.prefix} ({self.row['form']} form)"

    def _resident_bytes(self) -> int:
        tensors = list(self.module.parameters()) + list(self.module.buffers()) + [self.x]
        return sum(t.numel() * t.element_size() for t in tensors)

    def warm_up(self) -> None:
        """Run the warm-up steps; on CUDA record the peak memory the workload needs (in MB)."""
        self._set_mode()
        cuda = self.device.type == 'cuda'
        if cuda:
            _synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        for _ in range(max(self.settings.warmup, 1)):  # at least one: compiles, allocates workspaces
            self.step()
        if cuda:
            _synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - before + self._resident_bytes()
            self.row[f'{self.prefix}_peak_mem_mb'] = round(peak / 2 ** 20, 1)
        self._release()

    def time(self, steps: int) -> None:
        self._set_mode()
        self.step_times += _time_steps(self.step, self.device, steps)
        self._release()

    def record(self) -> None:
        timing = Timing(self.batch_size, self.step_times)
        self.row.update({
            f'{self.prefix}_samples_per_sec': round(timing.samples_per_sec, 2),
            f'{self.prefix}_step_time': round(timing.median * 1e3, 3),
            f'{self.prefix}_step_time_iqr': round(timing.iqr * 1e3, 3),
            f'{self.prefix}_batch_size': self.batch_size,
            f'{self.prefix}_img_size': self.x.shape[-1],
        })


class _InferenceRunner(_Runner):
    def _set_mode(self) -> None:
        self.module.eval()

    def step(self) -> None:
        with torch.inference_mode(), self.autocast():
            self.model(self.x)


class _TrainRunner(_Runner):
    """timm's training benchmark step: SGD, cross-entropy on random targets, fp16 with a loss scaler."""

    def __init__(self, row: Dict, model: nn.Module, settings: BenchSettings, input_size, num_classes: int):
        super().__init__(row, 'train', model, settings, input_size)
        self.target = torch.randint(0, max(num_classes, 1), (self.batch_size,), device=self.device)
        self.optimizer = create_optimizer_v2(self.module, 'sgd', lr=1e-4)
        self.loss_fn = nn.CrossEntropyLoss()
        fp16 = settings.precision == 'amp_fp16' and self.device.type == 'cuda'
        self.scaler = NativeScaler(device=self.device.type) if fp16 else None

    def _set_mode(self) -> None:
        self.module.train()

    def _release(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss_fn(self.model(self.x), self.target)
        if self.scaler is not None:
            self.scaler(loss, self.optimizer)
        else:
            loss.backward()
            self.optimizer.step()


# --------------------------------------------------------------------------------------------- runs

@dataclass
class BenchmarkResult:
    rows: List[Dict]
    meta: Dict = field(default_factory=dict)

    @property
    def errors(self) -> List[Dict]:
        return [r for r in self.rows if r.get('error')]


ProgressFn = Callable[[int, int, str], None]  # (done, total, what is running now)
# what building or running one model may raise (out of memory included) without ending the whole run
_MODEL_ERRORS = (RuntimeError, ValueError, TypeError, AssertionError)


def _describe(error: Exception) -> str:
    return f'{type(error).__name__}: {error}'.splitlines()[0]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _Session:
    """Builds, profiles, warms up and times the models of one run, reporting progress as it goes."""

    def __init__(self, specs: Sequence[ModelSpec], settings: BenchSettings, progress: Optional[ProgressFn],
                 publish: Callable[[List[Dict]], None]):
        self.specs, self.settings = list(specs), settings
        self.progress = progress or (lambda done, total, message: None)
        self.publish = publish  # called with all rows so far whenever they gain measurements
        self.rows: List[Dict] = []
        timed = (len(settings.forms) if settings.inference else 0) + int(settings.train)
        self.per_model = 1 + timed + settings.rounds * timed  # build/profile, warm-ups, rounds
        self.total, self.done = len(self.specs) * self.per_model, 0

    def _tick(self, message: str, units: int = 1) -> None:
        self.done += units
        self.progress(self.done, self.total, message)

    def _prepare(self, spec: ModelSpec) -> Tuple[List[Dict], List[_Runner]]:
        """Rows (one per form) with parameters and FLOPs, and the warmed-up runners of one model."""
        s = self.settings
        self.progress(self.done, self.total, f'{spec.name}: build and count FLOPs')
        model = timm.create_model(
            spec.name, pretrained=False, in_chans=3, num_classes=s.num_classes, drop_rate=0.0).to(s.device)
        # the training input size, not timm's larger `test_input_size`, so that references and the zoo
        # run at the same resolution (and their GMACs are the published ones)
        size = s.img_size
        input_size = (3, size, size) if size else tuple(resolve_model_data_config(model)['input_size'])
        top1 = published_top1(model.pretrained_cfg)
        rows, runners = [], []
        for form in s.forms:
            form_model = reparameterize_model(model) if form == 'deploy' else model
            row = dict(model=spec.name, source=spec.source, form=form, infer_img_size=input_size[-1],
                       param_count=round(count_params(form_model) / 1e6, 3),
                       param_count_nonzero=round(count_nonzero_params(form_model) / 1e6, 3))
            if s.flops:
                flops = count_flops(form_model, input_size)
                nonzero_gmacs = flops.gmacs - zero_weight_macs(form_model, input_size) / 1e9
                row.update(infer_gmacs=round(flops.gmacs, 4), infer_gmacs_nonzero=round(nonzero_gmacs, 4),
                           infer_macts=round(flops.macts, 2),
                           infer_elementwise_gops=round(flops.elementwise_gops, 4),
                           flops_not_counted=flops.not_counted_summary())
            row['top1'] = top1
            rows.append(row)
            if s.inference:
                # the training runner updates `model`: the 'train' form's inference gets its own copy
                runner_model = copy.deepcopy(model) if form == 'train' and s.train else form_model
                runners.append(_InferenceRunner(row, 'infer', runner_model, s, input_size))
        self._tick(f'{spec.name}: built')
        if s.train:
            # training always runs the training form; with both forms it reports on the 'train' row
            row = next((r for r in rows if r['form'] == 'train'), rows[0])
            runners.append(_TrainRunner(row, model, s, input_size, model.num_classes))
        working = []
        for runner in runners:
            self.progress(self.done, self.total, f'{spec.name}: warm-up {runner.label}')
            try:
                runner.warm_up()
            except _MODEL_ERRORS as e:  # e.g. training at batch 1 with BatchNorm: keep the other workloads
                failure = f'{runner.prefix}: {_describe(e)}'
                runner.row['error'] = '; '.join(filter(None, [runner.row.get('error'), failure]))
                self._tick(f'{spec.name}: {runner.label} failed', 1 + s.rounds)
                continue
            working.append(runner)
            self._tick(f'{spec.name}: warmed up {runner.label}')
        return rows, working

    def _measure_group(self, specs: Sequence[ModelSpec]) -> None:
        active = []
        for spec in specs:
            start = self.done
            try:
                model_rows, runners = self._prepare(spec)
            except _MODEL_ERRORS as e:  # keep the other models' results
                self.rows.append(dict(model=spec.name, source=spec.source, error=_describe(e)))
                self._tick(f'{spec.name}: failed', start + self.per_model - self.done)
                continue
            self.rows += model_rows
            active += runners
            self.publish(self.rows)
        for r in range(self.settings.rounds):
            for runner in active:
                message = f"{runner.row['model']}: {runner.label} round {r + 1}/{self.settings.rounds}"
                self.progress(self.done, self.total, message)
                runner.time(self.settings.iters)
                self._tick(message)
            for runner in active:
                runner.record()  # from all steps so far: a killed run still leaves its completed rounds
            if active:
                self.publish(self.rows)

    def run(self) -> List[Dict]:
        groups = [self.specs] if self.settings.interleave else [[spec] for spec in self.specs]
        for group in groups:
            self._measure_group(group)  # runners go out of scope (and free memory) per group
        return self.rows


def _add_ratios(rows: List[Dict], baseline: str) -> None:
    """`<prefix>_samples_per_sec_ratio` = a row's samples/s over the baseline model's (same run, same form)."""
    for prefix in ('infer', 'train'):
        key = f'{prefix}_samples_per_sec'
        bases = [r for r in rows if r['model'] == baseline and r.get(key)]
        for row in rows:
            base = next((b for b in bases if b.get('form') == row.get('form')), bases[0] if bases else None)
            if base is not None and row.get(key):
                row[f'{key}_ratio'] = round(row[key] / base[key], 3)


def run_benchmark(
        specs: Sequence[ModelSpec],
        settings: BenchSettings,
        baseline: Optional[str] = None,
        progress: Optional[ProgressFn] = None,
        on_update: Optional[Callable[[BenchmarkResult], None]] = None,
) -> BenchmarkResult:
    """Measure `specs` side by side. `baseline` (default: the first timm model) anchors the speed ratios.

    `progress(done, total, message)` follows the work; `on_update(partial_result)` receives the results so
    far (meta `complete` False) after each model is profiled and after each timing round.
    """
    if baseline is None:
        baseline = next((s.name for s in specs if s.source == 'timm'), None)
    if baseline is not None and baseline not in [s.name for s in specs]:
        hint = did_you_mean(baseline, [s.name for s in specs])
        raise ValueError(f"baseline '{baseline}' is not among the benchmarked models{hint}")
    torch.manual_seed(0)
    started = time.time()

    def result(rows: List[Dict], complete: bool) -> BenchmarkResult:
        if baseline is not None:
            _add_ratios(rows, baseline)
        return BenchmarkResult(rows, _meta(settings, baseline, started, complete))

    def publish(rows: List[Dict]) -> None:
        if on_update is not None:
            on_update(result(copy.deepcopy(rows), complete=False))

    with layer_backends(depthwise=settings.depthwise_backend, ska=settings.ska_backend):
        rows = _Session(specs, settings, progress, publish).run()
    return result(rows, complete=True)


def describe_run(meta: Dict) -> str:
    """'<device>, <precision>, batch <n>, <layout>[, torch.compile]': what every figure of a run depends on."""
    s = meta.get('settings', {})
    layout = 'channels_last' if s.get('channels_last') else 'NCHW'
    compiled = ', torch.compile' if s.get('compile') else ''
    device = meta.get('device_name', s.get('device', ''))
    return f"{device}, {s.get('precision')}, batch {s.get('batch_size')}, {layout}{compiled}"


def _meta(settings: BenchSettings, baseline: Optional[str], started: float, complete: bool) -> Dict:
    return dict(
        complete=complete, settings=asdict(settings), baseline=baseline,
        device_name=device_name(torch.device(settings.device)), threads=torch.get_num_threads(),
        torch=torch.__version__, timm=timm.__version__, lkconv=__version__,
        date=time.strftime('%Y-%m-%d %H:%M:%S'), seconds=round(time.time() - started, 1),
        flop_convention=FLOP_CONVENTION, timing=TIMING_METHOD,
        param_count='millions, of the form in the row',
        nonzero='param_count_nonzero / infer_gmacs_nonzero: without the exact zeros of weight matrices and '
                'kernels (2+ dims) and the multiply-accumulates of those zero conv/linear weights, as sparse '
                'models (SLaK) publish their counts',
        train_columns='always measured on the training form (SGD, cross-entropy, random targets)',
        peak_mem='CUDA only: peak allocated during warm-up beyond what was allocated before, plus the '
                 "model's parameters, buffers and input batch",
    )


# ------------------------------------------------------------------------------------------ outputs

# timm's benchmark.py names first, then what this benchmark adds
CSV_COLUMNS = (
    'model', 'source', 'form', 'param_count', 'param_count_nonzero', 'infer_img_size', 'infer_gmacs',
    'infer_gmacs_nonzero', 'infer_macts',
    'infer_batch_size', 'infer_samples_per_sec', 'infer_step_time', 'infer_step_time_iqr',
    'infer_samples_per_sec_ratio', 'infer_peak_mem_mb', 'train_img_size', 'train_batch_size',
    'train_samples_per_sec', 'train_step_time', 'train_step_time_iqr', 'train_samples_per_sec_ratio',
    'train_peak_mem_mb', 'infer_elementwise_gops', 'flops_not_counted', 'top1', 'error',
)


def write_results(result: BenchmarkResult, out_dir, name: str = 'benchmark') -> List[Path]:
    """Write `<name>.csv` (one row per model and form) and `<name>.json` (meta + rows) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    present = {k for row in result.rows for k in row}
    columns = [c for c in CSV_COLUMNS if c in present] + sorted(present - set(CSV_COLUMNS))
    csv_path, json_path = out_dir / f'{name}.csv', out_dir / f'{name}.json'
    atomic_write_text(csv_path, csv_text(result.rows, columns))
    atomic_write_text(json_path, json.dumps(dict(meta=result.meta, results=result.rows), indent=2) + '\n')
    return [csv_path, json_path]


def _fmt(value, spec: str) -> str:
    return '-' if value is None or value == '' else format(value, spec)


def format_table(result: BenchmarkResult) -> str:
    """A fixed-width text table of the rows, with only the columns that hold data."""
    baseline = result.meta.get('baseline') or 'baseline'
    columns = [  # header, key, format
        ('model', 'model', 's'), ('form', 'form', 's'), ('img', 'infer_img_size', 'd'),
        ('params M', 'param_count', '.2f'), ('non-zero M', 'param_count_nonzero', '.2f'),
        ('GMACs', 'infer_gmacs', '.3f'), ('non-zero GMACs', 'infer_gmacs_nonzero', '.3f'),
        ('elementwise G', 'infer_elementwise_gops', '.3f'),
        ('infer img/s', 'infer_samples_per_sec', '.1f'), ('infer ms', 'infer_step_time', '.2f'),
        ('IQR ms', 'infer_step_time_iqr', '.2f'), (f'x {baseline}', 'infer_samples_per_sec_ratio', '.2f'),
        ('train img/s', 'train_samples_per_sec', '.1f'), ('train ms', 'train_step_time', '.2f'),
        ('IQR ms', 'train_step_time_iqr', '.2f'), (f'x {baseline}', 'train_samples_per_sec_ratio', '.2f'),
        ('infer MB', 'infer_peak_mem_mb', '.0f'), ('train MB', 'train_peak_mem_mb', '.0f'),
        ('top-1', 'top1', '.2f'),
    ]
    rows = [r for r in result.rows if 'param_count' in r]  # built, possibly with a failed workload
    columns = [c for c in columns if any(r.get(c[1]) not in (None, '') for r in rows)]
    # the non-zero counts only where some model has zero weights (a sparse-trained checkpoint)
    dense = {'param_count_nonzero': 'param_count', 'infer_gmacs_nonzero': 'infer_gmacs'}
    columns = [c for c in columns if c[1] not in dense or any(r.get(c[1]) != r.get(dense[c[1]]) for r in rows)]
    cells = [[h for h, _, _ in columns]] + [[_fmt(r.get(k), f) for _, k, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(cells):
        lines.append('  '.join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append('  '.join('-' * w for w in widths))
    for r in result.rows:
        if r.get('flops_not_counted'):
            lines.append(f"{r['model']} ({r.get('form')}): not counted in FLOPs: {r['flops_not_counted']}")
        if r.get('error'):
            lines.append(f"{r['model']}{' (' + r['form'] + ')' if r.get('form') else ''}: FAILED: {r['error']}")
    return '\n'.join(lines)
