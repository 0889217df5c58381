"""Dynamic sparse training (lkconv.training.sparsity; specs/slak.md §7): the layer-wise densities (ERK and
SNIP by hand), the prune-rate schedule against the official mechanism (PyTorch's CosineAnnealingLR), prune
and regrow on hand-made tensors, the EMA rule, the masks under DDP, and CPU training runs: a digits run that
checks the masks after every optimizer step and every topology update, and an exact resume.
"""
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.utils import ModelEmaV3

from lkconv.training.config import Config, ConfigError, load_config
from lkconv.training.checkpoint import SPARSE_MASKS, load_checkpoint
from lkconv.training.sparsity import (
    PRUNE_RATE_MIN, SparseMasker, erk_densities, grow_by_score, grow_randomly, magnitude_prune,
    masked_parameter_names, prune_rate_at, snip_densities,
)
from lkconv.training.train import RESUME_LATEST, RunFolderError, train
from helpers import TINY_INCEPTIONNEXT, read_summary, toy_overrides

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.py

REPO_ROOT = Path(__file__).resolve().parents[1]


def _masker(model: nn.Module, optimizer=None, **overrides) -> SparseMasker:
    settings = dict(sparsity=0.5, init='uniform', growth='random', prune_rate=0.5, decay_schedule='cosine',
                    update_frequency=1, fix=False, only_large_kernels=False, total_steps=100, seed=0)
    settings.update(overrides)
    return SparseMasker(model, optimizer or torch.optim.SGD(model.parameters(), lr=0.1), **settings)


# ------------------------------------------------------------------------------------- which, how dense

def test_every_2d_and_4d_parameter_is_masked():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert masked_parameter_names(model) == ['0.weight', '3.weight']  # biases and the norm stay dense
    assert masked_parameter_names(model, only_large_kernels=True) == []


def test_slak_t_keeps_the_readmes_nonzero_count():
    """specs/slak.md §3: 40% sparsity over all 2-D/4-D parameters leaves SLaK-T's 30M (30,473,228) of its
    50,703,838; `only_L` takes the tall and wide kernels of its 18 blocks, not the small ones."""
    with torch.device('meta'):
        model = timm.create_model('slak_tiny')
    params = dict(model.named_parameters())
    masked = sum(params[name].numel() for name in masked_parameter_names(model))
    assert int(sum(p.numel() for p in params.values()) - 0.4 * masked) == 30_473_228
    large = masked_parameter_names(model, only_large_kernels=True)
    assert len(large) == 36 and {tuple(params[n].shape[2:]) for n in large if n.startswith('stages.0.')} == \
        {(51, 5), (5, 51)}
    # the official names
    official = nn.ModuleDict({'large_kernel': nn.ModuleDict({
        'LoRA1': nn.Conv2d(4, 4, (7, 3), groups=4), 'small_conv': nn.Conv2d(4, 4, 3, groups=4)})})
    assert masked_parameter_names(official, only_large_kernels=True) == ['large_kernel.LoRA1.weight']


def test_erk_densities_by_hand():
    # raw ratios sum/prod: a 13/108, b 14/40, c 150/5000. At density 0.5 the scale is first 2574/177, which
    # puts b above 1 (dense); then 2534/163 puts a above 1 (dense); then 2426/150 leaves c at 0.4852.
    densities = erk_densities({'a': (4, 3, 3, 3), 'b': (10, 4), 'c': (100, 50)}, 0.5)
    assert densities['a'] == densities['b'] == 1.0
    assert densities['c'] == pytest.approx(2426 / 5000, rel=1e-12)
    assert 108 + 40 + densities['c'] * 5000 == pytest.approx(0.5 * 5148)  # the global density holds
    # no layer dense: density proportional to 16/64 and 32/256, kept weights 0.5 * 320
    densities = erk_densities({'x': (8, 8), 'y': (16, 16)}, 0.5)
    assert densities == pytest.approx({'x': 5 / 6, 'y': 5 / 12}, rel=1e-12)


def test_snip_densities_keep_scores_strictly_above_the_kth_largest():
    scores = {'a': torch.tensor([5., 1., 3., 0.]), 'b': torch.tensor([4., 2.])}
    # k = int(6 * 0.5) = 3: the third largest score, 3, is the threshold and is not kept itself
    assert snip_densities(scores, 0.5) == {'a': 0.25, 'b': 0.5}


def test_prune_rate_follows_the_official_cosine_decay():
    """The official CosineDecay steps CosineAnnealingLR on a dummy SGD once per optimizer step."""
    total = 50
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=PRUNE_RATE_MIN)
    for step in range(1, total + 1):
        optimizer.step()
        scheduler.step()
        assert prune_rate_at(step, 0.3, total) == pytest.approx(optimizer.param_groups[0]['lr'], rel=1e-9), step
    assert prune_rate_at(0, 0.3, total) == pytest.approx(0.3)
    assert prune_rate_at(total, 0.3, total) == pytest.approx(PRUNE_RATE_MIN)
    assert prune_rate_at(10, 0.3, total, 'linear') == pytest.approx(0.3 * 0.8)


# --------------------------------------------------------------------------------- prune and regrow

WEIGHT = torch.tensor([0.5, -0.1, 0.0, 0.3, 0.0, -0.7, 0.2, 0.0])
MASK = torch.tensor([1, 1, 0, 1, 0, 1, 1, 0], dtype=torch.bool)


def test_magnitude_prune_removes_the_weakest_active_weights():
    # 5 active, rate 0.3: ceil(1.5) = 2 removed, the two of least magnitude (-0.1 and 0.2)
    assert magnitude_prune(MASK, WEIGHT, 0.3).int().tolist() == [1, 0, 0, 1, 0, 1, 0, 0]
    assert MASK.int().tolist() == [1, 1, 0, 1, 0, 1, 1, 0]  # the input is left as it is
    # nothing to remove: the mask becomes the weight's nonzeros
    assert magnitude_prune(torch.zeros(8, dtype=torch.bool), WEIGHT, 0.3).int().tolist() == \
        [1, 1, 0, 1, 0, 1, 1, 0]


def test_gradient_growth_takes_the_largest_inactive_gradients():
    pruned = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0], dtype=torch.bool)
    grad = torch.tensor([9.0, 0.1, -0.5, 9.0, 0.05, 9.0, 0.3, -0.2])
    # inactive: positions 1, 2, 4, 6, 7 with |g| 0.1, 0.5, 0.05, 0.3, 0.2; a just-pruned weight (6) may return
    assert grow_by_score(pruned, grad, 2).int().tolist() == [1, 0, 1, 1, 0, 1, 1, 0]


def test_random_growth_is_right_in_expectation_only():
    mask = torch.arange(100_000) % 2 == 0
    grown = grow_randomly(mask, 10_000, torch.Generator().manual_seed(1))
    new = int(grown.sum() - mask.sum())
    assert grown[mask].all()  # active weights stay
    assert abs(new - 10_000) < 5 * math.sqrt(10_000 * 0.8)  # binomial(50,000, 0.2)
    again = grow_randomly(mask, 10_000, torch.Generator().manual_seed(1))
    assert torch.equal(grown, again) and new != 10_000


def test_momentum_growth_uses_adams_update_direction():
    model = nn.Linear(4, 1, bias=False)
    optimizer = torch.optim.AdamW(model.parameters())
    masker = _masker(model, optimizer, growth='momentum')
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.4, 0.0, -0.3, 0.0]]))
    masker.load_state_dict({'weight': torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)})
    # exp_avg / sqrt(exp_avg_sq): 1 at position 1, 3 at position 3
    optimizer.state[model.weight] = {'exp_avg': torch.tensor([[0., 1., 0., 3.]]),
                                     'exp_avg_sq': torch.tensor([[1., 1., 1., 1.]])}
    masker.current_prune_rate = lambda step: 0.5  # 1 of the 2 active weights: -0.3 goes, position 3 comes
    update = masker.update_topology(step=1)
    assert masker.masks['weight'].int().tolist() == [[1, 0, 0, 1]]
    assert (update.pruned, update.regrown) == (1, 1)
    assert torch.equal(model.weight, torch.tensor([[0.4, 0.0, 0.0, 0.0]]))  # a regrown weight starts at zero


def test_masks_zero_weights_and_sgd_momentum_but_not_adam_moments():
    for opt, state_key in ((torch.optim.SGD, 'momentum_buffer'), (torch.optim.AdamW, 'exp_avg')):
        model = nn.Linear(8, 8, bias=False)
        optimizer = opt(model.parameters(), lr=0.1, **({'momentum': 0.9} if opt is torch.optim.SGD else {}))
        masker = _masker(model, optimizer, update_frequency=1000)
        masker.initialize()
        model(torch.randn(2, 8)).sum().backward()
        optimizer.step()
        pruned = ~masker.masks['weight']
        assert model.weight[pruned].abs().sum() > 0  # gradients are not masked
        assert masker.step(1) is None  # the masks applied, no topology update at this step
        assert not model.weight[pruned].any()
        assert bool(optimizer.state[model.weight][state_key][pruned].any()) == (state_key == 'exp_avg')


def test_ema_of_a_masked_tensor_follows_the_official_rule():
    model = nn.Linear(2, 2, bias=False)
    masker = _masker(model)
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 4.0], [6.0, 8.0]]))
        ema.module.weight.copy_(torch.tensor([[1.0, 0.0], [3.0, 5.0]]))
    masker.load_state_dict({'weight': torch.tensor([[1, 1], [0, 1]], dtype=torch.bool)})
    masker.apply()  # the weight at [1][0] is pruned
    masker.update_ema(ema, model, step=None)
    # active: 0.5 * ema + 0.5 * w; active but zero in the EMA: the weight itself; inactive: zero
    assert ema.module.weight.tolist() == [[1.5, 4.0], [0.0, 6.5]]


def test_masks_resume_from_their_state_and_refuse_other_models():
    model = nn.Linear(8, 8, bias=False)
    masker = _masker(model)
    masker.initialize()
    other = _masker(nn.Linear(8, 8, bias=False))
    other.load_state_dict(masker.state_dict())
    assert torch.equal(other.masks['weight'], masker.masks['weight'])
    with pytest.raises(ValueError, match=r"sparse mask 'weight' has shape \(8, 8\), the parameter \(4, 8\)"):
        _masker(nn.Linear(8, 4, bias=False)).load_state_dict(masker.state_dict())
    with pytest.raises(ValueError, match=r"sparse mask 'fc.weight' names no masked parameter"):
        _masker(model).load_state_dict({'fc.weight': masker.masks['weight']})


def _broadcast_worker(rank: int, folder: str) -> None:
    torch.distributed.init_process_group('gloo', init_method=f'file://{folder}/init', rank=rank, world_size=2)
    try:
        masker = _masker(nn.Linear(32, 32, bias=False), seed=rank)  # each process draws its own masks
        masker.initialize()
        torch.save(masker.masks['weight'], f'{folder}/{rank}.pt')
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_every_process_takes_rank_0s_masks(tmp_path):
    torch.multiprocessing.start_processes(_broadcast_worker, args=(str(tmp_path),), nprocs=2, start_method='spawn')
    rank_0, rank_1 = (torch.load(tmp_path / f'{rank}.pt') for rank in (0, 1))
    assert torch.equal(rank_0, rank_1)
    alone = _masker(nn.Linear(32, 32, bias=False), seed=1)
    alone.initialize()
    assert not torch.equal(alone.masks['weight'], rank_0)  # rank 1's own draw, replaced by rank 0's


# ------------------------------------------------------------------------------------------- config

def test_off_by_default_and_named_after_the_official_flags():
    sparse = Config().sparse
    assert sparse.enabled is False
    assert (sparse.sparsity, sparse.init, sparse.prune, sparse.growth, sparse.prune_rate, sparse.update_frequency,
            sparse.decay_schedule, sparse.fix, sparse.only_L) == \
        (0.4, 'snip', 'magnitude', 'random', 0.3, 100, 'cosine', False, False)
    demo = load_config(REPO_ROOT / 'configs' / 'demo' / 'digits_inceptionnext_atto.yaml')
    assert demo.sparse == Config().sparse


def test_bad_sparse_settings_are_one_line_each(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('model:\n  name: van_b0\nsparse:\n  enabled: true\n  sparsity: 1.0\n  prune_rate: 0\n'
                    '  update_frequency: 0\n  growth: momentun\n  densty: 0.5\n')
    with pytest.raises(ConfigError) as error:
        load_config(path, ['data.dataset=lkconv/digits'])
    assert error.value.problems == [
        f"{path}:8: sparse.growth: expected one of 'random', 'gradient', 'momentum', got 'momentun'",
        f"{path}:9: sparse.densty: unknown key; did you mean 'sparse.sparsity'?",
    ]
    path.write_text(path.read_text().replace('  growth: momentun\n  densty: 0.5\n', ''))
    with pytest.raises(ConfigError) as error:
        load_config(path, ['data.dataset=lkconv/digits'])
    assert error.value.problems == [
        f'{path}:7: sparse.update_frequency: must be at least 1',
        f'{path}:5: sparse.sparsity: must be above 0 and below 1 (the fraction of masked weights that are zero), '
        f'got 1',
        f'{path}:6: sparse.prune_rate: must be above 0 and at most 1 (the fraction of active weights replaced per '
        f'update), got 0',
    ]


def test_only_large_kernels_on_a_model_without_them_fails_before_the_run(toy_data, tmp_path):
    overrides = toy_overrides(toy_data, tmp_path, 'only_l') + [*TINY_INCEPTIONNEXT, 'sparse.enabled=true',
                                                               'sparse.only_L=true']
    with pytest.raises(ConfigError, match=r"^command line: sparse.only_L: \w+ has no large-kernel bands "
                                          r"\(parameters named '\*large_kernel.tall.\*', .*\) to mask$"):
        train(load_config(None, overrides))
    assert not (tmp_path / 'only_l').exists()


# ------------------------------------------------------------------------------------------ training

def _watch_masker(monkeypatch):
    """Check the masks after every optimizer step, EMA update and topology update of the runs that follow;
    returns what they saw: the masker, the active count of each tensor after initialisation, and per update
    (step, the update's report, the masks before, the masks after)."""
    seen = dict(masker=None, initial=None, updates=[], steps=0)
    initialize, step, update_ema = SparseMasker.initialize, SparseMasker.step, SparseMasker.update_ema

    def watched_initialize(self, *args, **kwargs):
        initialize(self, *args, **kwargs)
        seen['masker'], seen['initial'] = self, {n: int(m.sum()) for n, m in self.masks.items()}

    def watched_step(self, number):
        before = {n: m.clone() for n, m in self.masks.items()}
        update = step(self, number)
        seen['steps'] += 1
        for name, mask in self.masks.items():
            assert not self.params[name][~mask].any(), f'{name}: a masked weight is nonzero after step {number}'
        if update is not None:
            seen['updates'].append((number, update, before, {n: m.clone() for n, m in self.masks.items()}))
        return update

    def watched_update_ema(self, model_ema, model, number):
        update_ema(self, model_ema, model, number)
        averages = dict(model_ema.module.named_parameters())
        for name, mask in self.masks.items():
            assert not averages[name][~mask].any(), f'{name}: a masked EMA weight is nonzero after step {number}'

    monkeypatch.setattr(SparseMasker, 'initialize', watched_initialize)
    monkeypatch.setattr(SparseMasker, 'step', watched_step)
    monkeypatch.setattr(SparseMasker, 'update_ema', watched_update_ema)
    return seen


def test_sparse_digits_run_keeps_its_density_and_learns(tmp_path, monkeypatch):
    """ERK densities, gradient growth every 10 steps, EMA on: each tensor keeps exactly its initial number
    of active weights through every update, masked weights and their EMA stay zero after every step, the
    masks move, and the network still learns the digits."""
    seen = _watch_masker(monkeypatch)
    config = load_config(REPO_ROOT / 'configs' / 'demo' / 'digits_inceptionnext_atto.yaml', [
        *TINY_INCEPTIONNEXT, f'data.dir={tmp_path}/digits', 'data.batch_size=32', 'train.epochs=3',
        'optim.lr=3e-3', 'sched.warmup_epochs=0', f'output.dir={tmp_path}/out', 'output.experiment=sparse',
        'train.model_ema=true', 'train.model_ema_decay=0.9', 'sparse.enabled=true', 'sparse.init=ERK',
        'sparse.growth=gradient', 'sparse.update_frequency=10'])
    run_dir = train(config)
    masker, initial, updates = seen['masker'], seen['initial'], seen['updates']

    # the initial masks: ERK's density per layer (drawn, so within binomial bounds), 0.6 over all of them
    erk = erk_densities({n: tuple(masker.params[n].shape) for n in masker.candidates}, 0.6)
    for name, count in initial.items():
        n, p = masker.masks[name].numel(), erk[name]
        assert abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1, (name, count, n * p)
    assert not any(erk[name] == 1.0 for name in initial)  # ERK's dense layers are left dense
    assert masker.density() == pytest.approx(0.6, abs=0.02)

    # 44 steps per epoch (the last, partial batch is dropped), 132 in all: an update every 10th step, each
    # with the scheduled prune rate
    assert seen['steps'] == 132
    assert [step for step, *_ in updates] == list(range(10, 131, 10))
    for step, update, before, after in updates:
        rate = prune_rate_at(step, 0.3, 132)
        assert update.prune_rate == rate
        assert update.pruned == sum(math.ceil(rate * int(m.sum())) for m in before.values())
        assert update.regrown == update.pruned
        assert {n: int(m.sum()) for n, m in after.items()} == initial, f'step {step}'
        moved = sum(int((before[n] & ~after[n]).sum()) for n in after)
        assert moved > 0, f'step {step}: no weight moved'

    state = load_checkpoint(run_dir / 'last.pth.tar')
    assert {n: int(m.sum()) for n, m in state[SPARSE_MASKS].items()} == initial
    for name, mask in state[SPARSE_MASKS].items():
        assert torch.equal(mask, masker.masks[name].cpu())
        assert not state['state_dict'][name][~mask].any() and not state['state_dict_ema'][name][~mask].any()
    # Adam's moments are not masked (as in the official code): the pruned weights keep theirs
    assert any(masker.optimizer.state[masker.params[n]]['exp_avg'][~m].any() for n, m in masker.masks.items())

    rows = read_summary(run_dir)
    assert float(rows[-1]['train_loss']) < float(rows[0]['train_loss'])
    best = max(float(r['eval_top1']) for r in rows)
    assert best > 50, f'top-1 {best}% on 10 classes after 3 epochs'  # chance is 10%
    log = (run_dir / 'train.log').read_text()
    assert 'sparse training: 26 tensors' in log and log.count('sparse update at step') == 13


def test_resumed_sparse_run_repeats_an_uninterrupted_one(toy_data, tmp_path, monkeypatch):
    """The official recipe's modes (SNIP, random growth) with EMA and gradient accumulation, stopped after
    epoch 1 and resumed: the same weights, EMA and masks, bit for bit, as a run never stopped. An update
    falls in each epoch, one on the first step after the resume."""
    seen = _watch_masker(monkeypatch)
    features = [*TINY_INCEPTIONNEXT, 'train.epochs=3', 'train.model_ema=true', 'train.model_ema_decay=0.9',
                'data.mixup=0.2', 'model.drop_path_rate=0.1', 'train.grad_accum_steps=2', 'sched.on_updates=true',
                'sparse.enabled=true', 'sparse.update_frequency=2']
    straight = train(load_config(None, toy_overrides(toy_data, tmp_path, 'straight') + features))
    assert [step for step, *_ in seen['updates']] == [2, 4, 6, 8]  # 3 optimizer steps per epoch
    # random growth keeps the density only in expectation: each update moves it a little
    for _, update, before, after in seen['updates']:
        assert update.pruned > 0 and update.regrown > 0
        for name in after:
            drift = abs(int(after[name].sum()) - int(before[name].sum()))
            assert drift <= 5 * math.sqrt(update.pruned) + 2, name

    stopped = train(load_config(None, toy_overrides(toy_data, tmp_path, 'resumed') + features + ['train.stop_epoch=1']))
    with pytest.raises(RunFolderError, match=r'cannot resume .* with changed sparse.prune_rate \(0.3 -> 0.5\)'):
        train(load_config(None, toy_overrides(toy_data, tmp_path, 'resumed') + features + ['sparse.prune_rate=0.5']),
              resume=RESUME_LATEST)
    resumed = train(load_config(None, toy_overrides(toy_data, tmp_path, 'resumed') + features), resume=RESUME_LATEST)
    assert resumed == stopped

    for a, b in zip(read_summary(straight), read_summary(resumed)):
        for column in ('train_loss', 'eval_loss', 'eval_top1', 'lr'):
            assert a[column] == b[column], (a, b)
    final_a, final_b = load_checkpoint(straight / 'last.pth.tar'), load_checkpoint(resumed / 'last.pth.tar')
    for key in ('state_dict', 'state_dict_ema', SPARSE_MASKS):
        assert final_a[key].keys() == final_b[key].keys()
        for name, tensor in final_a[key].items():
            assert torch.equal(tensor, final_b[key][name]), f'{key}.{name}'
    assert final_a['num_updates'] == final_b['num_updates'] == 9
    log = (resumed / 'train.log').read_text()
    assert log.count('sparse training:') == 1  # the resumed command took its masks from the checkpoint
    assert 'resumed after epoch 1' in log
