"""`make gpu-check`: everything lkconv promises on a GPU, verified and measured in one bounded run.

    python -m lkconv.bench.gpu_check --out DIR             # on a CUDA GPU, at most --budget-s (420 s)
    python -m lkconv.bench.gpu_check --smoke --out DIR     # CPU: tiny shapes, kernels interpreted

The sections (`lkconv.bench.gpu_sections`) run one after another, each in worker processes of its own:
a crash (a kernel that kills the CUDA context, say) costs the item that crashed, not the run, and the
remaining items continue in a fresh worker. Kernel checks run in several workers at once, which share
the GPU and compile in parallel; everything that is timed runs alone.

Time is bounded by construction: each section has a deadline (the budget, less a reserve for writing the
report, split by the sections' weights; time a section leaves unused passes to the next). A worker
starts no item after its deadline and is killed at it; every item not done is reported as skipped with
the reason. `--sections` runs a subset with the whole budget (e.g. a rerun of what ran out of time).

Files written to --out (never more than eight): gpu_check.json (everything), gpu_check.md (tables to paste
into docs/benchmarks.md), kernels.json (the speed-up rows for `lkconv.kernels.selection.add_speedups`),
gpu_check.log (all output), kernel_speed.png and throughput.png. The exit status is 1 if any check
failed, 0 otherwise (skipped items are listed, not failures).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, TextIO

from ..cli_args import unwritable_reason
from .gpu_sections import SECTIONS, CheckFailed, CheckSettings, Section

__all__ = ['main', 'run_sections', 'DEFAULT_BUDGET_S', 'SMOKE_BUDGET_S']

DEFAULT_BUDGET_S = 420  # 7 minutes on the GPU, compilation and warm-up included
SMOKE_BUDGET_S = 1200
REPORT_RESERVE_S = 10  # kept back from the sections for writing the report
MAX_RESTARTS = 3  # fresh workers a section may need after crashes that made no progress
OUTPUT_FILES = ('gpu_check.json', 'gpu_check.md', 'kernels.json', 'gpu_check.log', 'kernel_speed.png',
                'throughput.png')
_CONTEXT_LOST = ('illegal memory access', 'unspecified launch failure', 'device-side assert', 'CUDA error',
                 'misaligned address', 'an illegal instruction')


# ------------------------------------------------------------------------------------------- worker

def _describe(error: BaseException) -> str:
    return f'{type(error).__name__}: {error}'.strip().splitlines()[0]


def run_worker(job_path: Path) -> int:
    """Run one worker's items of one section, appending an event per item to the job's records file."""
    job = json.loads(job_path.read_text())
    section = _section(job['section'])
    settings = CheckSettings(**job['settings'])
    with open(job['records'], 'a') as records:
        def emit(**event) -> None:
            records.write(json.dumps(event, default=str) + '\n')
            records.flush()

        try:
            state = section.prepare(settings)
        except Exception as e:  # every item needs the set-up
            traceback.print_exc()
            for item in job['items']:
                emit(event='failed', id=item['id'], error=f'set-up failed: {_describe(e)}')
            return 1
        for item in job['items']:
            if time.time() >= job['deadline']:
                emit(event='skipped', id=item['id'], reason='time budget: not reached')
                continue
            emit(event='start', id=item['id'])
            began = time.time()
            try:
                record = section.run(item, state, settings)
            except CheckFailed as e:
                emit(event='failed', id=item['id'], error=str(e), record=e.record, seconds=time.time() - began)
            except Exception as e:
                print(f'{section.name}: {item["id"]} raised:', flush=True)
                traceback.print_exc()
                sys.stderr.flush()
                emit(event='failed', id=item['id'], error=_describe(e), seconds=time.time() - began)
                if any(marker in str(e) for marker in _CONTEXT_LOST):
                    return 3  # this process's CUDA context is gone: the rest needs a fresh worker
            else:
                emit(event='done', id=item['id'], record=record, seconds=time.time() - began)
    return 0


def _section(name: str) -> Section:
    """A section by name, or `module:attribute` for one defined elsewhere."""
    if ':' not in name:
        return SECTIONS[name]
    import importlib
    module, attribute = name.split(':')
    return getattr(importlib.import_module(module), attribute)


# ------------------------------------------------------------------------------------------- parent

class _Worker:
    def __init__(self, section: str, settings: CheckSettings, items: List[Dict], deadline: float, folder: Path,
                 log: TextIO, env: Dict[str, str]):
        folder.mkdir(parents=True, exist_ok=True)
        self.records = folder / 'records.jsonl'
        job = folder / 'job.json'
        job.write_text(json.dumps(dict(section=section, settings=asdict(settings), items=items, deadline=deadline,
                                       records=str(self.records))))
        self.process = subprocess.Popen([sys.executable, '-m', 'lkconv.bench.gpu_check', '--worker', str(job)],
                                        stdout=log, stderr=subprocess.STDOUT, env=env)
        self.killed = False

    def events(self) -> List[Dict]:
        if not self.records.is_file():
            return []
        return [json.loads(line) for line in self.records.read_text().splitlines() if line.strip()]


def _wait(workers: Sequence[_Worker], deadline: float) -> None:
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
            worker.killed = True


def _worker_env(settings: CheckSettings) -> Dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the lkconv package
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [root, env.get('PYTHONPATH')]))
    if settings.smoke:
        env['TRITON_INTERPRET'] = '1'  # kernels run in Triton's CPU interpreter
    return env


def _split(items: List[Dict], count: int) -> List[List[Dict]]:
    """`count` shares of the items for parallel workers. Items of one `group` (e.g. those that compile the
    same kernels) stay together; every share keeps the plan's order."""
    groups: Dict[str, List[Dict]] = {}
    for item in items:
        groups.setdefault(item.get('group', item['id']), []).append(item)
    shares: List[List[Dict]] = [[] for _ in range(count)]
    for group in sorted(groups.values(), key=len, reverse=True):
        min(shares, key=len).extend(group)
    order = {item['id']: i for i, item in enumerate(items)}
    return [sorted(share, key=lambda item: order[item['id']]) for share in shares if share]


def run_section(section_name: str, settings: CheckSettings, items: List[Dict], deadline: float, workdir: Path,
                log: TextIO, workers: int = 1) -> Dict:
    """Run a section's planned items in worker processes until done or `deadline`; its report entry."""
    began = time.time()
    outcome: Dict[str, Dict] = {}
    for item in items:
        if item.get('skip'):
            outcome[item['id']] = dict(event='skipped', id=item['id'], reason=item['skip'])
    pending = [item for item in items if item['id'] not in outcome]
    env, launches, restarts = _worker_env(settings), 0, 0
    while pending and time.time() < deadline and restarts <= MAX_RESTARTS:
        group = [_Worker(section_name, settings, share, deadline, workdir / section_name / f'worker{launches + i}',
                         log, env) for i, share in enumerate(_split(pending, workers))]
        launches += len(group)
        _wait(group, deadline)
        for worker in group:
            started = None
            for event in worker.events():
                if event['event'] == 'start':
                    started = event['id']
                else:
                    outcome[event['id']] = event
                    started = None if started == event['id'] else started
            if started is not None:  # the item in flight when the worker ended
                reason = 'stopped at the time limit' if worker.killed else \
                    f'the worker process died (exit status {worker.process.returncode}; see gpu_check.log)'
                outcome[started] = dict(event='skipped' if worker.killed else 'failed', id=started,
                                        error=reason, reason=reason)
        progress = len(pending) - len([i for i in pending if i['id'] not in outcome])
        pending = [item for item in pending if item['id'] not in outcome]
        restarts += 0 if progress else 1
    for item in pending:
        reason = 'time budget: not reached' if time.time() >= deadline else 'not run: its workers kept failing'
        outcome[item['id']] = dict(event='skipped', id=item['id'], reason=reason)
    ordered = [outcome[item['id']] for item in items]
    results = [dict(e['record'], id=e['id'], seconds=round(e.get('seconds', 0), 2)) for e in ordered
               if e['event'] == 'done']
    failures = [dict(id=e['id'], error=e['error'], record=e.get('record')) for e in ordered if e['event'] == 'failed']
    skipped = [dict(id=e['id'], reason=e['reason']) for e in ordered if e['event'] == 'skipped']
    status = 'failed' if failures else ('passed' if not skipped else ('skipped' if not results else 'partial'))
    return dict(title=_section(section_name).title, status=status,
                seconds=round(time.time() - began, 1), time_limit_s=round(deadline - began, 1), workers=workers,
                counts=dict(done=len(results), failed=len(failures), skipped=len(skipped)), results=results,
                failures=failures, skipped=skipped)


def run_sections(names: Sequence[str], settings: CheckSettings, budget_s: float, workdir: Path, log: TextIO,
                 on_section=None) -> Dict[str, Dict]:
    """Each section in turn, with a deadline from the budget and the weights; `on_section(name, report)`."""
    start = time.time()
    usable = max(1.0, budget_s - REPORT_RESERVE_S)
    weights = [_section(n).weight for n in names]
    reports: Dict[str, Dict] = {}
    for i, name in enumerate(names):
        deadline = start + usable * sum(weights[:i + 1]) / sum(weights)
        section = _section(name)
        _note(log, f'{name}: planning')
        try:
            items = section.plan(settings)
        except Exception as e:
            traceback.print_exc(file=log)
            reports[name] = dict(title=section.title, status='failed', seconds=0, time_limit_s=0, workers=0,
                                 counts=dict(done=0, failed=1, skipped=0), results=[],
                                 failures=[dict(id='plan', error=f'planning failed: {_describe(e)}')], skipped=[])
        else:
            _note(log, f'{name}: {len(items)} items, {deadline - time.time():.0f} s')
            reports[name] = run_section(name, settings, items, deadline, workdir, log, section.workers(settings))
        report = reports[name]
        _note(log, f'{name}: {report["status"]} ({report["counts"]["done"]} done, {report["counts"]["failed"]} '
                   f'failed, {report["counts"]["skipped"]} skipped) in {report["seconds"]:.0f} s')
        if on_section is not None:
            on_section(name, report)
    return reports


def _note(log: TextIO, message: str) -> None:
    line = f'[gpu-check {time.strftime("%H:%M:%S")}] {message}'
    print(line, file=sys.stderr, flush=True)
    log.write(line + '\n')
    log.flush()


# -------------------------------------------------------------------------------------- command line

def _output_folder(path: Optional[str]) -> Path:
    """An empty (or new) folder to write into; never one holding anything already."""
    if path is None:
        path = f'output/gpu_check-{time.strftime("%Y%m%d-%H%M%S")}'
    folder = Path(path).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SystemExit(f"gpu-check: '{folder}' is not an empty folder; give --out a new or empty folder")
    reason = unwritable_reason(folder)
    if reason:
        raise SystemExit(f"gpu-check: cannot write to '{folder}' ({reason}); give --out a writable folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='python -m lkconv.bench.gpu_check',
                                description='Verify and measure lkconv on one CUDA GPU in one bounded run.')
    p.add_argument('--out', default=None, help='new or empty folder for the results '
                                               '(default: output/gpu_check-<date>-<time>)')
    p.add_argument('--smoke', action='store_true',
                   help='CPU check of the same code paths: tiny shapes, kernels under TRITON_INTERPRET=1, one step '
                        'per workload; CUDA-only steps are reported as skipped')
    p.add_argument('--budget-s', type=float, default=None,
                   help=f'wall-clock limit for all sections (default {DEFAULT_BUDGET_S}; {SMOKE_BUDGET_S} with --smoke)')
    p.add_argument('--sections', nargs='+', choices=list(SECTIONS), default=list(SECTIONS),
                   help='run only these sections (environment always runs)')
    p.add_argument('--compile-backend', default='inductor', help='torch.compile backend of the compiled runs')
    p.add_argument('--worker', type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker)
    import torch
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit('gpu-check: no CUDA device here; run it on a GPU machine, or add --smoke for the CPU check')
    if args.budget_s is not None and args.budget_s <= REPORT_RESERVE_S:
        raise SystemExit(f'gpu-check: --budget-s must be more than {REPORT_RESERVE_S} seconds')
    out = _output_folder(args.out)
    budget = args.budget_s or (SMOKE_BUDGET_S if args.smoke else DEFAULT_BUDGET_S)
    names = [n for n in SECTIONS if n == 'environment' or n in args.sections]
    command = 'python -m lkconv.bench.gpu_check ' + ' '.join(argv if argv is not None else sys.argv[1:])
    from .gpu_report import write_report
    workdir = Path(tempfile.mkdtemp(prefix='lkconv-gpu-check-'))
    started = time.time()
    try:
        settings = CheckSettings(device='cpu' if args.smoke else 'cuda', smoke=args.smoke, workdir=str(workdir),
                                 compile_backend=args.compile_backend)
        meta = dict(command=command.strip(), budget_s=budget, settings=asdict(settings), sections=names,
                    started=time.strftime('%Y-%m-%d %H:%M:%S'))
        with open(out / 'gpu_check.log', 'w') as log:
            reports: Dict[str, Dict] = {}

            def publish(name: str, report: Dict) -> None:  # results so far are on disk after every section
                reports[name] = report
                write_report(out, dict(meta, seconds=round(time.time() - started, 1)), reports, final=False)

            run_sections(names, settings, budget, workdir, log, on_section=publish)
            summary = write_report(out, dict(meta, seconds=round(time.time() - started, 1)), reports, final=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the scratch folder this run created
    print(summary)
    failed = sum(r['counts']['failed'] for r in reports.values())
    print(f'\nresults in {out}: ' + ', '.join(sorted(p.name for p in out.iterdir())))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
