"""One training epoch and one evaluation pass.

A training step: Mixup/CutMix on the batch, forward under autocast, the loss, backward (through timm's
loss scaler for fp16), gradient accumulation over `grad_accum_steps` batches (without DDP gradient sync
on the intermediate ones), gradient clipping, the optimizer step, then (with sparse training) the masks,
the EMA update and, for per-update schedules, the learning-rate step.
"""
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict

import torch
import torch.nn as nn
from timm.models import model_parameters
from timm.utils import accuracy, dispatch_clip_grad

from .config import Config
from .distributed import DistributedContext
from .progress import ProgressMeter

__all__ = ['EpochResult', 'evaluate', 'mean_lr', 'train_one_epoch']


@dataclass
class EpochResult:
    loss: float  # mean training loss over the images of all processes
    img_per_sec: float  # images of all processes per second
    num_updates: int  # optimizer updates so far in the run
    lr: float


def mean_lr(optimizer: torch.optim.Optimizer) -> float:
    """Mean learning rate over the parameter groups (as timm's summary reports it)."""
    rates = [group['lr'] for group in optimizer.param_groups]
    return sum(rates) / len(rates)


def _to_device(x: torch.Tensor, target: torch.Tensor, device: torch.device):
    # timm's prefetching loader has already moved (and normalised) the batch
    return x.to(device, non_blocking=True), target.to(device, non_blocking=True)


def train_one_epoch(
        model: nn.Module,
        loader,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        ctx: DistributedContext,
        config: Config,
        *,
        epoch: int,
        epochs: int,
        num_updates: int,
        autocast: Callable[[], ContextManager],
        logger,
        scheduler=None,
        loss_scaler=None,
        mixup=None,
        model_ema=None,
        masker=None,
) -> EpochResult:
    """Train for one epoch (`epoch` counts from 1); returns the epoch's loss, throughput and update count.
    `masker`: a `lkconv.training.sparsity.SparseMasker` for sparse training."""
    train, optim = config.train, config.optim
    model.train()
    loss_fn.train()
    accum = train.grad_accum_steps
    steps = len(loader)
    stop = min(epochs, train.stop_epoch or epochs)
    meter = ProgressMeter(epoch, epochs, steps, epochs_after=stop - epoch)
    # a list: timm gives a generator (without exclude_head), which would clip only the first update
    clip_params = list(model_parameters(model, exclude_head='agc' in optim.clip_mode))
    loss_sum = torch.zeros((), device=ctx.device, dtype=torch.float64)  # this process's, weighted by images
    samples = 0

    def running_mean() -> float:
        """The mean loss so far over the images of all processes (a collective: every process calls it)."""
        loss_total, images = ctx.sum(torch.stack([loss_sum, loss_sum.new_tensor(samples)])).tolist()
        return loss_total / max(images, 1)

    optimizer.zero_grad(set_to_none=True)
    for step, (x, target) in enumerate(loader):
        need_update = (step + 1) % accum == 0 or step + 1 == steps
        x, target = _to_device(x, target, ctx.device)
        if mixup is not None:
            x, target = mixup(x, target)
        if train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        no_sync = getattr(model, 'no_sync', None) if ctx.distributed and not need_update else None
        with no_sync() if no_sync is not None else nullcontext():
            with autocast():
                output = model(x)
                loss = loss_fn(x, output, target)
            scaled = loss / accum
            if loss_scaler is not None:
                loss_scaler(scaled, optimizer, clip_grad=optim.clip_grad, clip_mode=optim.clip_mode,
                            parameters=clip_params, need_update=need_update)
            else:
                scaled.backward()
                if need_update:
                    if optim.clip_grad is not None:
                        dispatch_clip_grad(clip_params, optim.clip_grad, mode=optim.clip_mode)
                    optimizer.step()
        if need_update:
            num_updates += 1
            if masker is not None:  # before zero_grad: gradient growth reads this step's gradients
                topology_update = masker.step(num_updates)
                if topology_update is not None:
                    logger.info(str(topology_update))
            optimizer.zero_grad(set_to_none=True)
            if model_ema is not None:
                if masker is not None:
                    masker.update_ema(model_ema, model, num_updates)
                else:
                    model_ema.update(model, step=num_updates)
            if scheduler is not None and config.sched.on_updates:
                scheduler.step_update(num_updates=num_updates)
        loss_sum += loss.detach().double() * x.size(0)
        samples += x.size(0)
        meter.step(x.size(0) * ctx.world_size)
        if (step + 1) % config.output.log_interval == 0 or step + 1 == steps:
            average = running_mean()  # what summary.csv records at the epoch's end
            if not math.isfinite(average):  # a non-finite loss on any process stops every process
                raise FloatingPointError(f'training loss is {average} at epoch {epoch}, step {step + 1}: '
                                         f'lower the learning rate or check the data')
            logger.info(meter.line(loss.item(), average, mean_lr(optimizer)))
    if ctx.device.type == 'cuda':
        torch.cuda.synchronize(ctx.device)
    return EpochResult(loss=running_mean(), img_per_sec=meter.img_per_sec, num_updates=num_updates,
                       lr=mean_lr(optimizer))


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: DistributedContext, autocast: Callable[[], ContextManager] = nullcontext,
             channels_last: bool = False, logger=None, log_interval: int = 0) -> Dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 accuracy (percent) of `model` on `loader`, over all processes."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction='sum')
    totals = torch.zeros(4, device=ctx.device, dtype=torch.float64)  # loss, top-1 hits, top-5 hits, count
    start = time.perf_counter()
    steps = len(loader)
    for step, (x, target) in enumerate(loader):
        x, target = _to_device(x, target, ctx.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            output = model(x)
        if isinstance(output, (tuple, list)):
            output = output[0]
        output = output.float()
        top1, top5 = accuracy(output, target, topk=(1, 5))
        n = x.size(0)
        totals += torch.stack([criterion(output, target).double(), top1.double() * n / 100,
                               top5.double() * n / 100, torch.tensor(float(n), device=ctx.device,
                                                                     dtype=torch.float64)])
        if logger is not None and log_interval and ((step + 1) % log_interval == 0 or step + 1 == steps):
            seen = totals[3].item()
            logger.info(f'eval [{step + 1}/{steps}] top-1 {totals[1].item() / seen * 100:.2f} '
                        f'top-5 {totals[2].item() / seen * 100:.2f}  '
                        f'{seen * ctx.world_size / (time.perf_counter() - start):.1f} img/s')
    totals = ctx.sum(totals)
    count = max(totals[3].item(), 1.0)
    return dict(loss=totals[0].item() / count, top1=totals[1].item() / count * 100,
                top5=totals[2].item() / count * 100)
