"""Training checkpoints: what they hold, and writing them so that a killed run never leaves a corrupt one.

Every file of a run (checkpoints, summary, resolved config) is written to a temporary file in the same
folder, flushed to disk and renamed over the target: a reader sees the old file or the new one, never a
partial one. A checkpoint holds everything `--resume` needs to continue exactly where the run stopped
(with sparse training, the masks too: `sparse_masks`); its `state_dict` / `state_dict_ema` keys are the
ones timm's own loaders read.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn
from timm.utils import unwrap_model

from ..utils import TEMP_MARK, atomic_write
from ..zoo.checkpoints import LABEL_NAMES, CheckpointError, load_checkpoint

__all__ = [
    'CHECKPOINT_VERSION', 'CheckpointError', 'LABEL_NAMES', 'SPARSE_MASKS', 'check_resumable', 'load_checkpoint',
    'make_checkpoint', 'remove_temp_files', 'restore_checkpoint', 'save_checkpoint',
]

CHECKPOINT_VERSION = 1
SPARSE_MASKS = 'sparse_masks'  # the sparse-training masks by parameter name (lkconv.training.sparsity)
PathLike = Union[str, Path]


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def remove_temp_files(folder: PathLike) -> None:
    """Delete temporary files left by a process killed while writing."""
    for path in Path(folder).glob(f'.*{TEMP_MARK}*'):
        if path.is_file():
            path.unlink(missing_ok=True)


def check_resumable(checkpoint: Dict[str, Any], path: PathLike) -> None:
    """Raise CheckpointError unless `checkpoint` is a training checkpoint written by `make_checkpoint`."""
    missing = [k for k in ('state_dict', 'optimizer', 'epoch', 'config') if k not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' lacks {', '.join(missing)}: not a training checkpoint of "
                              f"`lkconv train`, so there is nothing to resume")


def make_checkpoint(
        *,
        epoch: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: Dict[str, Any],
        data_config: Dict[str, Any],
        num_updates: int,
        metric: Optional[float],
        best_metric: Optional[float],
        best_epoch: Optional[int],
        scheduler=None,
        loss_scaler=None,
        model_ema: Optional[nn.Module] = None,
        label_names: Optional[List[str]] = None,
        masker=None,
) -> Dict[str, Any]:
    """The state after `epoch` completed epochs; `label_names`: the training set's class names by output;
    `masker`: the run's `SparseMasker`, if it trains sparse."""
    model = unwrap_model(model)
    state = {
        'version': CHECKPOINT_VERSION,
        'arch': config['model']['name'],
        'epoch': epoch,
        'num_updates': num_updates,
        'state_dict': model.state_dict(),
        'optimizer': optimizer.state_dict(),
        'config': config,
        'data_config': {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        'metric': metric,
        'best_metric': best_metric,
        'best_epoch': best_epoch,
    }
    if scheduler is not None:
        state['scheduler'] = scheduler.state_dict()
    if loss_scaler is not None:
        state[loss_scaler.state_dict_key] = loss_scaler.state_dict()
    if model_ema is not None:
        state['state_dict_ema'] = unwrap_model(model_ema).state_dict()
    if label_names is not None:
        state[LABEL_NAMES] = list(label_names)
    if masker is not None:
        state[SPARSE_MASKS] = masker.state_dict()
    return state


def restore_checkpoint(
        checkpoint: Dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler=None,
        loss_scaler=None,
        model_ema: Optional[nn.Module] = None,
        masker=None,
) -> None:
    """Load a `make_checkpoint` state (see `check_resumable`) into freshly built training objects (strictly)."""
    if model_ema is not None and 'state_dict_ema' not in checkpoint:
        raise CheckpointError('checkpoint lacks state_dict_ema: its run trained without EMA')
    if masker is not None and SPARSE_MASKS not in checkpoint:
        raise CheckpointError(f'checkpoint lacks {SPARSE_MASKS}: its run trained without sparse.enabled')
    try:
        unwrap_model(model).load_state_dict(checkpoint['state_dict'])
        if model_ema is not None:
            unwrap_model(model_ema).load_state_dict(checkpoint['state_dict_ema'])
    except RuntimeError as e:
        raise CheckpointError(f'checkpoint does not match the model: {e}') from e
    if masker is not None:
        try:
            masker.load_state_dict(checkpoint[SPARSE_MASKS])
        except ValueError as e:
            raise CheckpointError(f'checkpoint does not match the model: {e}') from e
    optimizer.load_state_dict(checkpoint['optimizer'])
    if scheduler is not None and 'scheduler' in checkpoint:
        scheduler.load_state_dict(checkpoint['scheduler'])
    if loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
        loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
