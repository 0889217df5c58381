"""Train a model from a validated `Config`: one process, or one per GPU under torchrun on one or many nodes.

`train(config)` builds every piece from timm (dataset and loaders, Mixup/CutMix, optimizer with layer
decay, scheduler with warm-up, EMA, AMP and loss scaler, DDP), runs the epochs with
`lkconv.training.engine`, and writes the run folder:

  config.yaml      the resolved config (feed it back with `lkconv train -c`)
  train.log        the log
  summary.csv      epoch, train_loss, eval_loss, eval_top1, eval_top5, lr, img_per_sec
  last.pth.tar     the state after the latest epoch (what `--resume` continues from)
  best.pth.tar     the state after the epoch with the best `train.eval_metric`

Only rank 0 logs and writes; every write is atomic. Each epoch reseeds the random generators from
(seed, epoch, rank) and the samplers from the epoch, so a run resumed from `last.pth.tar` repeats the
epochs an uninterrupted run would have trained, with the same losses.
"""
import math
import os
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.layers import convert_sync_batchnorm
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, distribute_bn, random_seed

from .config import Config, ConfigError, config_to_dict, dump_config
from .data import (
    create_eval_loader, create_mixup, create_train_loader, dataset_num_classes, dataset_splits, loader_sampler,
    prepare_dataset_dir, resolve_eval_data_config,
)
from .training.checkpoint import (
    atomic_copy, atomic_write_text, load_checkpoint, make_checkpoint, remove_temp_files, restore_checkpoint,
    save_checkpoint,
)
from .training.distillation import create_teacher
from .training.distributed import DistributedContext, setup_distributed
from .training.engine import evaluate, train_one_epoch
from .training.losses import create_train_loss
from .training.progress import close_run_logger, format_duration, open_run_logger
from .training.summary import EpochSummary

__all__ = ['BEST_CHECKPOINT', 'LAST_CHECKPOINT', 'RESOLVED_CONFIG', 'RESUME_LATEST', 'RunFolderError',
           'create_train_model', 'resolve_lr', 'resolve_run_folder', 'run_config_path', 'train']

LAST_CHECKPOINT = 'last.pth.tar'
BEST_CHECKPOINT = 'best.pth.tar'
RESOLVED_CONFIG = 'config.yaml'
RESUME_LATEST = 'auto'  # `--resume` without a path: the run folder named by output.dir/output.experiment


class RunFolderError(RuntimeError):
    pass


def resolve_run_folder(config: Config, resume: Optional[str], timestamp: str) -> Tuple[Path, Optional[Path]]:
    """The run folder and the checkpoint to resume from (None: a fresh start).

    `resume` is None (fresh run; refuses a folder that already holds one), RESUME_LATEST (continue the
    run of output.experiment if it has a checkpoint), or a run folder or checkpoint file.
    """
    output = config.output
    if resume is None or resume == RESUME_LATEST:
        if resume == RESUME_LATEST and not output.experiment:
            raise RunFolderError('--resume without a path needs output.experiment (the run folder to continue); '
                                 'or pass the run folder or checkpoint: --resume PATH')
        name = output.experiment or f"{config.model.name.replace('/', '_')}-{timestamp}"
        folder = Path(output.dir).expanduser() / name
        last = folder / LAST_CHECKPOINT
        if resume == RESUME_LATEST:
            return folder, last if last.is_file() else None
        if last.is_file():
            raise RunFolderError(f"'{folder}' already holds a run: continue it with --resume, or choose another "
                                 f"output.experiment")
        return folder, None
    path = Path(resume).expanduser()
    checkpoint = path / LAST_CHECKPOINT if path.is_dir() else path
    if not checkpoint.is_file():
        raise RunFolderError(f"nothing to resume: '{checkpoint}' does not exist")
    return checkpoint.parent, checkpoint


def resolve_lr(config: Config, global_batch: int) -> float:
    """optim.lr, or optim.lr_base scaled from optim.lr_base_size to the global batch (linearly or by sqrt)."""
    optim = config.optim
    if optim.lr is not None:
        return optim.lr
    ratio = global_batch / optim.lr_base_size
    return optim.lr_base * (ratio if optim.lr_base_scale == 'linear' else math.sqrt(ratio))


def create_train_model(config: Config) -> nn.Module:
    """The model as the config describes it, with pretrained weights (a hub tag or a file) if asked for."""
    model_cfg = config.model
    optional = dict(num_classes=model_cfg.num_classes, in_chans=model_cfg.in_chans)
    kwargs: Dict[str, Any] = {k: v for k, v in optional.items() if v is not None}
    if model_cfg.pretrained_path:
        kwargs['pretrained_cfg_overlay'] = dict(file=str(Path(model_cfg.pretrained_path).expanduser()))
    model = timm.create_model(
        model_cfg.name, pretrained=model_cfg.pretrained or bool(model_cfg.pretrained_path),
        drop_rate=model_cfg.drop_rate, drop_path_rate=model_cfg.drop_path_rate, **kwargs, **model_cfg.kwargs)
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


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed Python, NumPy and torch from (seed, epoch, rank): augmentation and drop-path depend only on these."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]
    random_seed(int(state), 0)


def _is_better(metric: float, best: Optional[float], eval_metric: str) -> bool:
    if best is None:
        return True
    return metric < best if eval_metric == 'loss' else metric > best


def _changed_keys(old: Dict[str, Dict[str, Any]], new: Dict[str, Dict[str, Any]]) -> list:
    return [f'{section}.{key}' for section, values in new.items() for key, value in values.items()
            if old.get(section, {}).get(key) != value]


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
    checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
    if ctx.is_primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_temp_files(run_dir)
    ctx.barrier()
    logger = open_run_logger(run_dir / 'train.log', ctx.is_primary)
    try:
        return _run(config, ctx, run_dir, checkpoint, logger, started)
    finally:
        close_run_logger(logger)


def _run(config: Config, ctx: DistributedContext, run_dir: Path, checkpoint: Optional[Dict[str, Any]], logger,
         started: float) -> Path:
    train_cfg, data_cfg = config.train, config.data
    config_dict = config_to_dict(config)
    if checkpoint is not None:
        changed = _changed_keys(checkpoint.get('config', {}), config_dict)
        if changed:
            logger.warning(f'resuming with settings that differ from the checkpoint\'s: {", ".join(changed)}')
    if ctx.is_primary:
        atomic_write_text(run_dir / RESOLVED_CONFIG, dump_config(config))
    backend = f', backend {torch.distributed.get_backend()}' if ctx.distributed else ''
    logger.info(f'run folder {run_dir}; {ctx.world_size} process(es) on {ctx.device.type}{backend}')

    # data first: a wrong folder or class count fails before the model is built
    if ctx.is_primary:
        root = prepare_dataset_dir(data_cfg)  # writes an embedded dataset out once
    ctx.barrier()
    if not ctx.is_primary:
        root = prepare_dataset_dir(data_cfg)
    train_set, val_set = dataset_splits(config, root)

    random_seed(train_cfg.seed, 0)  # the same initial weights on every rank
    model = create_train_model(config)
    num_classes = model.num_classes
    found = dataset_num_classes(train_set)
    if found is not None and found != num_classes:
        raise ConfigError([f'model.num_classes: the training data has {found} classes but {config.model.name} '
                           f'has {num_classes} outputs; set model.num_classes={found}'])
    data_config = resolve_eval_data_config(data_cfg, model)
    n_params = sum(p.numel() for p in model.parameters())
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
    optim = config.optim
    opt_kwargs = {k: v for k, v in dict(eps=optim.eps, betas=tuple(optim.betas) if optim.betas else None).items()
                  if v is not None}
    optimizer = create_optimizer_v2(model, opt=optim.opt, lr=lr, weight_decay=optim.weight_decay,
                                    momentum=optim.momentum, layer_decay=optim.layer_decay, **opt_kwargs)
    use_cuda = ctx.device.type == 'cuda'
    amp_dtype = torch.float16 if train_cfg.amp_dtype == 'float16' else torch.bfloat16
    autocast = partial(torch.autocast, device_type=ctx.device.type, dtype=amp_dtype) if train_cfg.amp \
        else nullcontext
    loss_scaler = NativeScaler(device=ctx.device.type) if train_cfg.amp and amp_dtype == torch.float16 \
        and use_cuda else None
    model_ema = ModelEmaV3(model, decay=train_cfg.model_ema_decay, use_warmup=train_cfg.model_ema_warmup) \
        if train_cfg.model_ema else None

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

    start_epoch, num_updates, best_metric, best_epoch = 0, 0, None, None
    if checkpoint is not None:
        restore_checkpoint(checkpoint, model, optimizer, scheduler, loss_scaler, model_ema)
        start_epoch, num_updates = checkpoint['epoch'], checkpoint.get('num_updates', 0)
        best_metric, best_epoch = checkpoint.get('best_metric'), checkpoint.get('best_epoch')
        if scheduler is not None and start_epoch > 0:
            if sched.on_updates:
                scheduler.step_update(num_updates)
            else:
                scheduler.step(start_epoch)
        logger.info(f'resumed after epoch {start_epoch} ({num_updates} updates)')
    if start_epoch >= stop_epoch:
        logger.info(f'nothing to do: the run already completed epoch {start_epoch} of {stop_epoch}')
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

    logger.info(f'{len(train_set)} training images, {len(val_set) if val_set is not None else 0} for evaluation; '
                f'global batch {global_batch} ({data_cfg.batch_size} x {ctx.world_size} process(es) x '
                f'{train_cfg.grad_accum_steps} accumulation), lr {lr:.3e}, epochs {start_epoch + 1}-{stop_epoch} '
                f'of {total_epochs}')
    summary = EpochSummary(run_dir / 'summary.csv', resume_after_epoch=start_epoch) if ctx.is_primary else None
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
            loss_scaler=loss_scaler, mixup=mixup, model_ema=model_ema)
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
                scheduler=scheduler, loss_scaler=loss_scaler, model_ema=model_ema)
            save_checkpoint(state, run_dir / LAST_CHECKPOINT)
            if improved:
                atomic_copy(run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT)
        logger.info(f'epoch {epoch} done: train loss {result.loss:.4f}, {result.img_per_sec:.1f} img/s, '
                    f'elapsed {format_duration(time.time() - started)}')
    ctx.barrier()
    if best_metric is not None:
        logger.info(f'best eval {train_cfg.eval_metric} {best_metric:.4f} at epoch {best_epoch}')
    logger.info(f'finished in {format_duration(time.time() - started)}; run folder {run_dir}')
    return run_dir


def run_config_path(resume: str) -> Path:
    """The resolved config of the run that `--resume PATH` names (a run folder or one of its checkpoints)."""
    path = Path(resume).expanduser()
    folder = path if path.is_dir() else path.parent
    config = folder / RESOLVED_CONFIG
    if not config.is_file():
        raise RunFolderError(f"'{folder}' has no {RESOLVED_CONFIG}; pass the config with -c")
    return config
