"""`lkconv train` / `lkconv validate` at their edges: a user's folders are never touched, a failed resume
changes nothing, classes must match, a command that cannot start leaves nothing behind, and every user
mistake is one clear line (no traceback) before any work.

The errors go through `lkconv.cli.main` (a SystemExit whose message is all Python prints) or a real
subprocess where the process itself matters (Ctrl-C, no network).
"""
import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lkconv.cli import main
from lkconv.training.data import write_digits_imagefolder
from lkconv.training import commands
from lkconv.training.checkpoint import load_checkpoint, save_checkpoint
from lkconv.training.run_folder import RunFolderError, resolve_run_folder
from lkconv.training.config import load_config
from lkconv.training.validate import ValidateOptions, load_eval_model
from helpers import TINY_INCEPTIONNEXT, read_summary, toy_overrides, write_toy_imagefolder

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / 'configs' / 'demo' / 'digits_inceptionnext_atto.yaml'


@pytest.fixture(scope='module')
def model_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('config') / 'tiny.yaml'
    path.write_text('model:\n  name: inceptionnext_atto\n')
    return path


def train_args(model_config: Path, data: Path, out: Path, *extra: str):
    """`lkconv train` arguments of a tiny InceptionNeXt on the toy folder, 3 epochs."""
    return ['train', '-c', str(model_config), *toy_overrides(data, out), *TINY_INCEPTIONNEXT[1:], 'train.epochs=3',
            *extra]


def fails(argv, capsys) -> str:
    """The one message `lkconv ARGV` exits with (non-zero, no traceback)."""
    with pytest.raises(SystemExit) as error:
        main(argv)
    message = str(error.value.code)
    assert error.value.code not in (0, None), message
    captured = capsys.readouterr()
    assert 'Traceback' not in message + captured.out + captured.err
    return message


def snapshot(folder: Path):
    """Every file under `folder` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def stopped_run(toy_data, model_config, tmp_path_factory) -> Path:
    """A run of 3 epochs stopped after the first by train.stop_epoch (each test works on its own copy)."""
    out = tmp_path_factory.mktemp('runs')
    assert main(train_args(model_config, toy_data, out, 'train.stop_epoch=1')) == 0
    return out / 'run'


@pytest.fixture
def run_copy(stopped_run, tmp_path) -> Path:
    return Path(shutil.copytree(stopped_run, tmp_path / 'run'))


# ------------------------------------------------------------------------------------------ data safety

def user_folder(root: Path) -> Path:
    """A folder of the user's own: images and notes."""
    write_toy_imagefolder(root, per_class=2, val_per_class=1)
    (root / 'notes.txt').write_text('my notes, not a dataset marker\n')
    (root / 'README.txt').write_text('My photos\n')
    return root


def test_digits_never_replace_a_users_folder(model_config, tmp_path, capsys):
    mine = user_folder(tmp_path / 'mine')
    before = snapshot(mine)
    message = fails(['train', '-c', str(DEMO_CONFIG), f'data.dir={mine}', f'output.dir={tmp_path}/out'], capsys)
    assert message == (f"lkconv train: invalid config:\ncommand line: data.dir: '{mine}' is not empty and is not "
                       f"a copy of lkconv/digits written by lkconv; lkconv/digits is written into a new or empty "
                       f"folder: choose one (its files are left as they are)")
    message = fails(['validate', '--dataset', 'lkconv/digits', '--data-dir', str(mine), '--model', 'test_resnet',
                     '--pretrained', '--split', 'val'], capsys)
    assert message.startswith(f"lkconv validate: '{mine}' is not empty and is not a copy of lkconv/digits")
    assert snapshot(mine) == before
    assert not (tmp_path / 'out').exists()


def test_digits_are_written_into_a_new_or_empty_folder_once(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert write_digits_imagefolder(empty) == empty
    written = snapshot(empty)
    assert len([f for f in written if f.endswith('.png')]) == 1797 and 'README.txt' in written
    assert write_digits_imagefolder(empty) == empty and snapshot(empty) == written  # a complete copy: kept
    assert [p.name for p in tmp_path.iterdir()] == ['empty']  # no temporary folder left


# ------------------------------------------------------------------------------------------------ resume

def test_a_failed_resume_changes_nothing_and_a_plain_resume_still_works(run_copy, toy_data, model_config,
                                                                        tmp_path, capsys):
    before = snapshot(run_copy)
    message = fails(['train', '--resume', str(run_copy), 'optim.lr=0.1'], capsys)
    assert message == (f"lkconv train: cannot resume '{run_copy}/last.pth.tar' with changed optim.lr (0.002 -> 0.1): "
                       f"the checkpoint restores the model, optimizer and schedule; drop the change, or start a new "
                       f"run (another output.experiment)")
    # the checkpoint of another model
    other = tmp_path / 'other.yaml'
    other.write_text('model:\n  name: van_b0\n')
    message = fails(['train', '-c', str(other), '--resume', str(run_copy), *toy_overrides(toy_data, tmp_path),
                     'train.epochs=3', 'model.kwargs={embed_dims: [8, 16, 32, 64], depths: [1, 1, 1, 1]}'], capsys)
    assert "with changed model.name ('inceptionnext_atto' -> 'van_b0'), model.kwargs (" in message
    message = fails(['train', '--resume', str(run_copy / 'missing.pth.tar')], capsys)
    assert message == f"lkconv train: nothing to resume: '{run_copy}/missing.pth.tar' does not exist"
    (run_copy / 'notes.txt').write_text('not a checkpoint\n')
    message = fails(['train', '--resume', str(run_copy / 'notes.txt')], capsys)
    assert message == (f"lkconv train: checkpoint '{run_copy}/notes.txt' cannot be read: it is a text file, not a "
                       f"PyTorch checkpoint (it begins 'not a checkpoint')")
    (run_copy / 'notes.txt').unlink()
    assert snapshot(run_copy) == before

    assert main(['train', '--resume', str(run_copy)]) == 0
    assert [r['epoch'] for r in read_summary(run_copy)] == ['1', '2', '3']
    assert 'resumed after epoch 1' in (run_copy / 'train.log').read_text()


def test_a_truncated_last_checkpoint_points_to_best(run_copy, capsys):
    last = run_copy / 'last.pth.tar'
    last.write_bytes(last.read_bytes()[:1000])
    before = snapshot(run_copy)
    message = fails(['train', '--resume', str(run_copy)], capsys)
    assert message == (f"lkconv train: checkpoint '{last}' cannot be read: it is truncated or damaged "
                       f"(PytorchStreamReader failed reading zip archive: failed finding central directory); "
                       f"'{run_copy}/best.pth.tar' beside it may be intact")
    message = fails(['validate', '--checkpoint', str(last), '--data-dir', str(run_copy), '--split', 'val'], capsys)
    assert message.startswith(f"lkconv validate: checkpoint '{last}' cannot be read: it is truncated or damaged")
    assert snapshot(run_copy) == before


def test_stop_epoch_ends_one_command_not_the_run(run_copy):
    """train.stop_epoch is not kept: a plain resume goes on to train.epochs. Other changes are applied and
    said so."""
    assert 'stop_epoch: null' in (run_copy / 'config.yaml').read_text()
    assert load_checkpoint(run_copy / 'last.pth.tar')['config']['train']['stop_epoch'] is None

    assert main(['train', '--resume', str(run_copy), 'train.stop_epoch=2', 'optim.clip_grad=5.0']) == 0
    assert [r['epoch'] for r in read_summary(run_copy)] == ['1', '2']
    log = (run_copy / 'train.log').read_text()
    assert 'resuming with changed settings (applied): optim.clip_grad (None -> 5.0)' in log
    assert 'train.stop_epoch=2: this command stops after epoch 2; the run keeps its length' in log
    resolved = load_config(run_copy / 'config.yaml')
    assert resolved.train.stop_epoch is None and resolved.optim.clip_grad == 5.0

    assert main(['train', '--resume', str(run_copy)]) == 0
    assert [r['epoch'] for r in read_summary(run_copy)] == ['1', '2', '3']


def test_a_run_folder_without_a_checkpoint_is_continued_not_overwritten(tmp_path):
    config = load_config(None, ['model.name=van_b0', 'data.dataset=lkconv/digits', f'output.dir={tmp_path}',
                                'output.experiment=run'])
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'config.yaml').write_text('stopped in its first epoch\n')
    with pytest.raises(RunFolderError, match=r"already holds a run \(config.yaml\): continue it with --resume"):
        resolve_run_folder(config, None, 'now')
    assert resolve_run_folder(config, str(tmp_path / 'run'), 'now') == (tmp_path / 'run', None)


# ----------------------------------------------------------------------------------------------- classes

def test_splits_with_other_classes_are_refused(toy_data, model_config, tmp_path, capsys):
    data = Path(shutil.copytree(toy_data, tmp_path / 'data'))
    shutil.move(data / 'val' / 'class1', data / 'val' / 'class7')
    message = fails(train_args(model_config, data, tmp_path / 'out'), capsys)
    assert message == ("lkconv train: invalid config:\ncommand line: data.val_split: split 'val' has other classes "
                       "than split 'train' (missing: class1; extra: class7); both need the same class folders, as "
                       "labels are numbered by class name")
    assert not (tmp_path / 'out').exists()


def test_class_names_travel_with_the_checkpoint(stopped_run, toy_data, tmp_path, capsys):
    checkpoint = stopped_run / 'last.pth.tar'
    assert load_checkpoint(checkpoint)['label_names'] == ['class0', 'class1']
    _, data_config, _ = load_eval_model(ValidateOptions(checkpoint=str(checkpoint)))
    assert data_config['label_names'] == ['class0', 'class1']

    data = Path(shutil.copytree(toy_data, tmp_path / 'data'))
    shutil.move(data / 'val' / 'class1', data / 'val' / 'class9')
    message = fails(['validate', '--checkpoint', str(checkpoint), '--data-dir', str(data), '--split', 'val',
                     '-j', '0'], capsys)
    assert message == ("lkconv validate: split 'val' has other classes than the ones inceptionnext_atto was trained "
                       "on (missing: class1; extra: class9); its labels would not match the model's outputs")

    old = load_checkpoint(checkpoint)  # written before class names were stored
    del old['label_names']
    save_checkpoint(old, tmp_path / 'old.pth.tar')
    _, data_config, _ = load_eval_model(ValidateOptions(checkpoint=str(tmp_path / 'old.pth.tar')))
    assert 'label_names' not in data_config


def test_empty_class_folders_are_refused(stopped_run, toy_data, model_config, tmp_path, capsys):
    data = Path(shutil.copytree(toy_data, tmp_path / 'data'))
    (data / 'train' / 'class2').mkdir()
    (data / 'val' / 'class2').mkdir()
    message = fails(train_args(model_config, data, tmp_path / 'out'), capsys)
    assert message == (f"lkconv train: invalid config:\n"
                       f"{model_config}: data.train_split: class folder(s) without images in '{data}/train': class2; "
                       f"add images or remove them (an empty class would shift the labels of the classes after it)\n"
                       f"command line: data.val_split: class folder(s) without images in '{data}/val': class2; "
                       f"add images or remove them (an empty class would shift the labels of the classes after it)")
    message = fails(['validate', '--checkpoint', str(stopped_run / 'last.pth.tar'), '--data-dir', str(data),
                     '--split', 'val', '-j', '0'], capsys)
    assert message.startswith(f"lkconv validate: class folder(s) without images in '{data}/val': class2;")
    assert not (tmp_path / 'out').exists()


# -------------------------------------------------------------------------- errors before any work starts

@pytest.mark.parametrize('override, problem', [
    ('data.mean=[0.5, 0.5]', 'data.mean: expected 3 numbers (one per input channel of inceptionnext_atto) or one '
                             'for all, got 2'),
    ('data.std=[0.2, 0.2, 0.2, 0.2]', 'data.std: expected 3 numbers (one per input channel of inceptionnext_atto) '
                                      'or one for all, got 4'),
    ('optim.opt=adamx', "optim.opt: unknown optimizer 'adamx'; did you mean: adamax, adam, radam, nadam, adamw "
                        "(timm.optim.list_optimizers() lists them all)"),
    ('optim.lr=0', 'optim.lr: must be positive, got 0'),
    ('train.device=gpu', "train.device: unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
    ('data.img_size=16', 'data.img_size: inceptionnext_atto cannot take 16x16 images: input of 16x16 is too small: '
                         'this model needs at least 32x32'),
    ('model.kwargs={dimz: [8, 16, 32, 64]}', 'model.kwargs: inceptionnext_atto cannot be built with these '
                                             "arguments: InceptionNeXt.__init__() got an unexpected keyword "
                                             "argument 'dimz'"),
    ('model.kwargs={num_classes: 3}', 'model.kwargs: num_classes: set by model.num_classes instead'),
    ('data.batch_size=0', 'data.batch_size: must be at least 1'),
    ('model.name=inceptionnext_attto', "model.name: unknown model 'inceptionnext_attto'; did you mean: "
                                       "inceptionnext_atto, "),
    ('model.num_classes=5', 'model.num_classes: the training data has 2 classes but inceptionnext_atto has 5 '
                            'outputs; set model.num_classes=2'),
])
def test_train_config_errors_come_before_the_run_folder(override, problem, toy_data, model_config, tmp_path,
                                                        capsys):
    message = fails(train_args(model_config, toy_data, tmp_path / 'out', override), capsys)
    assert message.startswith(f'lkconv train: invalid config:\ncommand line: {problem}')
    assert len(message.splitlines()) == 2
    assert not (tmp_path / 'out').exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason='a machine with a GPU')
def test_cuda_without_a_gpu(toy_data, model_config, tmp_path, capsys):
    message = fails(train_args(model_config, toy_data, tmp_path / 'out', 'train.device=cuda'), capsys)
    assert message.endswith("command line: train.device: 'cuda', but this machine has no CUDA device; use cpu or auto")
    message = fails(['validate', '--model', 'test_resnet', '--pretrained', '--data-dir', str(toy_data),
                     '--device', 'cuda'], capsys)
    assert message == "lkconv validate: --device: 'cuda', but this machine has no CUDA device; use cpu or auto"


def test_an_output_folder_that_cannot_be_written(toy_data, model_config, tmp_path, capsys):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    message = fails(train_args(model_config, toy_data, blocker / 'out'), capsys)
    assert message == (f"lkconv train: invalid config:\ncommand line: output.dir: cannot create the run folder "
                       f"'{blocker}/out/run': '{blocker}' is a file; choose another output.dir")


def test_validate_argument_errors(toy_data, tmp_path, capsys):
    base = ['validate', '--data-dir', str(toy_data), '--split', 'val', '-j', '0']
    assert fails([*base, '--model', 'test_resnet', '--pretrained', '--batch-size', '0'], capsys) == \
        'lkconv validate: --batch-size: must be at least 1, got 0'
    assert fails([*base, '--model', 'inceptionnext_attto', '--pretrained'], capsys).startswith(
        "lkconv validate: unknown model 'inceptionnext_attto'; did you mean: inceptionnext_atto, ")
    assert fails([*base, '--model', 'test_resnet', '--pretrained', '--results-file', str(tmp_path / 'no' / 'r.json')],
                 capsys) == f"lkconv validate: --results-file: cannot write in '{tmp_path}/no' (no such folder, or " \
                           f"not writable)"
    notes = tmp_path / 'notes.txt'
    notes.write_text('hello\n')
    assert fails([*base, '--checkpoint', str(notes)], capsys) == \
        f"lkconv validate: checkpoint '{notes}' cannot be read: it is a text file, not a PyTorch checkpoint " \
        f"(it begins 'hello')"


@pytest.mark.parametrize('flags, hint', [
    (['--amp'], 'train.amp=true'), (['--lr', '0.1'], 'optim.lr=0.1'), (['-b', '64'], 'data.batch_size=64'),
    (['--batch-size', '64'], 'data.batch_size=64'), (['--epochs', '3'], 'train.epochs=3'),
    (['--model', 'van_b0'], 'model.name=van_b0'), (['--data-dir', '/data'], 'data.dir=/data'),
    (['--output', 'out'], 'output.dir=out'), (['--model-ema'], 'train.model_ema=true'),
    (['--channels-last'], 'train.channels_last=true'), (['--torchcompile', 'inductor'], 'train.compile=inductor'),
    (['--mean', '0.5', '0.5', '0.5'], 'data.mean=[...]'),
])
def test_timm_flags_name_their_config_key(flags, hint, model_config, capsys):
    message = fails(['train', '-c', str(model_config), *flags], capsys)
    assert message == f'lkconv train: {flags[0]} is not an option of lkconv train; set the config key instead ' \
                      f'(after the config): {hint}'


# ------------------------------------------------------------------------------------------- processes

def run_lkconv(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, '-m', 'lkconv.cli', *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS='1', **(env or {})))


def test_pretrained_without_network_is_one_line(toy_data, tmp_path):
    """validate, reparam and export load their model the same way (`load_eval_model`)."""
    offline = dict(HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'))
    for command, args in (('validate', ['--model', 'inceptionnext_atto', '--data-dir', str(toy_data)]),
                          ('reparam', ['inceptionnext_atto', '--out', str(tmp_path / 'deploy.pth')])):
        result = run_lkconv(command, *args, '--pretrained', env=offline)
        assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
        assert result.stderr.startswith(
            f"lkconv {command}: cannot load the pretrained weights of inceptionnext_atto from the Hugging Face hub "
            f"repository 'timm/inception_next_atto.sail_in1k'")
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'deploy.pth').exists()


def test_ctrl_c_says_how_to_resume(toy_data, model_config, tmp_path):
    """SIGINT after the first epoch: exit 130, one line with the resume command (also in train.log), and that
    command continues the run."""
    args = train_args(model_config, toy_data, tmp_path, 'train.epochs=100', 'output.log_interval=1')
    process = subprocess.Popen([sys.executable, '-m', 'lkconv.cli', *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        for line in process.stdout:
            if 'epoch 1 done' in line:
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    run_dir = tmp_path / 'run'
    assert process.returncode == 130 and 'Traceback' not in stderr, stderr[-2000:]
    line = stderr.strip()
    assert line.startswith('lkconv train: interrupted in epoch ') and '(epochs up to ' in line
    assert line.endswith(f'are saved); continue with: lkconv train --resume {run_dir}')
    assert line.split('lkconv train: ', 1)[1] in (run_dir / 'train.log').read_text()
    saved = load_checkpoint(run_dir / 'last.pth.tar')['epoch']
    assert main(['train', '--resume', str(run_dir), f'train.stop_epoch={saved + 1}']) == 0
    assert [r['epoch'] for r in read_summary(run_dir)] == [str(e) for e in range(1, saved + 2)]


def test_an_error_midway_is_in_the_log(toy_data, model_config, tmp_path, capsys, monkeypatch):
    import lkconv.training.train
    real = lkconv.training.train.train_one_epoch

    def diverging(*args, epoch, **kwargs):
        if epoch == 2:
            raise FloatingPointError('training loss is nan at epoch 2, step 1: lower the learning rate or check '
                                     'the data')
        return real(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(lkconv.training.train, 'train_one_epoch', diverging)
    message = fails(train_args(model_config, toy_data, tmp_path), capsys)
    assert message == 'lkconv train: training loss is nan at epoch 2, step 1: lower the learning rate or check the data'
    log = (tmp_path / 'run' / 'train.log').read_text()
    assert 'ERROR stopped in epoch 2: FloatingPointError: training loss is nan at epoch 2' in log
    assert [r['epoch'] for r in read_summary(tmp_path / 'run')] == ['1']


# ---------------------------------------------------------------------------------------------- --help

def test_help_shows_every_option_and_its_default(capsys):
    parser = argparse.ArgumentParser(prog='lkconv')
    subparsers = parser.add_subparsers()
    commands.add_commands(subparsers)
    for name in ('train', 'validate'):
        shown = [a for a in subparsers.choices[name]._actions if a.help != argparse.SUPPRESS]
        assert all(a.help for a in shown), [a.dest for a in shown if not a.help]
    with pytest.raises(SystemExit):
        parser.parse_args(['validate', '--help'])
    text = capsys.readouterr().out
    assert '(default: 256)' in text and '(default: validation)' in text and '(default: auto)' in text


def test_the_command_module_imports_neither_torch_nor_timm():
    """`lkconv --help` must start fast: the commands import what they run when they run."""
    script = ('import sys, types\n'
              f'package = types.ModuleType("lkconv"); package.__path__ = [{str(REPO_ROOT / "lkconv")!r}]\n'
              'sys.modules["lkconv"] = package  # without lkconv/__init__, which registers the models\n'
              'import lkconv.training.commands\n'
              'print(sorted(m for m in ("torch", "timm") if m in sys.modules))\n')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
