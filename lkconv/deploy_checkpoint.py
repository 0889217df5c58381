"""Deploy-form checkpoints: a re-parameterised model's weights, and how to build the model they fit.

`timm.utils.reparameterize_model` turns a model into its deploy form (UniRepLKNet's Dilated Reparam
Blocks become one depthwise conv, LSNet's Conv-BN pairs one conv, ...). Its state_dict no longer fits
the model `timm.create_model` builds, so a deploy checkpoint says which model it is for, and is loaded
by building that model, re-parameterising it (the fused values are then overwritten) and loading the
weights strictly. This works for every model whatever its re-parameterisation does, timm's included.

File layout (`torch.save` of a dict): `form` ('deploy'), `arch` (timm model name), `num_classes`,
`data_config` (the evaluation preprocessing) and `state_dict`.
"""
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.utils import reparameterize_model

from .training.checkpoint import CheckpointError, atomic_write

__all__ = ['is_deploy_checkpoint', 'save_deploy_checkpoint', 'create_deploy_model', 'load_deploy_model']

DEPLOY_FORM = 'deploy'


def is_deploy_checkpoint(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and checkpoint.get('form') == DEPLOY_FORM and 'arch' in checkpoint


def save_deploy_checkpoint(model: nn.Module, name: str, data_config: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Write the (already re-parameterised) `model` as a deploy checkpoint of timm model `name`."""
    checkpoint = dict(
        form=DEPLOY_FORM, arch=name, num_classes=model.num_classes, data_config=dict(data_config),
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(checkpoint, f))
    return path


def create_deploy_model(name: str, num_classes: int, state_dict: Dict[str, torch.Tensor]) -> nn.Module:
    """Model `name` in its deploy form (eval mode) holding `state_dict`."""
    model = timm.create_model(name, num_classes=num_classes).eval()
    model = reparameterize_model(model)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CheckpointError(f'deploy checkpoint does not fit the deploy form of {name}: {e}') from e
    return model


def load_deploy_model(checkpoint: Dict[str, Any]) -> Tuple[nn.Module, Dict[str, Any], str]:
    """The model of a loaded deploy checkpoint, its data config and its name."""
    if not is_deploy_checkpoint(checkpoint):
        raise CheckpointError('not a deploy checkpoint (written by `lkconv reparam`)')
    name = checkpoint['arch']
    model = create_deploy_model(name, checkpoint['num_classes'], checkpoint['state_dict'])
    return model, dict(checkpoint['data_config']), name
