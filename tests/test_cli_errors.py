"""User mistakes on the command line: one or two lines saying what is wrong and how to fix it, a non-zero
exit, no traceback, and nothing run or written before the mistake is found."""
import os
import subprocess
import sys

from pathlib import Path

import pytest
import torch

import lkconv.bench.benchmark
import lkconv.bench.commands
import lkconv.deploy.commands
import lkconv.deploy.onnx_export
from lkconv.cli import main
from lkconv.zoo.deploy_checkpoint import save_deploy_checkpoint
from lkconv.utils import did_you_mean


def _no_work(monkeypatch):
    """Make every command's expensive step fail the test if it is reached."""
    def reached(*args, **kwargs):
        raise AssertionError('work started before the mistake was reported')
    monkeypatch.setattr(lkconv.bench.benchmark, 'run_benchmark', reached)
    monkeypatch.setattr(lkconv.bench.commands, 'load_model', reached)
    monkeypatch.setattr(lkconv.deploy.commands, 'load_model', reached)
    monkeypatch.setattr(lkconv.deploy.onnx_export, 'export_onnx', reached)


def _fails(argv, capsys) -> str:
    """Run `lkconv argv`, check it exits non-zero with at most two lines and no traceback; return the message."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    code = exit_info.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err
    assert code not in (0, None), argv
    assert len(message.strip().splitlines()) <= 2 and 'Traceback' not in message, message
    return message


@pytest.mark.parametrize('argv, option, value', [
    (['bench', 'van_b0', '-b', '0'], '-b/--batch-size', 0),  # used to run at batch 16
    (['bench', 'van_b0', '--batch-size', '-2'], '-b/--batch-size', -2),
    (['bench', 'van_b0', '--img-size', '0'], '--img-size', 0),
    (['bench', 'van_b0', '--iters', '0'], '--iters', 0),
    (['erf', 'van_b0', '--num-images', '0'], '--num-images', 0),
    (['erf', 'van_b0', '-b', '0'], '-b/--batch-size', 0),
    (['export', 'van_b0', '--out', 'x.onnx', '-b', '0'], '-b/--batch-size', 0),  # used to export a 0-batch
    (['reparam', 'van_b0', '--out', 'x.pth', '--img-size', '-1'], '--img-size', -1),
    (['demo', '--batch-size', '0'], '-b/--batch-size', 0),
])
def test_counts_must_be_positive(argv, option, value, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _no_work(monkeypatch)
    message = _fails(argv, capsys)
    assert f'lkconv {argv[0]}: error: argument {option}: must be at least 1, got {value}' in message
    assert f'see `lkconv {argv[0]} --help`' in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('argv', [
    ['bench', 'van_b0', '--bench', 'profile', '--out', '{file}/results'],  # used to fail after the first model
    ['erf', 'van_b0', '--out', '{file}/erf'],
    ['export', 'van_b0', '--out', '{file}/van_b0.onnx'],
    ['reparam', 'van_b0', '--out', '{file}/van_b0_deploy.pth'],
])
def test_output_under_a_file_is_refused_before_work(argv, capsys, monkeypatch, tmp_path):
    _no_work(monkeypatch)
    blocker = tmp_path / 'notes.txt'
    blocker.write_text('mine')
    message = _fails([a.format(file=blocker) for a in argv], capsys)
    assert message == (f"lkconv {argv[0]}: cannot write to the output folder '{blocker}"
                       f"{'/results' if argv[0] == 'bench' else '/erf' if argv[0] == 'erf' else ''}' "
                       f"('{blocker}' is a file); choose another --out")
    assert blocker.read_text() == 'mine'


def test_unwritable_output_folder_is_refused_before_work(capsys, monkeypatch, tmp_path):
    """A folder the system refuses to create: read-only for a user; in /proc even for root (as in CI)."""
    _no_work(monkeypatch)
    if os.geteuid() == 0:
        target, reason = Path('/proc/lkconv-results'), 'No such file or directory'
    else:
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o500)
        target, reason = locked / 'results', 'Permission denied'
    message = _fails(['bench', 'van_b0', '--out', str(target)], capsys)
    assert message == f"lkconv bench: cannot write to the output folder '{target}' ({reason}); choose another --out"
    assert not target.exists()


def test_export_refuses_a_folder_and_its_own_checkpoint(capsys, monkeypatch, tmp_path):
    _no_work(monkeypatch)
    message = _fails(['export', 'van_b0', '--out', str(tmp_path)], capsys)
    assert message == (f"lkconv export: --out '{tmp_path}' is a folder; give the file to write, "
                       f"e.g. --out {tmp_path / 'van_b0.onnx'}")
    weights = tmp_path / 'weights.pth'
    weights.write_bytes(b'mine')
    message = _fails(['reparam', 'van_b0', '--checkpoint', str(weights), '--out', str(weights)], capsys)
    assert message == f"lkconv reparam: --out '{weights}' is the --checkpoint file; write elsewhere"
    assert weights.read_bytes() == b'mine'


def test_input_too_small_is_one_line_before_export(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(lkconv.deploy.onnx_export, 'export_onnx', lambda *a, **k: pytest.fail('exported'))
    out = tmp_path / 'u.onnx'
    message = _fails(['export', 'unireplknet_a', '--img-size', '16', '--out', str(out)], capsys)
    assert message == ('lkconv export: --img-size 16 does not fit unireplknet_a: input of 16x16 is too small: '
                       'this model needs at least 32x32')
    assert not out.exists()
    message = _fails(['reparam', 'van_b0', '--img-size', '8', '--out', str(tmp_path / 'v.pth')], capsys)
    assert 'lkconv reparam: --img-size 8 does not fit van_b0' in message and 'at least 32x32' in message
    message = _fails(['erf', 'unireplknet_a', '--img-size', '16', '--num-images', '1', '--out',
                      str(tmp_path / 'erf' / 'run')], capsys)
    assert 'lkconv erf: --img-size 16 does not fit unireplknet_a' in message and 'at least 32x32' in message
    assert list(tmp_path.iterdir()) == []  # the output folder, created to check it, is gone again


def test_close_matches_are_listed_once():
    hint = did_you_mean('van_b9', ['van_b0', 'van_b1', 'van_b0', 'van_b1'])
    assert hint.startswith('; did you mean: ') and sorted(hint[16:].split(', ')) == ['van_b0', 'van_b1']
    assert did_you_mean('zzzz', ['van_b0']) == ''


@pytest.mark.parametrize('argv, expected', [
    (['info', 'unireplknet_tt'], "lkconv info: unknown model 'unireplknet_tt'; did you mean: unireplknet_t"),
    (['info', 'unireplknet_a.in1kk'], "lkconv info: unknown model 'unireplknet_a.in1kk'; did you mean: "
                                      "unireplknet_a.in1k"),
    (['demo', '--model', 'van_b9'], "lkconv demo: unknown model 'van_b9'; did you mean: van_b"),
    (['list', 'unireplknet_tt'], "lkconv list: no model matches 'unireplknet_tt'; did you mean: unireplknet_t"),
    (['bench', 'van_b9'], "lkconv bench: no model matches 'van_b9'; did you mean: van_b"),
    (['bench', 'convnxt'], "lkconv bench: no model matches 'convnxt'; did you mean: convnext"),
    (['erf', 'van_b0', 'unireplknet_tt'], "lkconv erf: unknown model 'unireplknet_tt'; did you mean: unireplknet_t"),
    (['export', 'lsnet_tt', '--out', 'x.onnx'], "lkconv export: unknown model 'lsnet_tt'; did you mean: lsnet_t"),
    (['reparam', 'lsnet_tt', '--out', 'x.pth'], "lkconv reparam: unknown model 'lsnet_tt'; did you mean: lsnet_t"),
])
def test_misspelled_model_names_get_close_matches(argv, expected, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _no_work(monkeypatch)
    message = _fails(argv, capsys)
    assert message.startswith(expected), message
    matches = message.split('did you mean: ')[1].split(', ')
    assert len(matches) == len(set(matches)) <= 5, matches  # bench used to list zoo names twice


def test_erf_pretrained_without_network_is_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'))  # no network, an empty cache
    result = subprocess.run([sys.executable, '-m', 'lkconv.cli', 'erf', 'unireplknet_a', '--pretrained',
                             '--out', str(tmp_path / 'erf')], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1 and result.stdout == ''
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and 'Traceback' not in message, message
    assert message.startswith('lkconv erf: cannot load the pretrained weights of unireplknet_a from the Hugging '
                              "Face hub repository 'DingXiaoH/UniRepLKNet', file 'unireplknet_a_in1k_224_acc77.03.pth'")
    assert '--checkpoint FILE' in message and 'pretrained_cfg_overlay' in message
    assert not (tmp_path / 'erf').exists()


def test_erf_usage_mistakes(capsys, monkeypatch, tmp_path):
    _no_work(monkeypatch)
    assert _fails(['erf'], capsys) == ('lkconv erf: name the models (e.g. lkconv erf unireplknet_t convnext_tiny), '
                                       'or give the --checkpoint of a training run')
    assert _fails(['erf', 'van_b0', 'van_b1', '--checkpoint', 'x.pth'], capsys) == (
        'lkconv erf: --checkpoint holds the weights of one model; name at most one MODEL')
    empty = tmp_path / 'empty'
    message = _fails(['erf', 'van_b0', '--data-dir', str(empty)], capsys)
    assert message == f"lkconv erf: --data-dir '{empty}' is not a folder"
    empty.mkdir()
    assert _fails(['erf', 'van_b0', '--data-dir', str(empty)], capsys).startswith(
        f'lkconv erf: --data-dir: Found 0 images in subfolders of {empty}')


def test_bench_device_and_accuracy_file_mistakes(capsys, monkeypatch, tmp_path):
    _no_work(monkeypatch)
    assert _fails(['bench', 'van_b0', '--device', 'gpu'], capsys) == (
        "lkconv bench: --device: unknown device 'gpu'; use auto, cpu, cuda or cuda:N")
    missing = tmp_path / 'top1.csv'
    assert _fails(['bench', 'van_b0', '--top1-csv', str(missing)], capsys) == (
        f"lkconv bench: cannot read --top1-csv '{missing}': No such file or directory")
    if not torch.cuda.is_available():
        assert _fails(['bench', 'van_b0', '--device', 'cuda'], capsys) == (
            "lkconv bench: --device: 'cuda', but this machine has no CUDA device; use cpu or auto")


def test_erf_reads_the_model_from_a_checkpoint_and_writes_its_own_folder(capsys, monkeypatch, tmp_path):
    import timm
    from timm.utils import reparameterize_model
    deployed = reparameterize_model(timm.create_model('van_b0').eval())
    checkpoint = save_deploy_checkpoint(deployed, 'van_b0', dict(input_size=(3, 224, 224)), tmp_path / 'd.pth')
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(['erf', '--checkpoint', str(checkpoint), '--img-size', '64', '--num-images', '1']) == 0
    out = capsys.readouterr().out
    assert 'van_b0' in out and 'randomly initialised' not in out
    folder, = (work / 'output' / 'erf').iterdir()  # output/erf/<date>-<time>, not the current folder
    assert sorted(p.name for p in folder.iterdir()) == ['erf.csv', 'erf_van_b0.png']
    assert 'checkpoint' in (folder / 'erf.csv').read_text() and sorted(p.name for p in work.iterdir()) == ['output']
