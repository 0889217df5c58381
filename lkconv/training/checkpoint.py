"""Training checkpoints: what they hold, and writing them so that a killed run never leaves a corrupt one.

Every file of a run (checkpoints, summary, resolved config) is written to a temporary file in the same
folder, flushed to disk and renamed over the target: a reader sees the old file or the new one, never a
partial one. A checkpoint holds everything `--resume` needs to continue exactly where the run stopped;
its `state_dict` / `state_dict_ema` keys are the ones timm's own loaders read.
"""
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Optional, Union

import torch
import torch.nn as nn
from timm.utils import unwrap_model

__all__ = [
    'CHECKPOINT_VERSION', 'CheckpointError', 'atomic_copy', 'atomic_write', 'atomic_write_text', 'load_checkpoint',
    'make_checkpoint', 'remove_temp_files', 'restore_checkpoint', 'save_checkpoint',
]

CHECKPOINT_VERSION = 1
_TEMP_MARK = '.tmp-'
PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    pass


def _temp_path(path: Path) -> Path:
    return path.with_name(f'.{path.name}{_TEMP_MARK}{os.getpid()}')


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    temp = _temp_path(path)
    try:
        with open(temp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not every file system lets a directory be opened or synced


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def atomic_copy(source: PathLike, target: PathLike) -> None:
    def copy(f: BinaryIO) -> None:
        with open(source, 'rb') as src:
            shutil.copyfileobj(src, f)
    atomic_write(target, copy)


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def remove_temp_files(folder: PathLike) -> None:
    """Delete temporary files left by a process killed while writing."""
    for path in Path(folder).glob(f'.*{_TEMP_MARK}*'):
        if path.is_file():
            path.unlink(missing_ok=True)


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint onto the CPU; a missing, truncated or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' cannot be read (corrupt or not a checkpoint): {e}") from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


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
) -> Dict[str, Any]:
    """The state after `epoch` completed epochs."""
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
    return state


def restore_checkpoint(
        checkpoint: Dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler=None,
        loss_scaler=None,
        model_ema: Optional[nn.Module] = None,
) -> None:
    """Load a `make_checkpoint` state into freshly built training objects (strictly)."""
    missing = [k for k in ('state_dict', 'optimizer', 'epoch') if k not in checkpoint]
    if model_ema is not None and 'state_dict_ema' not in checkpoint:
        missing.append('state_dict_ema')
    if missing:
        raise CheckpointError(f'checkpoint lacks {", ".join(missing)}: not a resumable training checkpoint')
    try:
        unwrap_model(model).load_state_dict(checkpoint['state_dict'])
        if model_ema is not None:
            unwrap_model(model_ema).load_state_dict(checkpoint['state_dict_ema'])
    except RuntimeError as e:
        raise CheckpointError(f'checkpoint does not match the model: {e}') from e
    optimizer.load_state_dict(checkpoint['optimizer'])
    if scheduler is not None and 'scheduler' in checkpoint:
        scheduler.load_state_dict(checkpoint['scheduler'])
    if loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
        loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
