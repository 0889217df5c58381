"""A model ready to evaluate, from whatever a user names: a model with its published weights, a weights
file in the authors' or timm's layout, an lkconv training checkpoint or a deploy-form checkpoint.

Every command that evaluates, measures, exports or re-parameterises a trained model loads it here, so a
checkpoint means the same to all of them: the architecture and class count come from an lkconv
checkpoint itself, its evaluation preprocessing and class names travel with it (`label_names` in the
returned data config), and a file that does not fit the model is one `CheckpointError` line.
"""
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import timm
import torch.nn as nn
from timm.data import resolve_data_config
from timm.utils import reparameterize_model

from .checkpoints import LABEL_NAMES, CheckpointError, load_checkpoint
from .deploy_checkpoint import is_deploy_checkpoint, load_deploy_model
from .names import check_model_name
from .weights import WeightsUnavailable, explain_download_failure

__all__ = ['LoadOptions', 'load_eval_model', 'model_arguments']


@dataclass
class LoadOptions:
    model: Optional[str] = None  # needed unless `checkpoint` is an lkconv training or deploy checkpoint
    checkpoint: Optional[str] = None
    pretrained: bool = False  # the model's published weights (when no checkpoint is given)
    random_init: bool = False  # neither: random weights (for export/reparam checks)
    num_classes: Optional[int] = None  # the class count of a weights file whose head differs from the default
    use_ema: bool = False  # the EMA weights of a training checkpoint
    reparam: bool = False  # re-parameterised into the deploy form
    # evaluation preprocessing over what the checkpoint or the model's pretrained cfg says
    img_size: Optional[int] = None
    crop_pct: Optional[float] = None
    crop_mode: Optional[str] = None
    interpolation: Optional[str] = None


def model_arguments(model_section: Mapping[str, Any]) -> Dict[str, Any]:
    """`timm.create_model`'s keyword arguments, weights aside, for a run config's `model` section (as
    `lkconv.training.config.ModelConfig` holds it, or a training checkpoint stores it)."""
    optional = {k: model_section.get(k) for k in ('num_classes', 'in_chans')}
    arguments = dict(drop_rate=model_section.get('drop_rate', 0.0),
                     drop_path_rate=model_section.get('drop_path_rate', 0.0),
                     **{k: v for k, v in optional.items() if v is not None})
    return dict(arguments, **(model_section.get('kwargs') or {}))


def _is_training_checkpoint(checkpoint: Dict[str, Any]) -> bool:
    return 'config' in checkpoint and 'state_dict' in checkpoint


def _with_overrides(data_config: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint's stored data config with the command line's values over it."""
    data_config = dict(data_config, **overrides)
    if 'img_size' in overrides:
        data_config['input_size'] = (data_config['input_size'][0], overrides['img_size'], overrides['img_size'])
    return data_config


def _training_checkpoint_model(checkpoint: Dict[str, Any], options: LoadOptions) -> Tuple[nn.Module, str]:
    """The model a training run built, with the weights it saved (the run's data and weight files need not
    exist here)."""
    model_section = checkpoint['config']['model']
    name = options.model or model_section['name']
    if name != model_section['name']:
        raise CheckpointError(f"checkpoint '{options.checkpoint}' is of {model_section['name']}, not {name}")
    model = timm.create_model(name, **model_arguments(model_section))
    key = 'state_dict_ema' if options.use_ema else 'state_dict'
    if key not in checkpoint:
        raise CheckpointError(f"checkpoint '{options.checkpoint}' has no {key} (trained without EMA?)")
    try:
        model.load_state_dict(checkpoint[key])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{options.checkpoint}' does not match {name}: {e}") from e
    return model, name


def _registered_model(options: LoadOptions, has_checkpoint: bool) -> nn.Module:
    """A registered model with its published weights, a weights file's or random ones."""
    name = options.model
    kwargs: Dict[str, Any] = {}
    if options.num_classes is not None:
        kwargs['num_classes'] = options.num_classes
    if has_checkpoint:
        # through the model's own checkpoint filter, which reads the authors' layouts; the overlay's
        # class count keeps the head from being dropped as a mismatch
        overlay = dict(file=str(options.checkpoint))
        if options.num_classes is not None:
            overlay['num_classes'] = options.num_classes
        kwargs['pretrained_cfg_overlay'] = overlay
    downloads = not has_checkpoint and options.pretrained
    try:
        with explain_download_failure(name) if downloads else nullcontext():
            return timm.create_model(name, pretrained=has_checkpoint or options.pretrained, **kwargs)
    except WeightsUnavailable as e:  # one line for every command that loads its model here
        raise CheckpointError(str(e)) from None
    except RuntimeError as e:
        if not has_checkpoint:
            raise
        hint = '' if options.num_classes is not None else ' (for another class count, pass --num-classes)'
        raise CheckpointError(f"checkpoint '{options.checkpoint}' does not fit {name}{hint}: {e}") from e


def load_eval_model(options: LoadOptions) -> Tuple[nn.Module, Dict[str, Any], str]:
    """The model in eval mode with its weights, its evaluation data config, and its name. The data config
    holds `label_names` (the class names by output) where the checkpoint records them."""
    if options.model:
        check_model_name(options.model)
    overrides = dict(img_size=options.img_size, crop_pct=options.crop_pct, crop_mode=options.crop_mode,
                     interpolation=options.interpolation)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    checkpoint = load_checkpoint(options.checkpoint) if options.checkpoint else None
    if is_deploy_checkpoint(checkpoint):  # written by `lkconv reparam`: already in the deploy form
        model, data_config, name = load_deploy_model(checkpoint)
        if options.model and options.model.split('.')[0] != name.split('.')[0]:
            raise CheckpointError(f"checkpoint '{options.checkpoint}' is of {name}, not {options.model}")
        data_config = _with_overrides(data_config, overrides)
    elif checkpoint is not None and _is_training_checkpoint(checkpoint):
        model, name = _training_checkpoint_model(checkpoint, options)
        data_config = _with_overrides(checkpoint['data_config'], overrides)
        if checkpoint.get(LABEL_NAMES):  # absent from checkpoints written before they were stored
            data_config[LABEL_NAMES] = list(checkpoint[LABEL_NAMES])
    else:
        if not options.model:
            raise ValueError('name the model (--model): the checkpoint does not say which model it is for')
        if checkpoint is None and not (options.pretrained or options.random_init):
            raise ValueError('give a checkpoint to evaluate, or --pretrained for the published weights')
        model, name = _registered_model(options, checkpoint is not None), options.model
        data_config = resolve_data_config(args=overrides, model=model, use_test_size=True)
    data_config['input_size'] = tuple(data_config['input_size'])
    model.eval()
    if options.reparam:
        model = reparameterize_model(model)
    return model, data_config, name
