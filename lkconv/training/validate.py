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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from timm.data import create_dataset

from ..utils import autocast_factory, count_params, device_problem, resolve_device_name
from ..zoo.checkpoints import LABEL_NAMES
from ..zoo.loading import LoadOptions, load_eval_model
from .data import (
    DIGITS, class_difference, class_names, create_eval_loader, empty_class_folder_problem, prepare_dataset_dir,
    timm_dataset_name,
)
from .distributed import DistributedContext
from .engine import evaluate

__all__ = ['ValidateOptions', 'validate']

_logger = logging.getLogger('lkconv.training.validate')


@dataclass
class ValidateOptions(LoadOptions):
    """Which model to evaluate (`LoadOptions`), on which images and how."""
    data_dir: Optional[str] = None  # dataset root (for lkconv/digits: where it is written; None: the cache)
    dataset: str = ''
    split: str = 'validation'
    class_map: str = ''
    batch_size: int = 256
    workers: int = 4
    amp: bool = False
    amp_dtype: str = 'bfloat16'
    channels_last: bool = False
    device: str = 'auto'
    log_interval: int = 50


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

    autocast = autocast_factory(device.type, options.amp_dtype if options.amp else None)
    start = time.perf_counter()
    metrics = evaluate(model, loader, ctx, autocast, options.channels_last, logger=_logger,
                       log_interval=options.log_interval)
    elapsed = time.perf_counter() - start
    return dict(
        model=name, checkpoint=options.checkpoint, top1=round(metrics['top1'], 3),
        top1_err=round(100 - metrics['top1'], 3), top5=round(metrics['top5'], 3),
        top5_err=round(100 - metrics['top5'], 3), loss=round(metrics['loss'], 5),
        param_count=round(count_params(model) / 1e6, 3),
        img_size=data_config['input_size'][-1], crop_pct=data_config['crop_pct'],
        crop_mode=data_config['crop_mode'], interpolation=data_config['interpolation'],
        reparameterized=options.reparam, images=len(dataset), img_per_sec=round(len(dataset) / elapsed, 1))
