"""Dynamic sparse training as SLaK trains (Liu et al., "More ConvNets in the 2020s: Scaling up Kernels Beyond
51x51 using Sparsity", ICLR 2023; github.com/VITA-Group/SLaK, `sparse_core.py`, `funcs.py`, `engine.py`,
`model_sema.py`): binary masks over the model's weights, kept at a target density while the positions
they keep move during training.

- Masked tensors: every parameter with 2 or 4 dimensions (convolution and linear weights, of any model);
  biases, norms and layer scales stay dense. `only_L` keeps only SLaK's two rectangular kernels.
- Layer-wise densities (`init`): `snip` (the official choice: the fraction of each layer's |w * dL/dw|
  scores, on one training batch, above the global threshold), `uniform`, `ERK` (Erdos-Renyi-Kernel) or
  `resume` (the weights' own zeros). Each layer's positions are then drawn at random with that density;
  a layer drawn 99% dense or more stays dense.
- After every optimizer step the masked weights are zeroed (and an SGD momentum buffer with them);
  gradients and Adam moments are not masked. Every `update_frequency` optimizer steps each layer drops the
  ceil(rate x active) active weights of least magnitude and regrows as many (`random`: each inactive
  position with probability regrowth / inactive, so only in expectation; `gradient` / `momentum`: the
  inactive positions of largest |gradient| / |Adam update|). The rate decays over the run's optimizer
  steps from `prune_rate` to 0.005 (cosine), or linearly to 0.
- The EMA of a masked tensor is masked too, and takes the weight's value where the mask is active but
  the EMA is still zero.

Where this differs from the official code, and why:
- The masks are saved in the checkpoints and a resumed run continues with them: it repeats an
  uninterrupted run exactly. (The official code saves none; its resume rebuilds masks from the zeros.)
- Masks are applied after every optimizer step whatever the precision; the official code skips them under
  its AMP (a known pitfall: the weights then grow back dense).
- Random draws come from a generator seeded by (train.seed, optimizer step), so every process draws the
  same masks and a resumed run draws what the uninterrupted one drew. Under DDP the masks are still
  broadcast from rank 0 whenever they change (SNIP scores differ between processes); the official code
  broadcasts before every application.
- Ties in the magnitude and gradient rankings go to the lower position (a stable sort), so a run repeats
  on any device; the official sort leaves them to the backend.
- Masks are boolean (one byte per weight, not four) and named as in the unwrapped model (no `module.`).
- Only the modes of specs/slak.md §7 are offered: prune `magnitude`; growth `random`, `gradient`,
  `momentum`; no redistribution between layers. The official code's other modes (`SET`,
  `global_magnitude`; `momentum_neuron`, `random_unfired`, `mix`) are used by no official recipe.
"""
import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'LARGE_KERNEL_NAMES', 'PRUNE_RATE_MIN', 'SparseMasker', 'TopologyUpdate', 'erk_densities', 'grow_by_score',
    'grow_randomly', 'magnitude_prune', 'masked_parameter_names', 'prune_rate_at', 'snip_densities',
]

PRUNE_RATE_MIN = 0.005  # where the official cosine decay ends (eta_min of its CosineDecay)
DENSE_ENOUGH = 0.99  # a layer drawn this dense or more is left dense, as the official init does
# what `only_L` keeps: SLaK's two rectangular kernels, named `tall` / `wide` in lkconv's SLaK and `LoRA1` /
# `LoRA2` in the official one (whose rule is the name containing 'large_kernel.LoRA'); not the small kernel
LARGE_KERNEL_NAMES = ('large_kernel.tall.', 'large_kernel.wide.', 'large_kernel.LoRA')
_ADAM_EPS = 1e-8  # in the official momentum growth's exp_avg / (sqrt(exp_avg_sq) + eps)


# --------------------------------------------------------------------------- which tensors, how dense

def masked_parameter_names(model: nn.Module, only_large_kernels: bool = False) -> List[str]:
    """The parameters dynamic sparse training masks, in the model's order: every 2-D or 4-D one."""
    return [name for name, param in model.named_parameters()
            if param.dim() in (2, 4) and (not only_large_kernels or any(n in name for n in LARGE_KERNEL_NAMES))]


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float) -> Dict[str, float]:
    """Erdos-Renyi-Kernel densities: proportional to sum(shape) / prod(shape), scaled so that the layers
    together keep `density` of their weights; a layer that would exceed 1 is made dense and the scale is
    found again for the rest (all layers sharing the largest ratio at once)."""
    raw = {name: sum(shape) / math.prod(shape) for name, shape in shapes.items()}
    dense = set()
    while True:
        # epsilon * sum(raw_i * n_i) over the sparse layers must keep density * (all weights), the
        # dense layers' weights counted in full
        kept = sum(density * math.prod(s) if n not in dense else -(1 - density) * math.prod(s)
                   for n, s in shapes.items())
        divisor = sum(raw[n] * math.prod(s) for n, s in shapes.items() if n not in dense)
        epsilon = kept / divisor
        largest = max(raw[n] for n in shapes if n not in dense)
        if largest * epsilon <= 1:
            break
        dense.update(n for n in shapes if n not in dense and raw[n] == largest)
    return {name: 1.0 if name in dense else epsilon * raw[name] for name in shapes}


def snip_densities(scores: Mapping[str, torch.Tensor], density: float) -> Dict[str, float]:
    """SNIP's layer-wise densities: the k-th largest score over all layers (k = int(total x density)) is the
    threshold, and a layer's density is 1 - the fraction of its scores not strictly above it. Only these
    ratios are kept; the positions are drawn at random afterwards."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = max(int(flat.numel() * density), 1)
    threshold = torch.kthvalue(flat, flat.numel() - keep + 1).values
    return {name: 1 - (s <= threshold).sum().item() / s.numel() for name, s in scores.items()}


def prune_rate_at(step: int, prune_rate: float, total_steps: int, schedule: str = 'cosine') -> float:
    """The prune rate after `step` optimizer steps of a run of `total_steps`: cosine annealing from
    `prune_rate` to PRUNE_RATE_MIN (the official CosineDecay, in closed form), or linear to 0."""
    if schedule == 'cosine':
        return PRUNE_RATE_MIN + (prune_rate - PRUNE_RATE_MIN) * (1 + math.cos(math.pi * step / total_steps)) / 2
    if schedule == 'linear':
        return max(prune_rate * (1 - step / total_steps), 0.0)
    raise ValueError(f"unknown prune-rate schedule '{schedule}' (cosine, linear)")


# --------------------------------------------------------------------------------- prune and regrow

def magnitude_prune(mask: torch.Tensor, weight: torch.Tensor, rate: float) -> torch.Tensor:
    """The mask without its ceil(rate x active) active weights of least magnitude. The whole tensor is
    ranked: the inactive weights are zero, so they come first. Where nothing is to be removed, the mask
    becomes the weight's nonzeros."""
    active = int(mask.sum())
    remove = math.ceil(rate * active)
    if remove == 0:
        return (weight.detach() != 0).contiguous()
    order = torch.sort(weight.detach().abs().reshape(-1), stable=True).indices
    pruned = mask.clone(memory_format=torch.contiguous_format)  # positions below are in logical order
    pruned.view(-1)[order[:mask.numel() - active + remove]] = False
    return pruned


def grow_randomly(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Every inactive position turned on with probability count / inactive: `count` only in expectation,
    and a weight pruned just before may come back (as in the official random growth)."""
    inactive = mask.numel() - int(mask.sum())
    if inactive == 0:
        return mask
    draw = torch.rand(mask.shape, generator=generator, device=mask.device)
    return mask | (draw < count / inactive)


def grow_by_score(mask: torch.Tensor, score: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` inactive positions of largest |score| turned on (positions of equal score by order)."""
    candidates = score.detach().abs().reshape(-1) * (~mask).reshape(-1)
    order = torch.sort(candidates, descending=True, stable=True).indices
    grown = mask.clone(memory_format=torch.contiguous_format)
    grown.view(-1)[order[:count]] = True
    return grown


# ------------------------------------------------------------------------------------------ the masker

@dataclass
class TopologyUpdate:
    """What one prune-and-regrow did, over all masked tensors."""
    step: int
    prune_rate: float
    pruned: int
    regrown: int
    density: float

    def __str__(self) -> str:
        return (f'sparse update at step {self.step}: prune rate {self.prune_rate:.4f}, {self.pruned:,} weights '
                f'pruned, {self.regrown:,} regrown, density {self.density:.4f}')


class SparseMasker:
    """The masks of one model and their updates. Build it once the model is on its device, then either
    `initialize` it (a new run) or `load_state_dict` (a resumed run); call `step` after every optimizer
    step, before the gradients are cleared, and `update_ema` instead of the EMA's own update."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, sparsity: float, init: str,
                 growth: str, prune_rate: float, decay_schedule: str, update_frequency: int, fix: bool,
                 only_large_kernels: bool, total_steps: int, seed: int):
        names = masked_parameter_names(model, only_large_kernels)
        if not names:
            patterns = ', '.join(f"'*{n}*'" for n in LARGE_KERNEL_NAMES)
            wanted = f'large-kernel bands (parameters named {patterns})' if only_large_kernels else \
                '2-D or 4-D parameters'
            raise ValueError(f'{type(model).__name__} has no {wanted} to mask')
        if growth not in ('random', 'gradient', 'momentum'):
            raise ValueError(f"unknown growth mode '{growth}' (random, gradient, momentum)")
        self.model = model
        self.optimizer = optimizer
        self.params = dict(model.named_parameters())
        self.candidates = names  # masks of the layers left dense at initialisation are dropped
        self.density_target = 1 - sparsity
        self.init_mode = init
        self.growth = growth
        self.prune_rate = prune_rate
        self.decay_schedule = decay_schedule
        self.update_frequency = update_frequency
        self.fix = fix
        self.total_steps = max(total_steps, 1)
        self.seed = seed
        self.masks: Dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------- initialisation
    def initialize(self, batch: Optional[Callable[[], Tuple[torch.Tensor, torch.Tensor]]] = None) -> None:
        """Draw the initial masks and zero the masked weights; `batch` gives one training batch (images,
        hard labels), needed by `snip` only."""
        shapes = {name: tuple(self.params[name].shape) for name in self.candidates}
        if self.init_mode == 'resume':
            masks = {name: (self.params[name].detach() != 0).contiguous() for name in self.candidates}
        else:
            if self.init_mode == 'snip':
                if batch is None:
                    raise ValueError("sparse init 'snip' needs a training batch")
                densities = snip_densities(self._snip_scores(*batch()), self.density_target)
            elif self.init_mode == 'ERK':
                densities = erk_densities(shapes, self.density_target)
            elif self.init_mode == 'uniform':
                densities = {name: self.density_target for name in self.candidates}
            else:
                raise ValueError(f"unknown sparse init '{self.init_mode}' (snip, uniform, ERK, resume)")
            generator = self._generator(0)
            masks = {name: torch.rand(shapes[name], generator=generator, device=self.params[name].device)
                     < densities[name] for name in self.candidates}
        self.masks = {name: mask for name, mask in masks.items()
                      if mask.sum().item() / mask.numel() < DENSE_ENOUGH}
        self._broadcast()
        self.apply()

    def _snip_scores(self, images: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """|w * dL/dw| of every candidate, from plain cross-entropy on one batch through a copy of the model
        (the model itself, its statistics and gradients, stay as they are)."""
        device = self.params[self.candidates[0]].device
        net = copy.deepcopy(self.model)
        net.zero_grad()
        output = net(images.to(device))
        if isinstance(output, (tuple, list)):  # a distilled model in training: the class head
            output = output[0]
        F.cross_entropy(output.float(), target.to(device)).backward()
        copied = dict(net.named_parameters())
        scores = {}
        for name in self.candidates:
            param = copied[name]
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            scores[name] = (param.detach() * grad).abs()
        return scores

    # ------------------------------------------------------------------------------------- training
    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked weights, and an SGD momentum buffer with them (Adam's moments are left as they
        are, as the official code leaves them)."""
        for name, mask in self.masks.items():
            param = self.params[name]
            param.mul_(mask)
            buffer = self.optimizer.state.get(param, {}).get('momentum_buffer')
            if buffer is not None:
                buffer.mul_(mask)

    def step(self, step: int) -> Optional[TopologyUpdate]:
        """After optimizer step number `step` of the run (counting from 1): mask the weights and, every
        `update_frequency` steps, prune and regrow. Returns what the update did, if one ran."""
        self.apply()
        if self.fix or step % self.update_frequency:
            return None
        return self.update_topology(step)

    @torch.no_grad()
    def update_topology(self, step: int) -> TopologyUpdate:
        """Each masked tensor drops its weakest active weights and regrows as many inactive ones."""
        rate = self.current_prune_rate(step)
        generator = self._generator(step) if self.growth == 'random' else None
        pruned_total = regrown_total = 0
        for name, mask in self.masks.items():
            weight = self.params[name]
            active = int(mask.sum())
            pruned = magnitude_prune(mask, weight, rate)
            removed = active - int(pruned.sum())
            if self.growth == 'random':
                grown = grow_randomly(pruned, removed, generator)
            else:
                grown = grow_by_score(pruned, self._growth_score(name, weight), removed)
            mask.copy_(grown)
            pruned_total += removed
            regrown_total += int(grown.sum()) - (active - removed)
        self._broadcast()
        self.apply()
        return TopologyUpdate(step=step, prune_rate=rate, pruned=pruned_total, regrown=regrown_total,
                              density=self.density())

    def _growth_score(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if self.growth == 'gradient':  # this step's gradient: the caller has not cleared it yet
            return weight.grad if weight.grad is not None else torch.zeros_like(weight)
        state = self.optimizer.state.get(weight, {})
        if 'exp_avg' in state and 'exp_avg_sq' in state:
            return state['exp_avg'] / (state['exp_avg_sq'].sqrt() + _ADAM_EPS)
        if state.get('momentum_buffer') is not None:
            return state['momentum_buffer']
        raise ValueError(f"sparse growth 'momentum' needs an optimizer that keeps Adam moments (exp_avg, "
                         f"exp_avg_sq) or an SGD momentum buffer; {type(self.optimizer).__name__} keeps "
                         f"neither for {name}")

    @torch.no_grad()
    def update_ema(self, model_ema, model: nn.Module, step: int) -> None:
        """The EMA update (timm's ModelEmaV3, with its decay) followed by the official sparse EMA's rule for
        masked tensors: the average is masked, and where the mask is active but the average was zero before
        this update it takes the current weight."""
        averages = dict(model_ema.module.named_parameters())
        was_zero = {name: (averages[name] == 0) & mask for name, mask in self.masks.items()}
        model_ema.update(model, step=step)
        for name, mask in self.masks.items():
            average = averages[name]
            average.mul_(mask)
            average.copy_(torch.where(was_zero[name], self.params[name].detach(), average))

    # -------------------------------------------------------------------------------------- queries
    def current_prune_rate(self, step: int) -> float:
        return prune_rate_at(step, self.prune_rate, self.total_steps, self.decay_schedule)

    def density(self) -> float:
        """Active weights over all weights of the tensors sparse training selected, those left dense
        included (what `sparsity` sets: the official code reports the same)."""
        total = sum(self.params[name].numel() for name in self.candidates)
        inactive = sum(mask.numel() - int(mask.sum()) for mask in self.masks.values())
        return 1 - inactive / total

    def describe(self) -> str:
        """One line for the log: what is masked and how."""
        weights = sum(self.params[name].numel() for name in self.candidates)
        left_dense = len(self.candidates) - len(self.masks)
        updates = 'fixed masks' if self.fix else \
            f'{self.growth} growth every {self.update_frequency} steps, prune rate {self.prune_rate:g} ' \
            f'({self.decay_schedule} decay over {self.total_steps} steps)'
        return (f'sparse training: {len(self.candidates)} tensors of {weights:,} weights, {left_dense} of them left '
                f'dense; density {self.density():.4f} (target {self.density_target:g}, init {self.init_mode}); '
                f'{updates}')

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The masks by parameter name (everything else follows from the config and the step count)."""
        return {name: mask.clone() for name, mask in self.masks.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Take the masks of a checkpoint; ValueError naming the first that does not fit the model."""
        masks = {}
        for name, mask in state.items():
            if name not in self.params or name not in self.candidates:
                raise ValueError(f"sparse mask '{name}' names no masked parameter of {type(self.model).__name__}")
            param = self.params[name]
            if tuple(mask.shape) != tuple(param.shape):
                raise ValueError(f"sparse mask '{name}' has shape {tuple(mask.shape)}, the parameter "
                                 f"{tuple(param.shape)}")
            masks[name] = mask.to(device=param.device, dtype=torch.bool).contiguous()
        self.masks = masks

    # ------------------------------------------------------------------------------------- plumbing
    def _generator(self, step: int) -> torch.Generator:
        """A generator seeded by (seed, step): the same draws on every process and after a resume."""
        device = self.params[self.candidates[0]].device
        generator = torch.Generator(device=device)
        generator.manual_seed(int(np.random.SeedSequence([self.seed, step]).generate_state(1)[0]))
        return generator

    def _broadcast(self) -> None:
        """Rank 0's masks on every process (SNIP scores, for one, come from each process's own batch)."""
        distributed = torch.distributed
        if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() < 2:
            return
        for mask in self.masks.values():
            distributed.broadcast(mask.view(torch.uint8), src=0)
