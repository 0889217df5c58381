"""What `lkconv.bench.gpu_check` verifies and measures, one section per promise lkconv makes on a GPU.

A section plans its work as items (JSON-able dicts with an `id`, planned in the parent process), and a
worker process runs them one by one (`prepare` once, then `run` per item, which returns the item's
record). An item that cannot run in this setting carries a `skip` reason instead (e.g. a CUDA-only
step in a `--smoke` run on the CPU), so nothing is left out silently.

Sections, in the order they run:
  environment         GPU, SM count, driver, CUDA, cuDNN, torch, triton, timm; measured copy bandwidth
  kernel_correctness  Triton depthwise conv and SKA, forward and both gradients, against float64
                      PyTorch at every convolution the models run; fp32 / bf16 / fp16, NCHW / channels_last
  kernel_speed        forward+backward of every PyTorch path and of Triton at those convolutions (bf16);
                      roofline figures; the speed-up rows of the backend selection table
  end_to_end          training and inference throughput and peak memory of zoo models and timm
                      references (AMP bf16, channels_last), eager and torch.compile, kernels on and off
  training            the real `lkconv train` on CUDA: AMP bf16 with EMA, checkpoint and exact resume,
                      fp16 with the loss scaler, torch.compile, torchrun with NCCL and SyncBN
"""
import math
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .options import INTERPRETED_KERNEL_MODELS, KERNEL_MODELS
from . import kernels

__all__ = ['CheckSettings', 'Section', 'SECTIONS', 'KERNEL_MODELS', 'E2E_MODELS', 'E2E_REFERENCES']

# the models whose convolutions the kernel sections check and time
# end to end: zoo models (run with the kernels off and on) and timm references
E2E_MODELS = ('unireplknet_t', 'inceptionnext_tiny', 'van_b2', 'lsnet_t', 'fdconv_resnet50')
E2E_REFERENCES = ('convnext_tiny', 'resnet50')
# --smoke: the smallest model of each family, and small references
SMOKE_E2E_MODELS = ('unireplknet_a', 'inceptionnext_atto', 'van_b0', 'lsnet_t', 'fdconv_inceptionnext_atto')
SMOKE_E2E_REFERENCES = ('convnext_atto', 'resnet18')
# --smoke: the model that runs with the kernels on (interpreted kernels take a minute or more per model)
SMOKE_KERNEL_MODELS = ('inceptionnext_atto',)
# torch.compile is slow to build: compiled runs go in this order until the time budget ends
COMPILE_PRIORITY = ('unireplknet_t', 'convnext_tiny', 'inceptionnext_tiny', 'resnet50', 'van_b2', 'lsnet_t',
                    'fdconv_resnet50')


@dataclass(frozen=True)
class CheckSettings:
    """What a whole check run shares with every worker (JSON round trip through `asdict`)."""
    device: str  # 'cuda' or 'cpu' (smoke)
    smoke: bool
    workdir: str  # scratch space for the training runs; removed at the end
    compile_backend: str = 'inductor'

    @property
    def cuda(self) -> bool:
        return self.device == 'cuda'

    def cuda_only(self, what: str) -> Optional[str]:
        """The skip reason for a CUDA-only step, or None on CUDA."""
        return None if self.cuda else f'{what} needs CUDA (this is a {self.device} run)'


class Section:
    name = ''
    title = ''
    weight = 1.0  # share of the time budget

    def workers(self, settings: CheckSettings) -> int:
        return 1

    def plan(self, settings: CheckSettings) -> List[Dict]:
        raise NotImplementedError

    def prepare(self, settings: CheckSettings) -> Any:
        """Set-up a worker does once, before its first item."""
        return None

    def run(self, item: Dict, state: Any, settings: CheckSettings) -> Dict:
        raise NotImplementedError


class CheckFailed(Exception):
    """A check that ran and found a wrong result; `record` holds what it measured."""

    def __init__(self, message: str, record: Dict):
        super().__init__(message)
        self.record = record


def _triton_missing() -> Optional[str]:
    import importlib.util
    return None if importlib.util.find_spec('triton') else 'triton is not installed'


# ------------------------------------------------------------------------------------------ environment

class Environment(Section):
    name, title, weight = 'environment', 'Environment', 0.03

    def plan(self, settings):
        return [dict(id='environment')]

    def run(self, item, state, settings):
        import timm

        from .benchmark import device_name
        from ..version import __version__
        info = dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                    lkconv=__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    cpu=device_name(torch.device('cpu')), cpu_count=os.cpu_count())
        try:
            import triton
            info['triton'] = triton.__version__
        except ImportError:
            info['triton'] = None
        if not settings.cuda:
            info['device'] = f'cpu: {info["cpu"]}'
            return info
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, sm_count=props.multi_processor_count,
                    capability=f'sm{props.major}{props.minor}', memory_gib=round(props.total_memory / 2 ** 30, 1),
                    driver=_nvidia_smi('driver_version'), clocks_mhz=_nvidia_smi('clocks.sm,clocks.max.sm'),
                    copy_tb_per_s=round(_copy_bandwidth() / 1e12, 2))
        return info


def _nvidia_smi(fields: str) -> Optional[str]:
    try:
        out = subprocess.run(['nvidia-smi', f'--query-gpu={fields}', '--format=csv,noheader'],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _copy_bandwidth(gib: float = 2.0, repeats: int = 10) -> float:
    """Device-to-device copy, bytes read + written per second: the practical memory ceiling."""
    src = torch.empty(int(gib * 2 ** 30), dtype=torch.uint8, device='cuda').random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        dst.copy_(src)
    end.record()
    end.synchronize()
    return 2 * src.numel() * repeats / (start.elapsed_time(end) / 1e3)


# ------------------------------------------------------------------------------------------- kernels

def _kernel_cases(settings: CheckSettings) -> List[kernels.KernelCase]:
    if settings.smoke:
        return kernels.shrink_cases(kernels.model_cases(INTERPRETED_KERNEL_MODELS))
    return kernels.model_cases(KERNEL_MODELS)


class KernelCorrectness(Section):
    name, title, weight = 'kernel_correctness', 'Kernel correctness', 0.2

    def workers(self, settings):
        # items are independent: several processes share the GPU and compile kernels in parallel
        return max(1, min(8, (os.cpu_count() or 2) // 2)) if settings.cuda else 1

    def plan(self, settings):
        skip = _triton_missing()
        items = []
        for dtype in ('bfloat16', 'float16', 'float32'):  # bf16 first: the dtype the speed section times
            for layout in ('channels_last', 'nchw'):
                for seed, case in enumerate(_kernel_cases(settings)):
                    # a group compiles the same kernels: one worker runs it (see gpu_check._split)
                    items.append(dict(id=f'{case.label} {dtype} {layout}', case=asdict(case), dtype=dtype,
                                      layout=layout, seed=seed, skip=skip, group=f'{case.geometry} {dtype} {layout}'))
        return items

    def run(self, item, state, settings):
        case = kernels.KernelCase.from_dict(item['case'])
        record = kernels.check_case(case, item['dtype'], item['layout'], torch.device(settings.device),
                                    seed=item['seed'])
        record['models'] = list(case.models)
        if not record['ok']:
            raise CheckFailed(record['problem'], record)
        return record


class KernelSpeed(Section):
    name, title, weight = 'kernel_speed', 'Kernel speed', 0.14

    def plan(self, settings):
        skip = _triton_missing()
        return [dict(id=case.label, case=asdict(case), skip=skip) for case in _kernel_cases(settings)]

    def prepare(self, settings):
        if settings.cuda:
            torch.backends.cudnn.benchmark = True  # cuDNN's fastest algorithm for every PyTorch path
            return kernels.roofline_for(torch.cuda.get_device_name(0))
        return None

    def run(self, item, roofline, settings):
        case = kernels.KernelCase.from_dict(item['case'])
        timing = dict(batch=1, warmup=0, rounds=1) if settings.smoke else dict(batch=128, warmup=3, rounds=15)
        record = kernels.time_case(case, torch.device(settings.device), 'bfloat16', roofline=roofline, **timing)
        record['case_fields'] = item['case']
        return record


# ------------------------------------------------------------------------------------------ end to end

class EndToEnd(Section):
    name, title, weight = 'end_to_end', 'End-to-end throughput', 0.38

    def _settings(self, settings: CheckSettings, compiled: bool, backend: str):
        from .benchmark import BenchSettings
        size = dict(batch_size=2, img_size=64, warmup=1, iters=1, rounds=1) if settings.smoke else \
            dict(batch_size=128, img_size=224, warmup=3, iters=5, rounds=2)
        # in a smoke run aot_eager stands in for Inductor, whose CPU build takes minutes
        compile_backend = 'aot_eager' if settings.smoke else settings.compile_backend
        return BenchSettings(bench='both', device=settings.device, precision='amp_bf16', channels_last=True,
                             compile=compiled, compile_backend=compile_backend, flops=False,
                             depthwise_backend=backend, ska_backend=backend, **size)

    def plan(self, settings):
        zoo = SMOKE_E2E_MODELS if settings.smoke else E2E_MODELS
        references = SMOKE_E2E_REFERENCES if settings.smoke else E2E_REFERENCES
        triton_skip = _triton_missing()

        def runs(model: str, compiled: bool) -> List[Dict]:
            backends = ('torch', 'triton') if model in zoo else ('torch',)
            mode = 'compile' if compiled else 'eager'
            skip = dict(torch=None, triton=triton_skip)
            if settings.smoke and model not in SMOKE_KERNEL_MODELS:
                skip['triton'] = 'left out of smoke runs (minutes of interpreted kernels on a CPU); runs on CUDA'
            return [dict(id=f'{model} {mode} kernels {"on" if b == "triton" else "off"}', model=model,
                         compiled=compiled, backend=b, skip=skip[b]) for b in backends]

        items = [run for model in zoo + references for run in runs(model, False)]
        if settings.smoke:  # the compiled code path once for a zoo model and once for a reference
            compiled = (SMOKE_KERNEL_MODELS[0], references[0])
        else:
            compiled = [m for m in COMPILE_PRIORITY if m in zoo + references]
        return items + [run for model in compiled for run in runs(model, True)]

    def run(self, item, state, settings):
        from .benchmark import ModelSpec, describe_run, run_benchmark
        from ..zoo import list_models
        bench = self._settings(settings, item['compiled'], item['backend'])
        source = 'lkconv' if item['model'] in list_models() else 'timm'
        result = run_benchmark([ModelSpec(item['model'], source)], bench)
        row = result.rows[0]
        if row.get('error'):
            raise CheckFailed(row['error'], row)
        mode = f'torch.compile ({bench.compile_backend})' if item['compiled'] else 'eager'
        return dict(model=item['model'], source=source, compile=mode, kernels=item['backend'],
                    run=describe_run(result.meta), **{k: v for k, v in row.items() if k not in ('model', 'source')})


# --------------------------------------------------------------------------------------------- training

def write_synthetic_imagefolder(root: Path, classes: int = 4, per_class: int = 16, val_per_class: int = 4,
                                size: int = 64) -> Path:
    """A learnable image folder: class k brightens the k-th horizontal band of noise images."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in (('train', per_class), ('val', val_per_class)):
        for label in range(classes):
            folder = root / split / f'class{label}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 100, (size, size, 3))
                band = size // classes
                pixels[label * band:(label + 1) * band] += 120
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f'{i}.png')
    return root


_TINY_INCEPTIONNEXT = 'model.kwargs={dims: [8, 16, 32, 64], depths: [1, 1, 1, 1]}'


@dataclass(frozen=True)
class _TrainRun:
    id: str
    overrides: Sequence[str]
    cuda_only: Optional[str] = None  # what needs CUDA, for the skip reason
    torchrun: bool = False
    resumes: bool = False  # repeat the first run in two parts; it must end identical


# 4 epochs of 8 steps (64 images, batch 8): about 30 optimizer steps per run
_BF16_EMA = ['train.amp=true', 'train.amp_dtype=bfloat16', 'train.model_ema=true', 'train.model_ema_decay=0.9',
             'train.channels_last=true']
_TRAIN_RUNS = (
    _TrainRun('amp bf16 + EMA + channels_last', _BF16_EMA),
    _TrainRun('stopped after epoch 2, resumed', _BF16_EMA, resumes=True),
    _TrainRun('amp fp16 + loss scaler', ['train.amp=true', 'train.amp_dtype=float16'], cuda_only='the fp16 loss scaler'),
    _TrainRun('torch.compile', ['train.amp=true', 'train.amp_dtype=bfloat16', 'train.compile=COMPILE_BACKEND']),
    _TrainRun('torchrun 1 process, NCCL, SyncBN', ['train.amp=true', 'train.sync_bn=true', 'train.dist_backend=nccl'],
              cuda_only='NCCL and SyncBatchNorm', torchrun=True),
)


class Training(Section):
    name, title, weight = 'training', 'Training path', 0.25

    def plan(self, settings):
        return [dict(id=run.id, run=i, skip=settings.cuda_only(run.cuda_only) if run.cuda_only else None)
                for i, run in enumerate(_TRAIN_RUNS)]

    def prepare(self, settings):
        root = Path(settings.workdir) / 'training'
        size = 32 if settings.smoke else 64
        data = write_synthetic_imagefolder(root / 'data', size=size)
        config = root / 'config.yaml'  # the model; everything else is given as overrides
        config.write_text('model:\n  name: inceptionnext_atto\n  num_classes: 4\n')
        base = [f'data.dir={data}', 'data.val_split=val', f'data.img_size={size}', 'data.crop_pct=1.0',
                'data.batch_size=8', 'data.workers=2', 'train.epochs=4', 'train.deterministic=true', 'sched.warmup_epochs=1', 'optim.lr=2e-3',
                f'train.device={settings.device}', f'output.dir={root / "runs"}', 'output.log_interval=4']
        if settings.smoke:
            base.append(_TINY_INCEPTIONNEXT)
        return dict(runs=root / 'runs', base=['-c', str(config)] + base)

    def run(self, item, state, settings):
        from timm.utils import NativeScaler
        spec = _TRAIN_RUNS[item['run']]
        compile_backend = 'aot_eager' if settings.smoke else settings.compile_backend
        overrides = state['base'] + [o.replace('COMPILE_BACKEND', compile_backend) for o in spec.overrides] + \
            [f'output.experiment=run{item["run"]}']
        if spec.resumes:
            return self._resume(overrides, state['runs'] / 'run0')
        folder = _train(overrides, torchrun=spec.torchrun)
        record = _run_record(folder)
        if 'train.amp_dtype=float16' in spec.overrides:
            record['loss_scaler_saved'] = NativeScaler.state_dict_key in _checkpoint(folder)
            if not record['loss_scaler_saved']:
                raise CheckFailed('the checkpoint holds no loss-scaler state', record)
        if spec.torchrun:
            log = (folder / 'train.log').read_text()
            record.update(backend_nccl='backend nccl' in log, sync_bn=next(
                (line.split('SyncBatchNorm: ')[1] for line in log.splitlines() if 'SyncBatchNorm: ' in line), None))
            if not (record['backend_nccl'] and record['sync_bn']):
                raise CheckFailed('the run did not use NCCL and SyncBatchNorm', record)
        return record

    @staticmethod
    def _resume(overrides: List[str], straight: Path) -> Dict:
        if not (straight / 'last.pth.tar').is_file():
            raise RuntimeError('the uninterrupted run (the item before) did not finish: nothing to compare with')
        _train(overrides + ['train.stop_epoch=2'])
        folder = _train(overrides, resume=True)
        record = _run_record(folder)
        a, b = _checkpoint(straight), _checkpoint(folder)
        keys = ('state_dict', 'state_dict_ema')
        differing = [f'{k}.{n}' for k in keys for n, t in a[k].items() if not torch.equal(t, b[k][n])]
        same_summary = _summary(straight, timing=False) == _summary(folder, timing=False)
        record.update(resumed='resumed after epoch 2' in (folder / 'train.log').read_text(),
                      identical_weights=not differing, identical_summary=same_summary)
        if differing or not same_summary or not record['resumed']:
            record['max_weight_difference'] = max(
                (a[k][n].float() - b[k][n].float()).abs().max().item() for k in keys for n in a[k])
            raise CheckFailed(f'the resumed run differs from the uninterrupted one ({len(differing)} tensors'
                              f'{", summary.csv" if not same_summary else ""})', record)
        return record


def _train(overrides: List[str], resume: bool = False, torchrun: bool = False) -> Path:
    """`lkconv train` in a child process (optionally under torchrun); returns the run folder."""
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', '-m'] \
        if torchrun else [sys.executable, '-m']
    command = launcher + ['lkconv.cli', 'train'] + (['--resume'] if resume else []) + overrides
    print('$ ' + ' '.join(command), flush=True)
    result = subprocess.run(command, stdout=sys.stdout, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f'lkconv train exited with status {result.returncode} (its output is in the log)')
    values = dict(o.split('=', 1) for o in overrides if '=' in o)
    return Path(values['output.dir']) / values['output.experiment']


def _summary(folder: Path, timing: bool = True) -> List[Dict]:
    import csv
    with open(folder / 'summary.csv', newline='') as f:
        return [{k: v for k, v in row.items() if timing or k != 'img_per_sec'} for row in csv.DictReader(f)]


def _checkpoint(folder: Path) -> Dict:
    return torch.load(folder / 'last.pth.tar', map_location='cpu', weights_only=True)


def _run_record(folder: Path) -> Dict:
    rows = _summary(folder)
    losses = [float(r['train_loss']) for r in rows]
    record = dict(epochs=len(rows), steps=_checkpoint(folder).get('num_updates'),
                  train_loss=[round(v, 4) for v in losses], eval_top1=float(rows[-1]['eval_top1']),
                  img_per_sec=float(rows[-1]['img_per_sec']))
    if not all(math.isfinite(v) for v in losses):
        raise CheckFailed('non-finite training loss', record)
    return record


SECTIONS: Dict[str, Section] = {s.name: s for s in (Environment(), KernelCorrectness(), KernelSpeed(), EndToEnd(),
                                                     Training())}
