"""Train a model from a validated `Config`: one process, or one per GPU under torchrun on one or many nodes.

`train(config)` builds every piece from timm (dataset and loaders, Mixup/CutMix, optimizer with layer
decay, scheduler with warm-up, EMA, AMP and loss scaler, DDP) and, with `sparse.enabled`, the masks of
dynamic sparse training (`lkconv.training.sparsity`), runs the epochs with `lkconv.training.engine`, and
writes the run folder:

  config.yaml      the resolved config (feed it back with `lkconv train -c`)
  train.log        the log
  summary.csv      epoch, train_loss, eval_loss, eval_top1, eval_top5, lr, img_per_sec
  last.pth.tar     the state after the latest epoch (what `--resume` continues from)
  best.pth.tar     the state after the epoch with the best `train.eval_metric`

Everything that can be checked is checked before the run starts: the run folder, the checkpoint and the
settings a resume changes, the model's arguments and input (on the meta device), the data and its classes;
then the model, optimizer and checkpoint state are built. Only then is the run folder created (or, on a
resume, written to): a command that fails before leaves no folder behind and changes nothing in one.

Only rank 0 logs and writes; every write is atomic. Each epoch reseeds the random generators from
(seed, epoch, rank) and the samplers from the epoch, so a run resumed from `last.pth.tar` repeats the
epochs an uninterrupted run would have trained, with the same losses. `train.stop_epoch` ends this
command early; it is not a setting of the run, so config.yaml and the checkpoints do not keep it.
"""
import dataclasses
import logging
import math
import os
import shlex
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.layers import convert_sync_batchnorm
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, distribute_bn, random_seed

from .config import Config, ConfigError, config_problem, config_to_dict, dump_config
from .data import (
    DataFolderError, class_difference, class_names, create_eval_loader, create_mixup, create_train_loader,
    dataset_splits, empty_class_folder_problem, loader_sampler, prepare_dataset_dir, resolve_eval_data_config,
)
from ..models import layer_decay_param_groups
from ..utils import atomic_copy, atomic_write_text, autocast_factory, count_params
from ..zoo.loading import model_arguments
from ..zoo.weights import explain_download_failure
from .checkpoint import (
    check_resumable, load_checkpoint, make_checkpoint, remove_temp_files, restore_checkpoint, save_checkpoint,
)
from .distillation import create_teacher
from .distributed import DistributedContext, setup_distributed
from .engine import evaluate, train_one_epoch
from .losses import create_train_loss
from .progress import close_run_logger, format_duration, log_to_file, open_run_logger, start_log_file
from .run_folder import (
    BEST_CHECKPOINT, LAST_CHECKPOINT, RESOLVED_CONFIG, RESUME_LATEST, RunFolderError, resolve_run_folder,
    run_config_path,
)
from .sparsity import SparseMasker
from .summary import EpochSummary

__all__ = ['BEST_CHECKPOINT', 'LAST_CHECKPOINT', 'RESOLVED_CONFIG', 'RESUME_LATEST', 'RunFolderError',
           'TrainingInterrupted', 'create_train_model', 'create_train_optimizer', 'resolve_lr', 'resolve_run_folder',
           'run_config_path', 'train']

# Settings whose values a resume takes from the checkpoint (the weights, the optimizer with its learning
# rate and the schedule are restored): a resume refuses to change them rather than silently ignore them.
_RESTORED_BY_RESUME = (
    'model.name', 'model.num_classes', 'model.in_chans', 'model.kwargs', 'optim.opt', 'optim.lr', 'optim.lr_base',
    'optim.lr_base_size', 'optim.lr_base_scale', 'optim.weight_decay', 'optim.momentum', 'optim.eps',
    'optim.betas', 'optim.layer_decay', 'optim.layer_decay_rule', 'optim.layer_decay_num_layers', 'sched.*',
    'train.epochs', 'train.model_ema', 'sparse.*',
)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says how to continue it."""


def resolve_lr(config: Config, global_batch: int) -> float:
    """optim.lr, or optim.lr_base scaled from optim.lr_base_size to the global batch (linearly or by sqrt)."""
    optim = config.optim
    if optim.lr is not None:
        return optim.lr
    ratio = global_batch / optim.lr_base_size
    return optim.lr_base * (ratio if optim.lr_base_scale == 'linear' else math.sqrt(ratio))


def create_train_optimizer(config: Config, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer of `config.optim` over `model`; with optim.layer_decay, its groups follow
    optim.layer_decay_rule: 'timm' the model's group_matcher (timm's own layer decay), any other the official
    rule of that name (`lkconv.models.layer_decay_param_groups`)."""
    optim = config.optim
    opt_kwargs = {k: v for k, v in dict(eps=optim.eps, betas=tuple(optim.betas) if optim.betas else None).items()
                  if v is not None}
    params = model
    if optim.layer_decay_rule != 'timm':
        try:
            params = layer_decay_param_groups(model, optim.weight_decay, optim.layer_decay, rule=optim.layer_decay_rule,
                                              num_layers=optim.layer_decay_num_layers, backbone=model)
        except ValueError as e:  # a model without the rule's layout
            raise ConfigError([config_problem(config, 'optim.layer_decay_rule', f'{config.model.name}: {e}')]) \
                from None
    return create_optimizer_v2(params, opt=optim.opt, lr=lr, weight_decay=optim.weight_decay,
                               momentum=optim.momentum, layer_decay=optim.layer_decay, **opt_kwargs)


def _model_arguments(config: Config) -> Dict[str, Any]:
    """timm.create_model's keyword arguments for the config's model, weights aside."""
    model_cfg = config.model
    arguments = model_arguments(dict(dataclasses.asdict(model_cfg), kwargs={}))
    duplicates = sorted(set(arguments) & set(model_cfg.kwargs))
    if duplicates:  # would be a TypeError of create_model
        raise ConfigError([config_problem(config, 'model.kwargs', f"{', '.join(duplicates)}: set by model."
                                          f"{'/model.'.join(duplicates)} instead")])
    return dict(arguments, **model_cfg.kwargs)


def create_train_model(config: Config) -> nn.Module:
    """The model as the config describes it, with pretrained weights (a hub tag or a file) if asked for."""
    model_cfg = config.model
    kwargs = _model_arguments(config)
    if model_cfg.pretrained_path:
        kwargs['pretrained_cfg_overlay'] = dict(file=str(Path(model_cfg.pretrained_path).expanduser()))
    downloads = model_cfg.pretrained and not model_cfg.pretrained_path
    with explain_download_failure(model_cfg.name) if downloads else nullcontext():
        model = timm.create_model(model_cfg.name, pretrained=model_cfg.pretrained or bool(model_cfg.pretrained_path),
                                  **kwargs)
    if model_cfg.head_init_scale is not None:
        classifier = model.get_classifier()
        with torch.no_grad():
            for param in classifier.parameters():
                param.mul_(model_cfg.head_init_scale)
    if model_cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if config.train.distill_type != 'none' and hasattr(model, 'set_distilled_training'):
        model.set_distilled_training(True)  # separate class / distillation logits in training
    return model


def _check_model(config: Config) -> Optional[nn.Module]:
    """The model built on the meta device (no memory, no weights), after checking what the config asks of
    it: its constructor arguments, and the mean, std and size of the images it is fed. None where a model
    cannot be built on the meta device (the real build then reports any problem)."""
    name = config.model.name
    arguments = _model_arguments(config)
    try:
        with torch.device('meta'):
            model = timm.create_model(name, **arguments)
    except (TypeError, ValueError) as e:  # the constructor refusing its arguments
        key = 'model.kwargs' if config.model.kwargs else 'model.name'
        raise ConfigError([config_problem(config, key, f'{name} cannot be built with these arguments: {e}')]) \
            from None
    except Exception:  # e.g. a model that computes with tensors while it is built: no meta check
        return None
    in_chans = getattr(model, 'in_chans', 3)
    problems = []
    for key in ('data.mean', 'data.std'):
        values = getattr(config.data, key.split('.')[1])
        if values is not None and len(values) not in (1, in_chans):  # timm repeats a single value
            problems.append(config_problem(config, key, f'expected {in_chans} numbers (one per input channel of '
                                                        f'{name}) or one for all, got {len(values)}'))
    if problems:
        raise ConfigError(problems)
    if config.data.img_size is not None:
        input_size = resolve_eval_data_config(config.data, model)['input_size']
        try:
            model.eval()(torch.empty(1, *input_size, device='meta'))
        except ValueError as e:  # the models' check of their input: too small, wrong channel count
            raise ConfigError([config_problem(config, 'data.img_size', f'{name} cannot take {input_size[1]}x'
                                                                       f'{input_size[2]} images: {e}')]) from None
        except Exception:
            pass  # an operation without a meta implementation: the run itself will tell
    return model


def _check_classes(config: Config, train_set, val_set, num_classes: Optional[int]) -> None:
    """The class folders of both splits: none empty, the same in both, as many as the model's outputs."""
    data = config.data
    problems = []
    for key, dataset in (('data.train_split', train_set), ('data.val_split', val_set)):
        problem = empty_class_folder_problem(dataset) if dataset is not None else None
        if problem:
            problems.append(config_problem(config, key, problem))
    found = class_names(train_set)
    found_val = class_names(val_set) if val_set is not None else None
    difference = class_difference(found, found_val) if found and found_val else None
    if difference:
        problems.append(config_problem(
            config, 'data.val_split', f"split '{data.val_split}' has other classes than split '{data.train_split}' "
                                      f"({difference}); both need the same class folders, as labels are numbered "
                                      f"by class name"))
    if found and num_classes is not None and len(found) != num_classes:
        problems.append(config_problem(
            config, 'model.num_classes', f'the training data has {len(found)} classes but {config.model.name} has '
                                         f'{num_classes} outputs; set model.num_classes={len(found)}'))
    if problems:
        raise ConfigError(problems)


def _run_config(config: Config) -> Config:
    """The settings of the run, as config.yaml and the checkpoints keep them: without train.stop_epoch,
    which ends only the command that sets it."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, stop_epoch=None))


def _flatten(config: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    return {f'{section}.{key}': value for section, values in config.items() for key, value in values.items()}


def _resume_changes(checkpoint: Dict[str, Any], config: Config, path: Path) -> List[str]:
    """The settings that differ from the checkpoint's run, as 'key (old -> new)', applied when the run
    starts; raises RunFolderError for those the checkpoint restores."""
    old, new = _flatten(checkpoint['config']), _flatten(config_to_dict(_run_config(config)))
    changed = [k for k in new if k in old and old[k] != new[k] and k != 'train.stop_epoch'
               and not k.startswith('output.')]  # the run folder is the one being resumed
    described = {k: f'{k} ({old[k]!r} -> {new[k]!r})' for k in changed}
    refused = [k for k in changed if k in _RESTORED_BY_RESUME or f"{k.split('.')[0]}.*" in _RESTORED_BY_RESUME]
    if refused:
        raise RunFolderError(
            f"cannot resume '{path}' with changed {', '.join(described[k] for k in refused)}: the checkpoint "
            f"restores the model, optimizer and schedule; drop the change, or start a new run (another "
            f"output.experiment)")
    return [described[k] for k in changed]


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed Python, NumPy and torch from (seed, epoch, rank): augmentation and drop-path depend only on these."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]
    random_seed(int(state), 0)


def _is_better(metric: float, best: Optional[float], eval_metric: str) -> bool:
    if best is None:
        return True
    return metric < best if eval_metric == 'loss' else metric > best


@contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic algorithms and no cuDNN autotuning (restored afterwards): a GPU run that repeats bit
    for bit, as an exact resume needs there. Ops without a deterministic implementation warn."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # cuBLAS reads it when it first starts
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2:]


def train(config: Config, resume: Optional[str] = None) -> Path:
    """Run (or, with `resume`, continue) a training run; returns the run folder."""
    with _deterministic(config.train.deterministic):
        ctx = setup_distributed(config.train.device, config.train.dist_backend)
        try:
            return _train(config, resume, ctx)
        finally:
            ctx.close()


def _train(config: Config, resume: Optional[str], ctx: DistributedContext) -> Path:
    started = time.time()
    timestamp = ctx.broadcast(time.strftime('%Y%m%d-%H%M%S'))  # one run folder name for every rank
    run_dir, resume_from = resolve_run_folder(config, resume, timestamp)
    checkpoint, changes = None, []
    if resume_from is not None:
        checkpoint = load_checkpoint(resume_from)
        check_resumable(checkpoint, resume_from)
        changes = _resume_changes(checkpoint, config, resume_from)
    meta_model = _check_model(config)
    logger = open_run_logger(ctx.is_primary)
    try:
        return _run(config, ctx, run_dir, checkpoint, changes, meta_model, logger, started)
    finally:
        close_run_logger(logger)


def _prepare_dataset_dir(config: Config, ctx: DistributedContext) -> Optional[str]:
    """The dataset root, written out by rank 0 first where the dataset is embedded."""
    error = None
    if ctx.is_primary:
        try:
            root = prepare_dataset_dir(config.data.dataset, config.data.dir)
        except DataFolderError as e:
            error = config_problem(config, 'data.dir', str(e))
    error = ctx.broadcast(error)  # also the barrier: the others read what rank 0 wrote
    if error:
        raise ConfigError([error])
    if not ctx.is_primary:
        root = prepare_dataset_dir(config.data.dataset, config.data.dir)
    return root


def _start_run(config: Config, ctx: DistributedContext, run_dir: Path, logger) -> None:
    """Create the run folder and write its config and log: from here on the run has started."""
    if ctx.is_primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_temp_files(run_dir)
        atomic_write_text(run_dir / RESOLVED_CONFIG, dump_config(_run_config(config)))
        start_log_file(logger, run_dir / 'train.log')
    ctx.barrier()


def _create_masker(config: Config, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int,
                   train_loader, fresh: bool, logger) -> Optional[SparseMasker]:
    """The sparse-training masks (None unless sparse.enabled) over `total_steps` optimizer steps; a new run
    draws them now (SNIP from the loader's first batch), a resumed one takes them from its checkpoint."""
    sparse = config.sparse
    if not sparse.enabled:
        return None
    try:
        masker = SparseMasker(
            model, optimizer, sparsity=sparse.sparsity, init=sparse.init, growth=sparse.growth,
            prune_rate=sparse.prune_rate, decay_schedule=sparse.decay_schedule,
            update_frequency=sparse.update_frequency, fix=sparse.fix, only_large_kernels=sparse.only_L,
            total_steps=total_steps, seed=config.train.seed)
    except ValueError as e:  # nothing to mask
        key = 'sparse.only_L' if sparse.only_L else 'sparse.enabled'
        raise ConfigError([config_problem(config, key, str(e))]) from None
    if fresh:
        masker.initialize(batch=lambda: next(iter(train_loader)))
        logger.info(masker.describe())
    return masker


def _run(config: Config, ctx: DistributedContext, run_dir: Path, checkpoint: Optional[Dict[str, Any]],
         changes: List[str], meta_model: Optional[nn.Module], logger, started: float) -> Path:
    train_cfg, data_cfg = config.train, config.data
    config_dict = config_to_dict(_run_config(config))  # what the checkpoints keep
    if changes:
        logger.info(f'resuming with changed settings (applied): {", ".join(changes)}')
    if train_cfg.stop_epoch is not None:
        logger.info(f'train.stop_epoch={train_cfg.stop_epoch}: this command stops after epoch '
                    f'{train_cfg.stop_epoch}; the run keeps its length (not saved in {RESOLVED_CONFIG})')

    # data first: a wrong folder or class count fails before the model is built or weights are read
    root = _prepare_dataset_dir(config, ctx)
    train_set, val_set = dataset_splits(config, root)
    _check_classes(config, train_set, val_set, meta_model.num_classes if meta_model is not None else None)
    label_names = class_names(train_set)

    random_seed(train_cfg.seed, 0)  # the same initial weights on every rank
    model = create_train_model(config)
    num_classes = model.num_classes
    if meta_model is None:  # the class count is checked only now
        _check_classes(config, train_set, None, num_classes)
    data_config = resolve_eval_data_config(data_cfg, model)
    n_params = count_params(model)
    logger.info(f'model {config.model.name}: {n_params:,} parameters, {num_classes} classes, input '
                f'{tuple(data_config["input_size"])}')
    model.to(ctx.device)
    if train_cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.distributed and train_cfg.sync_bn:
        model = convert_sync_batchnorm(model)
        synced = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        logger.info(f'SyncBatchNorm: {synced} layers')

    train_loader = create_train_loader(train_set, data_config, data_cfg, ctx.distributed, ctx.device)
    val_loader = None
    if val_set is not None:
        val_loader = create_eval_loader(val_set, data_config, data_cfg.val_batch_size or data_cfg.batch_size,
                                        data_cfg.workers, ctx.distributed, ctx.device, data_cfg.pin_memory)
    if data_cfg.aug_repeats and not ctx.distributed:
        logger.warning('data.aug_repeats is ignored: repeated augmentation needs distributed training')

    global_batch = data_cfg.batch_size * ctx.world_size * train_cfg.grad_accum_steps
    lr = resolve_lr(config, global_batch)
    optimizer = create_train_optimizer(config, model, lr)
    use_cuda = ctx.device.type == 'cuda'
    amp_dtype = torch.float16 if train_cfg.amp_dtype == 'float16' else torch.bfloat16
    autocast = autocast_factory(ctx.device.type, amp_dtype if train_cfg.amp else None)
    loss_scaler = NativeScaler(device=ctx.device.type) if train_cfg.amp and amp_dtype == torch.float16 \
        and use_cuda else None

    updates_per_epoch = math.ceil(len(train_loader) / train_cfg.grad_accum_steps)
    sched = config.sched
    scheduler, total_epochs = create_scheduler_v2(
        optimizer, sched=sched.name, num_epochs=train_cfg.epochs, decay_epochs=sched.decay_epochs,
        decay_milestones=sched.decay_milestones, cooldown_epochs=sched.cooldown_epochs,
        decay_rate=sched.decay_rate, min_lr=sched.min_lr, warmup_lr=sched.warmup_lr,
        warmup_epochs=sched.warmup_epochs, warmup_prefix=sched.warmup_prefix,
        plateau_mode='min' if train_cfg.eval_metric == 'loss' else 'max',
        step_on_epochs=not sched.on_updates, updates_per_epoch=updates_per_epoch)
    stop_epoch = min(total_epochs, train_cfg.stop_epoch or total_epochs)
    masker = _create_masker(config, model, optimizer, updates_per_epoch * total_epochs, train_loader,
                            fresh=checkpoint is None, logger=logger)
    # after the initial masks, so that the average starts as sparse as the weights
    model_ema = ModelEmaV3(model, decay=train_cfg.model_ema_decay, use_warmup=train_cfg.model_ema_warmup) \
        if train_cfg.model_ema else None

    start_epoch, num_updates, best_metric, best_epoch = 0, 0, None, None
    if checkpoint is not None:
        restore_checkpoint(checkpoint, model, optimizer, scheduler, loss_scaler, model_ema, masker)
        start_epoch, num_updates = checkpoint['epoch'], checkpoint.get('num_updates', 0)
        best_metric, best_epoch = checkpoint.get('best_metric'), checkpoint.get('best_epoch')
        if scheduler is not None and start_epoch > 0:
            if sched.on_updates:
                scheduler.step_update(num_updates)
            else:
                scheduler.step(start_epoch)
        logger.info(f'resumed after epoch {start_epoch} ({num_updates} updates)')
    if start_epoch >= stop_epoch:
        more = f' (train.stop_epoch={stop_epoch}; train.stop_epoch=null goes on to epoch {total_epochs})' \
            if stop_epoch < total_epochs else ''
        logger.info(f'nothing to do: the run already completed epoch {start_epoch} of {stop_epoch}{more}')
        return run_dir

    teacher = None
    if train_cfg.distill_type != 'none':
        teacher = create_teacher(train_cfg.distill_teacher, num_classes, data_config['input_size'][0],
                                 train_cfg.distill_teacher_path, ctx.device)
    mixup = create_mixup(config, num_classes)
    loss_fn = create_train_loss(config, mixup is not None, teacher, data_config['mean'], data_config['std'])

    if train_cfg.compile:
        model = torch.compile(model, backend=train_cfg.compile)
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.local_rank] if use_cuda else None)

    _start_run(config, ctx, run_dir, logger)
    backend = f', backend {torch.distributed.get_backend()}' if ctx.distributed else ''
    logger.info(f'run folder {run_dir}; {ctx.world_size} process(es) on {ctx.device.type}{backend}')
    logger.info(f'{len(train_set)} training images, {len(val_set) if val_set is not None else 0} for evaluation; '
                f'global batch {global_batch} ({data_cfg.batch_size} x {ctx.world_size} process(es) x '
                f'{train_cfg.grad_accum_steps} accumulation), lr {lr:.3e}, epochs {start_epoch + 1}-{stop_epoch} '
                f'of {total_epochs}')
    summary = EpochSummary(run_dir / 'summary.csv', resume_after_epoch=start_epoch) if ctx.is_primary else None
    epoch = saved_epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, stop_epoch + 1):
            _seed_epoch(train_cfg.seed, epoch, ctx.rank)
            sampler = loader_sampler(train_loader)
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(epoch)
            if mixup is not None and data_cfg.mixup_off_epoch:
                mixup.mixup_enabled = epoch <= data_cfg.mixup_off_epoch
            result = train_one_epoch(
                model, train_loader, optimizer, loss_fn, ctx, config, epoch=epoch, epochs=total_epochs,
                num_updates=num_updates, autocast=autocast, logger=logger, scheduler=scheduler,
                loss_scaler=loss_scaler, mixup=mixup, model_ema=model_ema, masker=masker)
            num_updates = result.num_updates
            if ctx.distributed and train_cfg.dist_bn:
                distribute_bn(model, ctx.world_size, train_cfg.dist_bn == 'reduce')

            metrics = None
            if val_loader is not None and (epoch % train_cfg.val_interval == 0 or epoch == stop_epoch):
                metrics = evaluate(model, val_loader, ctx, autocast, train_cfg.channels_last)
                message = f'epoch {epoch} eval: loss {metrics["loss"]:.4f} top-1 {metrics["top1"]:.2f} ' \
                          f'top-5 {metrics["top5"]:.2f}'
                if model_ema is not None and train_cfg.model_ema_eval:  # as in timm, these are the ones recorded
                    metrics = evaluate(model_ema.module, val_loader, ctx, autocast, train_cfg.channels_last)
                    message += f'; EMA: loss {metrics["loss"]:.4f} top-1 {metrics["top1"]:.2f} ' \
                               f'top-5 {metrics["top5"]:.2f}'
                logger.info(message)
            metric = metrics[train_cfg.eval_metric] if metrics is not None else None
            if scheduler is not None:
                scheduler.step(epoch, metric)

            improved = metric is not None and _is_better(metric, best_metric, train_cfg.eval_metric)
            if improved:
                best_metric, best_epoch = metric, epoch
            if ctx.is_primary:
                summary.add(epoch, result.loss, result.lr, result.img_per_sec, metrics)
                state = make_checkpoint(
                    epoch=epoch, model=model, optimizer=optimizer, config=config_dict, data_config=data_config,
                    num_updates=num_updates, metric=metric, best_metric=best_metric, best_epoch=best_epoch,
                    scheduler=scheduler, loss_scaler=loss_scaler, model_ema=model_ema, label_names=label_names,
                    masker=masker)
                save_checkpoint(state, run_dir / LAST_CHECKPOINT)
                if improved:
                    atomic_copy(run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT)
            saved_epoch = epoch
            logger.info(f'epoch {epoch} done: train loss {result.loss:.4f}, {result.img_per_sec:.1f} img/s, '
                        f'elapsed {format_duration(time.time() - started)}')
    except KeyboardInterrupt:
        saved = f'epochs up to {saved_epoch} are saved' if saved_epoch else 'no epoch is saved yet'
        message = f'interrupted in epoch {epoch} ({saved}); continue with: lkconv train --resume ' \
                  f'{shlex.quote(str(run_dir))}'
        log_to_file(logger, logging.WARNING, message)
        raise TrainingInterrupted(message) from None
    except Exception as e:
        log_to_file(logger, logging.ERROR, f'stopped in epoch {epoch}: {type(e).__name__}: {e}', exc_info=True)
        raise
    ctx.barrier()
    if best_metric is not None:
        logger.info(f'best eval {train_cfg.eval_metric} {best_metric:.4f} at epoch {best_epoch}')
    logger.info(f'finished in {format_duration(time.time() - started)}; run folder {run_dir}')
    return run_dir

