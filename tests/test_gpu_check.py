"""`make gpu-check`: the orchestration (deadlines, crashes, skips) and the whole `--smoke` run on the CPU.

The smoke run is what CI can check of the GPU verification: the same sections and code paths on tiny
shapes, kernels under Triton's interpreter, torch.compile through aot_eager, with every CUDA-only step
reported as skipped with its reason.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lkconv.bench import gpu_check
from lkconv.bench.gpu_check import OUTPUT_FILES, run_sections
from lkconv.bench.gpu_sections import SECTIONS, SMOKE_E2E_MODELS, SMOKE_E2E_REFERENCES, SMOKE_KERNEL_MODELS, \
    CheckSettings
from lkconv.kernels import selection

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------- orchestration

@pytest.fixture
def fakes_importable(monkeypatch):
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [str(TESTS), os.environ.get('PYTHONPATH')])))


def _run(names, tmp_path, budget):
    settings = CheckSettings(device='cpu', smoke=True, workdir=str(tmp_path))
    with open(tmp_path / 'log', 'w') as log:
        return run_sections(names, settings, budget, tmp_path, log)


def test_a_section_stops_at_its_deadline_and_reports_what_it_did_not_reach(fakes_importable, tmp_path):
    began = time.time()
    report = _run(['gpu_check_fakes:SLEEPY'], tmp_path, budget=gpu_check.REPORT_RESERVE_S + 8)['gpu_check_fakes:SLEEPY']
    assert time.time() - began < 30  # the 60 s item was killed at the deadline
    assert [r['id'] for r in report['results']] == ['quick']
    assert report['skipped'] == [dict(id='slow', reason='stopped at the time limit'),
                                 dict(id='later', reason='time budget: not reached')]
    assert report['status'] == 'partial' and report['counts'] == dict(done=1, failed=0, skipped=2)


def test_failures_and_crashes_cost_one_item_each(fakes_importable, tmp_path):
    report = _run(['gpu_check_fakes:CRASHY'], tmp_path, budget=120)['gpu_check_fakes:CRASHY']
    assert [r['id'] for r in report['results']] == ['first', 'last']
    assert report['results'][0]['pid'] != report['results'][1]['pid']  # fresh workers after the crashes
    failures = {f['id']: f for f in report['failures']}
    assert list(failures) == ['dies', 'wrong', 'raises', 'cuda']
    assert 'worker process died (exit status 7' in failures['dies']['error']
    assert failures['wrong']['error'] == 'off by one' and failures['wrong']['record'] == dict(value=41)
    assert failures['raises']['error'] == 'ValueError: bad input'
    assert report['skipped'] == [dict(id='never', reason='not for this device')]
    assert report['status'] == 'failed'
    log = (tmp_path / 'log').read_text()
    assert 'ValueError: bad input' in log  # tracebacks go to the log


def test_command_line_refusals(tmp_path, monkeypatch, capsys):
    folder = tmp_path / 'results'
    folder.mkdir()
    (folder / 'mine.txt').write_text('keep')
    with pytest.raises(SystemExit, match='not an empty folder'):
        gpu_check.main(['--smoke', '--out', str(folder)])
    assert (folder / 'mine.txt').read_text() == 'keep' and len(list(folder.iterdir())) == 1
    with pytest.raises(SystemExit, match='--budget-s must be more than'):
        gpu_check.main(['--smoke', '--budget-s', '5', '--out', str(tmp_path / 'new')])
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit, match='no CUDA device here; .* --smoke'):
        gpu_check.main(['--out', str(tmp_path / 'other')])
    assert not (tmp_path / 'new').exists() and not (tmp_path / 'other').exists()


# ------------------------------------------------------------------------------------- smoke run

@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check') / 'results'
    began = time.time()
    result = subprocess.run([sys.executable, '-m', 'lkconv.bench.gpu_check', '--smoke', '--out', str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((out / 'gpu_check.json').read_text())
    return dict(out=out, report=report, sections=report['sections'], stdout=result.stdout,
                seconds=time.time() - began)


def test_smoke_run_writes_its_files_and_fails_nothing(smoke):
    assert sorted(p.name for p in smoke['out'].iterdir()) == sorted(OUTPUT_FILES)
    assert len(OUTPUT_FILES) <= 8
    assert list(smoke['sections']) == list(SECTIONS)
    for name, section in smoke['sections'].items():
        assert section['counts']['failed'] == 0, (name, section['failures'])
        assert section['counts']['done'] > 0, name
        for skipped in section['skipped']:
            assert 'time budget' not in skipped['reason'] and skipped['reason'], (name, skipped)
    assert smoke['report']['meta']['complete'] is True
    for png in ('kernel_speed.png', 'throughput.png'):
        assert (smoke['out'] / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'training: partial (3 done, 0 failed, 2 skipped)' in (smoke['out'] / 'gpu_check.log').read_text()


def test_smoke_environment(smoke):
    env = smoke['sections']['environment']['results'][0]
    for key in ('torch', 'timm', 'triton', 'cuda', 'cudnn', 'python', 'lkconv', 'device'):
        assert key in env
    assert env['torch'] == torch.__version__


def test_smoke_kernel_correctness_covers_every_geometry_dtype_and_layout(smoke):
    section = smoke['sections']['kernel_correctness']
    results = section['results']
    assert not section['skipped'] and all(r['ok'] for r in results)
    assert {(r['dtype'], r['layout']) for r in results} == \
        {(d, l) for d in ('float32', 'float16', 'bfloat16') for l in ('nchw', 'channels_last')}
    cases = {r['case'] for r in results}
    for geometry in ('13x13 ', '3x3 ', '5x5 ', '7x7 d2 ', '7x7 d3 ', '3x3 s2 ', '1x11 ', '11x1 ', 'ska 3x3'):
        assert any(c.startswith(geometry) for c in cases), geometry
    for r in results:
        assert r['max_error'] <= r['tolerance'] and set(r['errors']) >= {'out', 'grad_input', 'grad_weight'}


def test_smoke_kernel_speed_times_every_path_and_emits_selection_rows(smoke):
    results = smoke['sections']['kernel_speed']['results']
    for r in results:
        assert set(r['ms']) >= {'torch/nchw', 'torch/channels_last', 'triton/nchw', 'triton/channels_last'}, r
        assert all(v > 0 for v in r['ms'].values()) and 'speedup_vs_best_torch' in r
    table = json.loads((smoke['out'] / 'kernels.json').read_text())
    assert len(table['selection_rows']) == 2 * len(results)
    saved = dict(selection.DEPTHWISE_SPEEDUPS), dict(selection.SKA_SPEEDUPS)
    try:
        selection.add_speedups(table['selection_rows'])  # the format the selection table reads
        assert ('cpu', 'depthwise', 'bfloat16', 'channels_last', (13, 13), (1, 1), (1, 1)) in \
            selection.DEPTHWISE_SPEEDUPS
        assert ('cpu', 'ska', 'bfloat16', 'nchw', 3) in selection.SKA_SPEEDUPS
    finally:
        selection.DEPTHWISE_SPEEDUPS.clear()
        selection.DEPTHWISE_SPEEDUPS.update(saved[0])
        selection.SKA_SPEEDUPS.clear()
        selection.SKA_SPEEDUPS.update(saved[1])


def test_smoke_end_to_end_runs_eager_and_compiled_with_kernels_off_and_on(smoke):
    section = smoke['sections']['end_to_end']
    ran = {(r['model'], r['compile'].split(' ')[0], r['kernels']) for r in section['results']}
    for model in SMOKE_E2E_MODELS + SMOKE_E2E_REFERENCES:
        assert (model, 'eager', 'torch') in ran, model
    for model in SMOKE_KERNEL_MODELS:
        assert (model, 'eager', 'triton') in ran, model
    assert {(SMOKE_KERNEL_MODELS[0], 'torch.compile', 'torch'), (SMOKE_KERNEL_MODELS[0], 'torch.compile', 'triton'),
            (SMOKE_E2E_REFERENCES[0], 'torch.compile', 'torch')} <= ran
    for r in section['results']:
        assert r['train_samples_per_sec'] > 0 and r['infer_samples_per_sec'] > 0
        assert 'amp_bf16, batch 2, channels_last' in r['run']
    assert all('smoke' in s['reason'] for s in section['skipped'])  # kernels-on runs left out, said so


def test_smoke_training_path(smoke):
    section = smoke['sections']['training']
    by_id = {r['id']: r for r in section['results']}
    assert set(by_id) == {'amp bf16 + EMA + channels_last', 'stopped after epoch 2, resumed', 'torch.compile'}
    resumed = by_id['stopped after epoch 2, resumed']
    assert resumed['identical_weights'] and resumed['identical_summary'] and resumed['resumed']
    for r in by_id.values():
        assert r['steps'] == 32 and len(r['train_loss']) == 4
    skipped = {s['id']: s['reason'] for s in section['skipped']}
    assert set(skipped) == {'amp fp16 + loss scaler', 'torchrun 1 process, NCCL, SyncBN'}
    assert all('needs CUDA' in reason for reason in skipped.values())


def test_smoke_markdown_states_what_every_figure_depends_on(smoke):
    text = (smoke['out'] / 'gpu_check.md').read_text()
    for heading in ('## Sections', '## Environment', '## Targets', '## Kernel correctness', '## Kernel speed',
                    '## End to end', '## Training path', '## Skipped'):
        assert heading in text, heading
    assert 'bfloat16, batch 1, forward + input grad + weight grad, eager' in text
    assert 'amp_bf16, batch 2, channels_last' in text
    assert text in smoke['stdout']  # the summary is also what the command prints


def test_parallel_workers_keep_groups_together_and_the_plan_order():
    items = [dict(id=f'item{i}', group=f'kernel{i % 3}') for i in range(10)]
    shares = gpu_check._split(items, 2)
    assert sorted(i['id'] for share in shares for i in share) == sorted(i['id'] for i in items)
    for share in shares:
        assert [i['id'] for i in share] == [i['id'] for i in items if i in share]  # plan order kept
    owners = {i['group']: n for n, share in enumerate(shares) for i in share}
    assert all(owners[i['group']] == n for n, share in enumerate(shares) for i in share)
    assert len(gpu_check._split(items, 8)) == 3  # never more workers than groups
