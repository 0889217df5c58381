"""Helpers shared by the test modules (fixtures are in conftest.py; parity.py loads the parity fixtures;
gpu_check_fakes.py holds sections for the GPU check's worker processes):

- the registered models, the models that stand for each code path, and their parameter counts (the one
  table of parameter-count pins, checked for every model by tests/test_contract.py);
- meta-device models built once per process, for read-only structural checks;
- weights away from their initial values, for tests that initialisation would make vacuous;
- a tiny image folder and the training overrides that run on it.
"""
import csv
import functools
from pathlib import Path
from typing import List

import numpy as np
import timm
import torch
import torch.nn as nn
from PIL import Image

import lkconv

# ------------------------------------------------------------------------------------------------ models
MODELS = lkconv.list_models()

# The smallest model of each family (the first part of the model names), for the slowest checks
# (test_contract.py holds this list equal to the registry's smallest per family).
SMALLEST_PER_FAMILY = ['fdconv_inceptionnext_atto', 'inceptionnext_atto', 'lsnet_t', 'replknet_31b', 'slak_tiny',
                       'unireplknet_a', 'van_b0']

# One model per distinct code path: the smallest model of each group of models built from the same modules
# (see `code_path`). The larger variants of a group run the same code with bigger tables of settings, so the
# numerical checks run on these alone, while the structural checks run on every model (test_contract.py
# holds this list equal to the groups of the registry).
CODE_PATH_MODELS = ['unireplknet_a', 'inceptionnext_atto', 'van_b0', 'lsnet_t', 'lsnet_t_distill',
                    'fdconv_unireplknet_a', 'fdconv_inceptionnext_atto', 'fdconv_resnet50', 'replknet_31b',
                    'replknet_xl', 'slak_tiny']

# Parameter counts with a 1000-class head, training form (as the models are built and as the released
# checkpoints are), from the specifications in shared/specs: unireplknet.md §3, inceptionnext.md §10,
# van.md §10, lsnet.md §11, replknet.md §3, slak.md (the dense counts, zeros of the sparse weights
# included); the FDConv models are their base network plus FDConv's parameters (fdconv.md §9: ResNet-50
# + 3,647,120).
PARAM_COUNTS = {
    'unireplknet_a': 4_649_060,
    'unireplknet_f': 6_489_328,
    'unireplknet_p': 11_080_520,
    'unireplknet_n': 18_818_880,
    'unireplknet_t': 31_693_420,
    'unireplknet_s': 56_456_704,
    'unireplknet_b': 99_089_416,
    'unireplknet_l': 220_076_056,
    'unireplknet_xl': 388_690_984,
    'inceptionnext_atto': 4_156_520,
    'inceptionnext_tiny': 28_055_680,
    'inceptionnext_small': 49_374_016,
    'inceptionnext_base': 86_672_136,
    'van_b0': 4_105_800,
    'van_b1': 13_861_800,
    'van_b2': 26_578_472,
    'van_b3': 44_765_608,
    'van_b4': 60_283_176,
    'van_b5': 89_967_688,
    'van_b6': 199_829_416,  # stage-3 width 384, as the official code
    'lsnet_t': 11_409_832,
    'lsnet_s': 16_146_304,
    'lsnet_b': 23_313_608,
    'lsnet_t_distill': 11_795_600,
    'lsnet_s_distill': 16_596_200,
    'lsnet_b_distill': 23_827_632,
    'fdconv_resnet50': 29_204_152,
    'fdconv_resnet101': 52_048_378,
    'fdconv_unireplknet_a': 5_835_556,
    'fdconv_unireplknet_t': 40_700_080,
    'fdconv_inceptionnext_atto': 5_127_256,
    'fdconv_inceptionnext_tiny': 35_291_464,
    'replknet_31b': 79_864_168,
    'replknet_31l': 172_671_016,
    'replknet_xl': 335_435_752,
    'slak_tiny': 50_703_838,
    'slak_small': 91_131_820,
    'slak_base': 157_950_792,
}
# After `timm.utils.reparameterize_model` (test_contract holds the `deploy=True` builds equal to it, key for key;
# the README counts of UniRepLKNet and LSNet are these; RepLKNet's official `structural_reparam()` gives these)
DEPLOY_PARAM_COUNTS = {
    'unireplknet_a': 4_437_300,
    'unireplknet_f': 6_235_216,
    'unireplknet_p': 10_741_704,
    'unireplknet_n': 18_318_560,
    'unireplknet_t': 31_037_980,
    'unireplknet_s': 55_645_984,
    'unireplknet_b': 98_008_456,
    'unireplknet_l': 218_454_616,
    'unireplknet_xl': 386_529_064,
    'lsnet_t': 11_370_488,
    'lsnet_b': 23_249_320,
    'replknet_31b': 79_527_272,
    'replknet_31l': 172_165_672,
    'replknet_xl': 335_399_656,
    'slak_tiny': 50_445_718,  # lkconv's merge (not published): both bands of each large kernel kept, BNs fused
    'slak_small': 90_604_240,
    'slak_base': 157_247_532,
}
# Training form with the 21841-class head of the ImageNet-22k checkpoints (unireplknet.md §3, replknet.md §3)
IN22K_PARAM_COUNTS = {
    'unireplknet_s': 72_483_433,
    'replknet_31b': 101_226_193,
    'replknet_31l': 204_703_633,
    'replknet_xl': 378_138_961,
}


def models_of(family: str) -> List[str]:
    """The registered models of a family (the first part of their names: 'lsnet' gives the distilled ones too)."""
    return [n for n in MODELS if n.split('_')[0] == family]


@functools.lru_cache(maxsize=None)
def meta_model(name: str) -> nn.Module:
    """`name` with its defaults on the meta device, built once per process. Shared: do not modify it."""
    return timm.create_model(name, device='meta')


def code_path(model: nn.Module) -> frozenset:
    """What decides the code a model runs: the classes of its modules, each with the names of the submodules
    it has (a distillation head, a large-kernel layer without its small-kernel branch); the numbered
    children of sequences are left out, so depth and width do not count."""
    return frozenset((type(m).__qualname__, tuple(n for n, _ in m.named_children() if not n.isdigit()))
                     for m in model.modules())


# --------------------------------------------------------------------------- weights away from initialisation
# At initialisation several branches are nearly silent (layer scales of 1e-6, GRN and some BatchNorm weights
# at 0, zero attention biases, identity BatchNorm statistics): fusing them, exporting them or running them in
# low precision would be checked on values that hardly matter.

def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine terms for every BatchNorm2d, so that fusing them is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


def non_trivial(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every 1-D (or GRN-shaped) parameter and attention-bias table, and for the BatchNorm
    statistics: biases ~ N(0, 0.1), scales ~ U(0.5, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('bias', 'attention_biases')):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif p.dim() == 1 or p.shape[:-1] == (1, 1, 1):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


# ------------------------------------------------------------------------------------- tiny training runs
# zoo models shrunk through `model.kwargs` (a few ten thousand parameters), for 32x32 images
TINY_INCEPTIONNEXT = ['model.name=inceptionnext_atto', 'model.kwargs={dims: [8, 16, 32, 64], depths: [1, 1, 1, 1]}']
TINY_UNIREPLKNET = ['model.name=unireplknet_a', 'model.kwargs={dims: [8, 16, 32, 64], depths: [1, 1, 1, 1], '
                                                'kernel_sizes: [[3], [13], [13], [13]]}']


def write_toy_imagefolder(root: Path, per_class: int = 12, val_per_class: int = 4, size: int = 32) -> Path:
    """Two classes told apart by which half of the image is bright, with noise."""
    rng = np.random.default_rng(0)
    for split, count in (('train', per_class), ('val', val_per_class)):
        for label in range(2):
            folder = root / split / f'class{label}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 100, (size, size, 3))
                pixels[:, label * size // 2:(label + 1) * size // 2] += 120
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f'{i}.png')
    return root


def toy_overrides(data_dir: Path, output: Path, experiment: str = 'run'):
    """Config overrides for a 2-epoch CPU run on `write_toy_imagefolder`'s folder."""
    return [
        f'data.dir={data_dir}', 'data.val_split=val', 'data.img_size=32', 'data.crop_pct=1.0', 'data.batch_size=4',
        'data.workers=0', 'data.hflip=0.0', 'data.color_jitter=0.0', 'data.scale=[0.8, 1.0]', 'model.num_classes=2',
        'train.device=cpu', 'train.epochs=2', 'sched.warmup_epochs=0', 'optim.lr=2e-3',
        f'output.dir={output}', f'output.experiment={experiment}', 'output.log_interval=2',
    ]


def read_summary(run_dir: Path):
    """The rows of a run's summary.csv."""
    with open(run_dir / 'summary.csv', newline='') as f:
        return list(csv.DictReader(f))
