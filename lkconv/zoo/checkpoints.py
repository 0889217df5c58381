"""Reading a checkpoint file, of any form lkconv writes or an authors' weights file, with one-line errors.

A training run's checkpoints (`lkconv.training.checkpoint`), a deploy-form checkpoint
(`lkconv.zoo.deploy_checkpoint`) and a published weights file are all a `torch.save`d dict; what a file
is and how it becomes a model is decided by `lkconv.zoo.loading`. torch is imported on the first read: the
file names and errors here are used while the command line parses its arguments.
"""
from pathlib import Path
from typing import Any, Dict, Union

__all__ = ['BEST_CHECKPOINT', 'LAST_CHECKPOINT', 'LABEL_NAMES', 'CheckpointError', 'load_checkpoint']

LAST_CHECKPOINT = 'last.pth.tar'  # a run's checkpoints, in its folder
BEST_CHECKPOINT = 'best.pth.tar'
LABEL_NAMES = 'label_names'  # the training set's class names, one per output; timm's pretrained-cfg name


class CheckpointError(RuntimeError):
    pass


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a checkpoint onto the CPU; a missing, truncated or foreign file raises CheckpointError."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        best = path.with_name(BEST_CHECKPOINT)
        hint = f"; '{best}' beside it may be intact" if path.name == LAST_CHECKPOINT and best.is_file() else ''
        raise CheckpointError(f"checkpoint '{path}' cannot be read: {_unreadable_reason(path, e)}{hint}") from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def _unreadable_reason(path: Path, error: Exception) -> str:
    """What a file that torch.load refused is, in a few words."""
    with open(path, 'rb') as f:
        head = f.read(256)
    first_sentence = str(error).strip().split('. ')[0].splitlines()[0] if str(error).strip() else type(error).__name__
    if not head:
        return 'the file is empty'
    if head.startswith(b'PK'):  # torch.save's zip format
        return f'it is truncated or damaged ({first_sentence})'
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        text = None
    if text is not None and '\0' not in text:
        return f"it is a text file, not a PyTorch checkpoint (it begins {text.strip()[:40]!r})"
    return f'not a PyTorch checkpoint ({first_sentence})'
