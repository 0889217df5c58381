"""Deploy-form checkpoints: a re-parameterised model's weights, and how to build the model they fit.

`timm.utils.reparameterize_model` turns a model into its deploy form (UniRepLKNet's Dilated Reparam
Blocks become one depthwise conv, LSNet's Conv-BN pairs one conv, ...). Its state_dict no longer fits
the model `timm.create_model` builds, so a deploy checkpoint says which model it is for, and is loaded
by building that model, re-parameterising it (the fused values are then overwritten) and loading the
weights strictly. This works for every model whatever its re-parameterisation does, timm's included.

File layout (`torch.save` of a dict): `form` ('deploy'), `arch` (timm model name), `num_classes`,
`model_args` (the construction arguments timm recorded, such as a run's `model.kwargs`: timm's
`get_model_args`, what its hub export stores), `data_config` (the evaluation preprocessing: input_size,
interpolation, mean, std, crop_pct, crop_mode), `label_names` (the class names, one per output; absent
where unknown) and `state_dict`. Files written before `model_args` and `label_names` existed load as
before: the variant's default arguments, no class names.

In memory the class names travel in the data config under `label_names` (as in timm's pretrained cfgs):
`load_eval_model` and `load_deploy_model` return them there, and every writer (deploy checkpoint, ONNX
metadata, timm hub folder) takes them from there with `split_label_names`.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.models import get_model_args
from timm.utils import reparameterize_model

from ..utils import atomic_write
from .checkpoints import LABEL_NAMES, CheckpointError

__all__ = ['is_deploy_checkpoint', 'save_deploy_checkpoint', 'create_deploy_model', 'load_deploy_model',
           'split_label_names']

DEPLOY_FORM = 'deploy'


def split_label_names(data_config: Dict[str, Any], num_classes: int) -> Tuple[Dict[str, Any], Optional[List[str]]]:
    """The preprocessing part of a data config, and its class names (None where it has none)."""
    preprocessing = dict(data_config)
    names = preprocessing.pop(LABEL_NAMES, None)
    if not names:
        return preprocessing, None
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise ValueError(f'{len(names)} class names for a model with {num_classes} outputs')
    return preprocessing, names


def is_deploy_checkpoint(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and checkpoint.get('form') == DEPLOY_FORM and 'arch' in checkpoint


def save_deploy_checkpoint(model: nn.Module, name: str, data_config: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Write the (already re-parameterised) `model` as a deploy checkpoint of timm model `name`, with its
    data config and the class names the data config carries."""
    preprocessing, label_names = split_label_names(data_config, model.num_classes)
    checkpoint = dict(form=DEPLOY_FORM, arch=name, num_classes=model.num_classes, model_args=get_model_args(model),
                      data_config=preprocessing)
    if label_names is not None:
        checkpoint[LABEL_NAMES] = label_names
    checkpoint['state_dict'] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(checkpoint, f))
    return path


def create_deploy_model(name: str, num_classes: int, state_dict: Dict[str, torch.Tensor],
                        model_args: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Model `name` (built with `model_args`) in its deploy form (eval mode) holding `state_dict`."""
    model = timm.create_model(name, **dict(model_args or {}, num_classes=num_classes)).eval()
    model = reparameterize_model(model)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CheckpointError(f'deploy checkpoint does not fit the deploy form of {name}: {e}') from e
    return model


def load_deploy_model(checkpoint: Dict[str, Any]) -> Tuple[nn.Module, Dict[str, Any], str]:
    """The model of a loaded deploy checkpoint, its data config (with the class names, where stored) and
    its name."""
    if not is_deploy_checkpoint(checkpoint):
        raise CheckpointError('not a deploy checkpoint (written by `lkconv reparam`)')
    name = checkpoint['arch']
    model = create_deploy_model(name, checkpoint['num_classes'], checkpoint['state_dict'], checkpoint.get('model_args'))
    data_config = dict(checkpoint['data_config'])
    if checkpoint.get(LABEL_NAMES):
        data_config[LABEL_NAMES] = list(checkpoint[LABEL_NAMES])
    return model, data_config, name
