"""`lkconv bench`: model selection, side-by-side measurement, output files with timm's columns, plots."""
import csv
import json

import pytest
import timm

import lkconv
from lkconv.bench.benchmark import (
    BenchmarkResult, BenchSettings, ModelSpec, Timing, format_table, published_top1, resolve_models,
    run_benchmark, write_results,
)
from lkconv.cli import main
from helpers import DEPLOY_PARAM_COUNTS, PARAM_COUNTS

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
TINY = ['--img-size', '32', '-b', '2', '--warmup', '0', '--iters', '1', '--rounds', '2']


def test_resolve_names_wildcards_families_and_all():
    assert [s.name for s in resolve_models(['all'])] == lkconv.list_models()
    assert [s.name for s in resolve_models(['lsnet'])] == timm.list_models(module='lsnet')
    specs = resolve_models(['van_b[01]', 'resnet18', 'unireplknet_s.in22k', 'van_b0'])
    assert specs == [ModelSpec('van_b0', 'lkconv'), ModelSpec('van_b1', 'lkconv'), ModelSpec('resnet18', 'timm'),
                     ModelSpec('unireplknet_s.in22k', 'lkconv')]
    assert [s.source for s in resolve_models(['inception_next_t*'])] == ['timm']  # not in the zoo: timm's
    with pytest.raises(ValueError, match="no model matches 'unireplknet_tt'.*unireplknet_t"):
        resolve_models(['unireplknet_tt'])
    assert [s.name for s in resolve_models(['van_b0.*'])] == ['van_b0.in1k']  # a wildcard over pretrained tags
    with pytest.raises(ValueError, match=r"no model matches 'unireplknet_a\.in1kk'; did you mean: unireplknet_a\.in1k"):
        resolve_models(['unireplknet_a.in1kk'])  # an unknown tag is not a model


def test_settings_are_validated():
    with pytest.raises(ValueError, match='precision'):
        BenchSettings(precision='fp8')
    with pytest.raises(ValueError, match='forms'):
        BenchSettings(forms=('fused',))


def test_timing_statistics():
    timing = Timing(batch_size=4, step_times=[0.4, 0.1, 0.2, 0.3, 10.0])
    assert timing.median == pytest.approx(0.3)
    assert timing.samples_per_sec == pytest.approx(4 / 0.3)
    assert timing.iqr == pytest.approx(0.4 - 0.2)  # the outlier does not move median or spread much


def test_published_top1_from_cfg():
    assert published_top1(timm.create_model('unireplknet_a', device='meta').pretrained_cfg) == 77.03
    assert published_top1({'notes': ('ImageNet-1k top-1 82.3 (paper)',)}) == 82.3
    assert published_top1(timm.create_model('resnet18', device='meta').pretrained_cfg) is None
    # converted from unireplknet_a's weights: that file's accuracy is not this model's
    assert published_top1(timm.create_model('fdconv_unireplknet_a', device='meta').pretrained_cfg) is None


def test_failing_model_is_reported_and_others_kept():
    specs = resolve_models(['unireplknet_a', 'resnet18'])
    result = run_benchmark(specs, BenchSettings(bench='profile', img_size=16))
    failed, kept = result.rows
    assert failed['model'] == 'unireplknet_a' and 'too small' in failed['error']
    assert kept['model'] == 'resnet18' and kept['infer_gmacs'] > 0 and not kept.get('error')
    assert [r['model'] for r in result.errors] == ['unireplknet_a']
    assert 'unireplknet_a: FAILED' in format_table(result)


def test_failed_workload_keeps_the_others_and_progress_completes():
    # training lsnet_t at batch 1 and 32x32 fails (BatchNorm over a 1x1 map of one sample); inference works
    events, updates = [], []
    settings = BenchSettings(batch_size=1, img_size=32, warmup=0, iters=2, rounds=2, interleave=False)
    result = run_benchmark(resolve_models(['lsnet_t']), settings, progress=lambda *e: events.append(e),
                           on_update=updates.append)
    row, = result.rows
    assert row['form'] == 'deploy'
    assert row['param_count'] == round(DEPLOY_PARAM_COUNTS['lsnet_t'] / 1e6, 3)  # re-parameterised: BatchNorms fused
    assert row['infer_batch_size'] == 1 and row['infer_img_size'] == 32
    assert row['infer_samples_per_sec'] == pytest.approx(1 / (row['infer_step_time'] / 1e3), rel=1e-2)
    assert row['error'].startswith('train: ValueError') and 'train_samples_per_sec' not in row
    assert 'infer_samples_per_sec_ratio' not in row  # no timm model, no baseline
    assert result.errors == [row] and 'lsnet_t (deploy): FAILED: train: ValueError' in format_table(result)
    done = [d for d, _, _ in events]
    # build, 2 warm-ups, 2 rounds x 2 workloads; the failed workload's rounds are skipped but accounted for
    assert done == sorted(done) and events[-1][0] == events[-1][1] == 1 + 2 + 2 * 2
    assert result.meta['baseline'] is None and result.meta['settings']['interleave'] is False
    # partial results after profiling and after each round, so that an interrupted run keeps them
    assert len(updates) == 3 and not any(u.meta['complete'] for u in updates) and result.meta['complete']
    assert 'infer_step_time' not in updates[0].rows[0] and len(updates[1].rows[0]['error']) > 0
    assert updates[2].rows[0]['infer_samples_per_sec'] == row['infer_samples_per_sec']


def test_write_results_is_atomic_and_keeps_timm_columns(tmp_path):
    rows = [dict(model='a', param_count=1.0, infer_gmacs=0.5, extra_column=3)]
    paths = write_results(BenchmarkResult(rows, dict(note='x')), tmp_path / 'out')
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['benchmark.csv', 'benchmark.json']
    with open(paths[0]) as f:
        assert next(csv.reader(f)) == ['model', 'param_count', 'infer_gmacs', 'extra_column']
    assert json.loads(paths[1].read_text()) == dict(meta=dict(note='x'), results=rows)


def test_bench_command_side_by_side_with_outputs(tmp_path, capsys):
    top1 = tmp_path / 'top1.csv'
    top1.write_text('model,top1\nresnet18.a1_in1k,71.49\n')
    out = tmp_path / 'bench'
    code = main(['bench', 'unireplknet_a', 'resnet18', '--form', 'both', '--top1-csv', str(top1),
                 '--out', str(out)] + TINY)
    assert code == 0
    stdout = capsys.readouterr().out
    assert 'x resnet18' in stdout and 'GMACs = multiply-accumulates' in stdout and 'fp32, batch 2' in stdout

    with open(out / 'benchmark.csv') as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    for column in ('model', 'param_count', 'infer_gmacs', 'infer_macts', 'infer_samples_per_sec',
                   'infer_step_time', 'infer_batch_size', 'infer_img_size', 'train_samples_per_sec',
                   'train_step_time', 'train_batch_size'):
        assert column in header
    assert [(r['model'], r['form']) for r in rows] == [
        ('unireplknet_a', 'deploy'), ('unireplknet_a', 'train'), ('resnet18', 'deploy'), ('resnet18', 'train')]
    deploy, train, ref_deploy, ref_train = rows
    assert float(deploy['param_count']) == round(DEPLOY_PARAM_COUNTS['unireplknet_a'] / 1e6, 3)
    assert float(train['param_count']) == round(PARAM_COUNTS['unireplknet_a'] / 1e6, 3)
    assert float(train['infer_gmacs']) > float(deploy['infer_gmacs']) > 0
    # training is measured once, on the training form, and reported on the 'train' row
    assert deploy['train_samples_per_sec'] == '' and float(train['train_samples_per_sec']) > 0
    assert float(ref_deploy['infer_samples_per_sec_ratio']) == 1.0 == float(ref_train['train_samples_per_sec_ratio'])
    assert float(deploy['infer_samples_per_sec_ratio']) == pytest.approx(
        float(deploy['infer_samples_per_sec']) / float(ref_deploy['infer_samples_per_sec']), rel=1e-2)
    assert deploy['top1'] == '77.03' and ref_deploy['top1'] == '71.49'

    meta = json.loads((out / 'benchmark.json').read_text())['meta']
    assert meta['baseline'] == 'resnet18' and meta['settings']['batch_size'] == 2
    assert 'FFT' in meta['flop_convention'] and 'median' in meta['timing']
    for name in ('infer_throughput_vs_gmacs', 'infer_throughput_vs_params', 'train_throughput_vs_gmacs',
                 'top1_vs_infer_throughput'):
        assert (out / f'{name}.png').read_bytes()[:8] == PNG_MAGIC


def test_bench_command_unknown_model():
    with pytest.raises(SystemExit, match="no model matches 'van_b9'.*van_b"):
        main(['bench', 'van_b9'])
    with pytest.raises(SystemExit, match="^lkconv bench: baseline 'resnet19' is not among the benchmarked models; "
                                         "did you mean: resnet18$"):
        main(['bench', 'van_b0', 'resnet18', '--baseline', 'resnet19'])
