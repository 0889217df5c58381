"""Top-1/top-5 accuracy of a trained checkpoint or a pretrained model on an image dataset.

The images go through the model's own evaluation preprocessing: for an lkconv training checkpoint, the
resize, crop and normalisation its run evaluated with (stored in the checkpoint); otherwise the model's
pretrained config (its test size where it has one). Command-line values override either. With
`reparam=True` the model is re-parameterised (timm's `reparameterize_model`) before evaluation, which
for UniRepLKNet and LSNet gives the deployment form and must not change the accuracy.

The class names a model was trained on travel with it: `load_eval_model` returns them in the data config
under `label_names` (as timm's pretrained cfgs name them) when its checkpoint records them, and `validate`
refuses a dataset whose classes differ from them.
"""
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.data import create_dataset, resolve_data_config
from timm.utils import reparameterize_model

from .config import parse_config
from ..zoo.deploy_checkpoint import is_deploy_checkpoint, load_deploy_model
from .data import (
    DIGITS, class_difference, class_names, create_eval_loader, empty_class_folder_problem, prepare_dataset_dir,
    timm_dataset_name,
)
from ..zoo.names import check_model_name
from ..zoo.weights import WeightsUnavailable, explain_download_failure
from .train import create_train_model
from .checkpoint import LABEL_NAMES, CheckpointError, load_checkpoint
from .distributed import DistributedContext, device_problem, resolve_device_name
from .engine import evaluate

__all__ = ['ValidateOptions', 'load_eval_model', 'validate']

_logger = logging.getLogger('lkconv.training.validate')


@dataclass
class ValidateOptions:
    data_dir: Optional[str] = None  # dataset root (for lkconv/digits: where it is written; None: the cache)
    model: Optional[str] = None  # needed unless `checkpoint` is an lkconv training checkpoint
    checkpoint: Optional[str] = None
    pretrained: bool = False  # evaluate the model's published weights (when no checkpoint is given)
    random_init: bool = False  # neither: build the model with random weights (for export/reparam checks)
    dataset: str = ''
    split: str = 'validation'
    class_map: str = ''
    batch_size: int = 256
    workers: int = 4
    num_classes: Optional[int] = None
    img_size: Optional[int] = None
    crop_pct: Optional[float] = None
    crop_mode: Optional[str] = None
    interpolation: Optional[str] = None
    use_ema: bool = False  # the EMA weights of a training checkpoint
    reparam: bool = False
    amp: bool = False
    amp_dtype: str = 'bfloat16'
    channels_last: bool = False
    device: str = 'auto'
    log_interval: int = 50


def _is_training_checkpoint(checkpoint: Dict[str, Any]) -> bool:
    return 'config' in checkpoint and 'state_dict' in checkpoint


def _with_overrides(data_config: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint's stored data config with the command line's values over it."""
    data_config = dict(data_config, **overrides)
    if 'img_size' in overrides:
        data_config['input_size'] = (data_config['input_size'][0], overrides['img_size'], overrides['img_size'])
    return data_config


def load_eval_model(options: ValidateOptions) -> Tuple[nn.Module, Dict[str, Any], str]:
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
        # the weights come from the checkpoint; the run's data and weight files need not exist here
        config = parse_config(checkpoint['config'], origin=options.checkpoint, check_files=False,
                              overrides=['model.pretrained=false', 'model.pretrained_path=null',
                                         'model.head_init_scale=null'])
        name = options.model or config.model.name
        if name != config.model.name:
            raise CheckpointError(f"checkpoint '{options.checkpoint}' is of {config.model.name}, not {name}")
        model = create_train_model(config)
        key = 'state_dict_ema' if options.use_ema else 'state_dict'
        if key not in checkpoint:
            raise CheckpointError(f"checkpoint '{options.checkpoint}' has no {key} (trained without EMA?)")
        try:
            model.load_state_dict(checkpoint[key])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint '{options.checkpoint}' does not match {name}: {e}") from e
        data_config = _with_overrides(checkpoint['data_config'], overrides)
        if checkpoint.get(LABEL_NAMES):  # absent from checkpoints written before they were stored
            data_config[LABEL_NAMES] = list(checkpoint[LABEL_NAMES])
    else:
        if not options.model:
            raise ValueError('name the model (--model): the checkpoint does not say which model it is for')
        if checkpoint is None and not (options.pretrained or options.random_init):
            raise ValueError('give a checkpoint to evaluate, or --pretrained for the published weights')
        kwargs: Dict[str, Any] = {}
        if options.num_classes is not None:
            kwargs['num_classes'] = options.num_classes
        if options.checkpoint:
            # through the model's own checkpoint filter, which reads the authors' layouts; the overlay's
            # class count keeps the head from being dropped as a mismatch
            overlay = dict(file=str(options.checkpoint))
            if options.num_classes is not None:
                overlay['num_classes'] = options.num_classes
            kwargs['pretrained_cfg_overlay'] = overlay
        name = options.model
        downloads = checkpoint is None and options.pretrained
        try:
            with explain_download_failure(name) if downloads else nullcontext():
                model = timm.create_model(name, pretrained=checkpoint is not None or options.pretrained, **kwargs)
        except WeightsUnavailable as e:  # one line for every command that loads its model here
            raise CheckpointError(str(e)) from None
        except RuntimeError as e:
            if not options.checkpoint:
                raise
            hint = '' if options.num_classes is not None else ' (for another class count, pass --num-classes)'
            raise CheckpointError(f"checkpoint '{options.checkpoint}' does not fit {name}{hint}: {e}") from e
        data_config = resolve_data_config(args=overrides, model=model, use_test_size=True)
    data_config['input_size'] = tuple(data_config['input_size'])
    model.eval()
    if options.reparam:
        model = reparameterize_model(model)
    return model, data_config, name


def _check_options(options: ValidateOptions) -> None:
    """The command line's own values, before anything is loaded."""
    if options.batch_size < 1:
        raise ValueError(f'--batch-size: must be at least 1, got {options.batch_size}')
    if options.workers < 0:
        raise ValueError(f'--workers: must not be negative, got {options.workers}')
    problem = device_problem(options.device)
    if problem:
        raise ValueError(f'--device: {problem}')


def validate(options: ValidateOptions) -> Dict[str, Any]:
    """Evaluate; returns model, top1, top1_err, top5, top5_err, loss, param_count (millions), input size,
    crop, interpolation, images and img_per_sec."""
    _check_options(options)
    if options.dataset != DIGITS and not (options.data_dir and Path(options.data_dir).expanduser().exists()):
        raise FileNotFoundError(f"data directory '{options.data_dir}' does not exist")
    root = prepare_dataset_dir(options.dataset, options.data_dir)  # writes lkconv/digits out (into a new folder)
    device = torch.device(resolve_device_name(options.device))
    ctx = DistributedContext(device=device)
    model, data_config, name = load_eval_model(options)
    model.to(device)
    if options.channels_last:
        model.to(memory_format=torch.channels_last)

    dataset = create_dataset(timm_dataset_name(options.dataset), root=root, split=options.split,
                             class_map=options.class_map or None)
    problem = empty_class_folder_problem(dataset)
    if problem:
        raise ValueError(problem)
    found = class_names(dataset)
    trained_on = data_config.get(LABEL_NAMES)
    difference = class_difference(trained_on, found) if trained_on and found else None
    if difference:
        raise ValueError(f"split '{options.split}' has other classes than the ones {name} was trained on "
                         f"({difference}); its labels would not match the model's outputs")
    if found is not None and len(found) != model.num_classes:
        raise ValueError(f'the dataset has {len(found)} classes but {name} has {model.num_classes} outputs'
                         + ('; pass --num-classes' if not options.checkpoint else ''))
    loader = create_eval_loader(dataset, data_config, options.batch_size, options.workers, distributed=False,
                                device=device)

    dtype = torch.float16 if options.amp_dtype == 'float16' else torch.bfloat16
    autocast = partial(torch.autocast, device_type=device.type, dtype=dtype) if options.amp else nullcontext
    start = time.perf_counter()
    metrics = evaluate(model, loader, ctx, autocast, options.channels_last, logger=_logger,
                       log_interval=options.log_interval)
    elapsed = time.perf_counter() - start
    return dict(
        model=name, checkpoint=options.checkpoint, top1=round(metrics['top1'], 3),
        top1_err=round(100 - metrics['top1'], 3), top5=round(metrics['top5'], 3),
        top5_err=round(100 - metrics['top5'], 3), loss=round(metrics['loss'], 5),
        param_count=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        img_size=data_config['input_size'][-1], crop_pct=data_config['crop_pct'],
        crop_mode=data_config['crop_mode'], interpolation=data_config['interpolation'],
        reparameterized=options.reparam, images=len(dataset), img_per_sec=round(len(dataset) / elapsed, 1))
