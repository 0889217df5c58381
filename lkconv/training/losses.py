"""The training loss of a run, from timm's losses: soft-target cross-entropy under Mixup/CutMix (which
carry the label smoothing), label-smoothing cross-entropy, or plain cross-entropy; wrapped in
distillation when a teacher is set. Every training loss is called as `loss(inputs, outputs, targets)`."""
from typing import Optional

import torch
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from .config import Config
from .distillation import DistillationLoss

__all__ = ['LabelLoss', 'create_train_loss']


class LabelLoss(nn.Module):
    """A loss of (outputs, targets) under the training-loss signature."""

    def __init__(self, criterion: nn.Module):
        super().__init__()
        self.criterion = criterion

    def forward(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(outputs, targets)


def create_train_loss(config: Config, mixup_active: bool, teacher: Optional[nn.Module] = None,
                      student_mean=None, student_std=None) -> nn.Module:
    if mixup_active:
        base = SoftTargetCrossEntropy()
    elif config.train.smoothing > 0:
        base = LabelSmoothingCrossEntropy(smoothing=config.train.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    if teacher is None:
        return LabelLoss(base)
    train = config.train
    return DistillationLoss(base, teacher, train.distill_type, train.distill_alpha, train.distill_tau,
                            student_mean, student_std)
