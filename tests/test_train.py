"""Training runs on CPU: learning on the embedded digits, the run folder, exact resume, checkpoints that
survive a killed writer, distillation, and DDP with two gloo processes.

The models are zoo models shrunk through `model.kwargs` (a few ten thousand parameters) on 32x32 images.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.task.distillation import DistillationTeacher

from lkconv.cli import main
from lkconv.training.config import ConfigError, load_config
from lkconv.training.train import RESUME_LATEST, RunFolderError, resolve_lr, train
from lkconv.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lkconv.training.distillation import DistillationLoss
from lkconv.training.summary import SUMMARY_COLUMNS
from helpers import TINY_INCEPTIONNEXT, read_summary, toy_overrides

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_short_run_learns_the_digits(tmp_path):
    config = load_config(REPO_ROOT / 'configs' / 'demo' / 'digits_inceptionnext_atto.yaml', [
        *TINY_INCEPTIONNEXT, f'data.dir={tmp_path}/digits', 'data.batch_size=32', 'train.epochs=3',
        'optim.lr=3e-3', 'sched.warmup_epochs=0', f'output.dir={tmp_path}/out', 'output.experiment=digits'])
    run_dir = train(config)

    assert sorted(p.name for p in run_dir.iterdir()) == \
        ['best.pth.tar', 'config.yaml', 'last.pth.tar', 'summary.csv', 'train.log']
    assert load_config(run_dir / 'config.yaml') == config
    rows = read_summary(run_dir)
    assert tuple(rows[0]) == SUMMARY_COLUMNS and [r['epoch'] for r in rows] == ['1', '2', '3']
    best = max(float(r['eval_top1']) for r in rows)
    assert best > 50, f'top-1 {best}% on 10 classes after 3 epochs'  # chance is 10%
    assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])
    log = (run_dir / 'train.log').read_text()
    assert 'img/s' in log and 'eta' in log and 'epoch 3 eval: loss' in log
    best_ckpt = load_checkpoint(run_dir / 'best.pth.tar')
    assert best_ckpt['metric'] == pytest.approx(best, abs=1e-3) and best_ckpt['arch'] == 'inceptionnext_atto'


def test_resumed_run_repeats_an_uninterrupted_one(toy_data, tmp_path):
    """Epochs 2-3 after a stop at epoch 1 give the same losses and weights as an uninterrupted run."""
    features = [*TINY_INCEPTIONNEXT, 'train.epochs=3', 'train.model_ema=true', 'train.model_ema_decay=0.9',
                'data.mixup=0.2', 'data.cutmix=1.0', 'model.drop_path_rate=0.1', 'data.workers=1',
                'train.grad_accum_steps=2', 'sched.on_updates=true', 'sched.warmup_epochs=1', 'data.reprob=0.25']
    straight = train(load_config(None, toy_overrides(toy_data, tmp_path, 'straight') + features))
    stopped = train(load_config(None, toy_overrides(toy_data, tmp_path, 'resumed') + features + ['train.stop_epoch=1']))
    assert [r['epoch'] for r in read_summary(stopped)] == ['1']
    resumed = train(load_config(None, toy_overrides(toy_data, tmp_path, 'resumed') + features), resume=RESUME_LATEST)
    assert resumed == stopped

    expected, got = read_summary(straight), read_summary(resumed)
    assert [r['epoch'] for r in got] == ['1', '2', '3']
    for a, b in zip(expected, got):
        for column in ('train_loss', 'eval_loss', 'eval_top1', 'lr'):
            assert a[column] == b[column], (a, b)
    final_a, final_b = load_checkpoint(straight / 'last.pth.tar'), load_checkpoint(resumed / 'last.pth.tar')
    for key in ('state_dict', 'state_dict_ema'):
        for name, tensor in final_a[key].items():
            assert torch.equal(tensor, final_b[key][name]), f'{key}.{name}'
    assert final_a['num_updates'] == final_b['num_updates'] == 9  # ceil(6 batches / 2) x 3 epochs
    assert 'resumed after epoch 1' in (resumed / 'train.log').read_text()


def test_precision_layout_and_optimizer_options_train(toy_data, tmp_path):
    """bf16 autocast, channels_last, grad checkpointing, layer decay from group_matcher, AGC clipping."""
    overrides = toy_overrides(toy_data, tmp_path, 'options') + [
        *TINY_INCEPTIONNEXT, 'train.epochs=1', 'train.amp=true', 'train.amp_dtype=bfloat16',
        'train.channels_last=true', 'model.grad_checkpointing=true', 'optim.layer_decay=0.7',
        'optim.clip_grad=0.02', 'optim.clip_mode=agc', 'sched.name=step', 'sched.decay_epochs=1']
    run_dir = train(load_config(None, overrides))
    checkpoint = load_checkpoint(run_dir / 'last.pth.tar')
    scales = sorted({group['lr_scale'] for group in checkpoint['optimizer']['param_groups']})
    assert len(scales) > 2 and scales[-1] == 1.0 and scales[0] < 0.7  # one lr per depth group
    assert np.isfinite(float(read_summary(run_dir)[0]['train_loss']))


def test_run_folder_is_never_overwritten_and_resumes_from_the_cli(toy_data, tmp_path):
    overrides = toy_overrides(toy_data, tmp_path, 'once') + [*TINY_INCEPTIONNEXT, 'train.stop_epoch=1']
    run_dir = train(load_config(None, overrides))
    with pytest.raises(RunFolderError, match='already holds a run'):
        train(load_config(None, overrides))
    with pytest.raises(RunFolderError, match='nothing to resume'):
        train(load_config(None, overrides), resume=str(tmp_path / 'missing'))
    # the run's own config.yaml, with an override, continues it
    assert main(['train', '--resume', str(run_dir), 'train.stop_epoch=null']) == 0
    assert [r['epoch'] for r in read_summary(run_dir)] == ['1', '2']
    with pytest.raises(SystemExit, match=r'give a config \(-c FILE\), or the run to continue'):
        main(['train', '--resume'])


def test_class_count_mismatch_is_reported_before_training(toy_data, tmp_path):
    overrides = toy_overrides(toy_data, tmp_path) + [*TINY_INCEPTIONNEXT, 'model.num_classes=5']
    with pytest.raises(ConfigError, match='the training data has 2 classes .* set model.num_classes=2'):
        train(load_config(None, overrides))


def test_lr_follows_the_global_batch():
    config = load_config(None, ['model.name=van_b0', 'data.dataset=lkconv/digits', 'optim.lr_base=4e-3',
                                'optim.lr_base_size=4096'])
    assert resolve_lr(config, 2048) == pytest.approx(2e-3)
    config.optim.lr_base_scale = 'sqrt'
    assert resolve_lr(config, 1024) == pytest.approx(2e-3)
    config.optim.lr = 1e-4
    assert resolve_lr(config, 1024) == 1e-4


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth.tar'
    save_checkpoint({'epoch': 1, 'w': torch.ones(1000)}, path)

    def dying_save(obj, f):
        f.write(b'partial bytes of a checkpoint')
        raise KeyboardInterrupt  # as if the run were stopped mid-write

    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({'epoch': 2, 'w': torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)['epoch'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth.tar']  # no temporary file left
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match='cannot be read'):
        load_checkpoint(path)


def test_killed_writer_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process that rewrites a 4 MB checkpoint in a loop: the file on disk always loads."""
    path = tmp_path / 'last.pth.tar'
    script = (
        'import sys, torch\n'
        'from lkconv.training.checkpoint import save_checkpoint\n'
        'i = 0\n'
        'while True:\n'
        '    save_checkpoint({"epoch": i, "w": torch.full((1_000_000,), float(i))}, sys.argv[1])\n'
        '    i += 1\n'
        '    print(i, flush=True)\n')
    writer = subprocess.Popen([sys.executable, '-c', script, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # let it complete a few writes, then kill it during a later one
            assert writer.stdout.readline()
        time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    state = load_checkpoint(path)
    assert torch.equal(state['w'], torch.full((1_000_000,), float(state['epoch'])))


def test_hard_distillation_loss_matches_deit():
    """(1 - alpha) * CE(class head, labels) + alpha * CE(distillation head, teacher's top-1)."""
    model = timm.create_model('test_resnet', num_classes=5)
    teacher = DistillationTeacher(model, num_classes=5).eval()
    x, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    cls, dist = torch.randn(4, 5), torch.randn(4, 5)
    mean, std = teacher.mean_kd.flatten().tolist(), teacher.std_kd.flatten().tolist()
    with torch.no_grad():
        teacher_top1 = model.eval()(x).argmax(1)
    hard = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, 'hard', alpha=0.5, tau=1.0,
                            student_mean=mean, student_std=std)
    expected = 0.5 * F.cross_entropy(cls, target) + 0.5 * F.cross_entropy(dist, teacher_top1)
    assert torch.allclose(hard(x, (cls, dist), target), expected)
    # a single-head student is distilled through its one output
    assert torch.allclose(hard(x, cls, target),
                          0.5 * F.cross_entropy(cls, target) + 0.5 * F.cross_entropy(cls, teacher_top1))


def test_distilled_lsnet_trains_against_a_timm_teacher(toy_data, tmp_path):
    teacher_file = tmp_path / 'teacher.pth'
    torch.save(timm.create_model('test_resnet', num_classes=2).state_dict(), teacher_file)
    overrides = toy_overrides(toy_data, tmp_path, 'distill') + [
        'model.name=lsnet_t_distill', 'model.kwargs={embed_dims: [16, 32, 48, 64], depths: [0, 1, 1, 1], img_size: 32}',
        'train.epochs=1', 'train.distill_type=hard', 'train.distill_teacher=test_resnet',
        f'train.distill_teacher_path={teacher_file}']
    run_dir = train(load_config(None, overrides))
    state = load_checkpoint(run_dir / 'last.pth.tar')['state_dict']
    assert 'head_dist.fc.weight' in state
    assert np.isfinite(float(read_summary(run_dir)[0]['train_loss']))


@pytest.mark.slow
def test_ddp_two_gloo_processes(toy_data, tmp_path):
    """torchrun with 2 CPU processes: one run folder written by rank 0, lr scaled to the global batch,
    repeated augmentation through timm's distributed sampler."""
    config = tmp_path / 'ddp.yaml'
    config.write_text('model:\n  name: inceptionnext_atto\n')
    overrides = toy_overrides(toy_data, tmp_path, 'ddp') + TINY_INCEPTIONNEXT[1:] + [
        'optim.lr=null', 'optim.lr_base=1e-3', 'optim.lr_base_size=4', 'data.aug_repeats=2']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         str(REPO_ROOT / 'scripts' / 'train.py'), '-c', str(config), *overrides],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / 'ddp'
    log = (run_dir / 'train.log').read_text()
    assert '2 process(es) on cpu' in log
    assert 'global batch 8 (4 x 2 process(es) x 1 accumulation), lr 2.000e-03' in log
    assert log.count('epoch 2 done') == 1  # rank 0 alone logs
    rows = read_summary(run_dir)
    assert [r['epoch'] for r in rows] == ['1', '2']
    for row in rows:  # the running average printed last in an epoch is the loss of all processes summary.csv has
        last = [line for line in log.splitlines() if f"epoch {row['epoch']}/2 [" in line][-1]
        assert float(last.split('(avg ')[1].split(')')[0]) == pytest.approx(float(row['train_loss']), abs=1e-4)
    assert load_checkpoint(run_dir / 'last.pth.tar')['epoch'] == 2


@pytest.mark.slow
def test_torchrun_single_process_joins_a_process_group(toy_data, tmp_path):
    """`torchrun --nproc_per_node 1` runs the distributed code (process group, DDP), not a plain process:
    on a GPU that is NCCL and SyncBatchNorm with one card."""
    config = tmp_path / 'one.yaml'
    config.write_text('model:\n  name: inceptionnext_atto\n')
    overrides = toy_overrides(toy_data, tmp_path, 'one') + TINY_INCEPTIONNEXT[1:] + ['train.epochs=1']
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', '-m', 'lkconv.cli',
         'train', '-c', str(config), *overrides],
        env=dict(os.environ, OMP_NUM_THREADS='1'), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (tmp_path / 'one' / 'train.log').read_text()
    assert '1 process(es) on cpu, backend gloo' in log
    assert load_checkpoint(tmp_path / 'one' / 'last.pth.tar')['epoch'] == 1
