"""DeiT-style distillation from a timm teacher, as the LSNet `*_distill` recipes use it.

A distilled student (e.g. `lsnet_t_distill`, after `set_distilled_training(True)`) returns two logits in
training: the class head is trained on the labels, the distillation head on the teacher. Hard
distillation uses the teacher's top-1 class as the target (DeiT's `hard`); soft distillation the KL
divergence at temperature tau. The loss is (1 - alpha) * label loss + alpha * distillation loss. A
student with a single head uses its one output for both. The teacher (timm's `DistillationTeacher`)
sees the student's input re-normalised to its own mean and std.
"""
from contextlib import nullcontext
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.task.distillation import DistillationTeacher

from ..zoo.weights import explain_download_failure

__all__ = ['DistillationLoss', 'create_teacher']


def create_teacher(name: str, num_classes: int, in_chans: int, weights_path: Optional[str],
                   device: torch.device) -> DistillationTeacher:
    """The frozen teacher in eval mode: `name` with its pretrained weights, or those of `weights_path`."""
    with explain_download_failure(name) if weights_path is None else nullcontext():
        teacher = DistillationTeacher(name, num_classes=num_classes, in_chans=in_chans,
                                      pretrained_path=weights_path, device=device)
    teacher.requires_grad_(False)
    return teacher.eval()


class DistillationLoss(nn.Module):

    def __init__(self, base_criterion: nn.Module, teacher: DistillationTeacher, kind: str, alpha: float,
                 tau: float, student_mean, student_std):
        super().__init__()
        if kind not in ('hard', 'soft'):
            raise ValueError(f"distillation type must be 'hard' or 'soft', got '{kind}'")
        self.base_criterion = base_criterion
        self.teacher = teacher
        self.kind, self.alpha, self.tau = kind, alpha, tau
        device = next(teacher.parameters()).device
        self.register_buffer('student_mean', torch.tensor(student_mean, device=device).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer('student_std', torch.tensor(student_std, device=device).view(1, -1, 1, 1),
                             persistent=False)

    def train(self, mode: bool = True) -> 'DistillationLoss':
        super().train(mode)
        self.teacher.eval()  # the teacher never trains (BN statistics, dropout)
        return self

    def forward(self, inputs: torch.Tensor, outputs: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
                targets: torch.Tensor) -> torch.Tensor:
        outputs, outputs_kd = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        base_loss = self.base_criterion(outputs, targets)
        with torch.no_grad():
            teacher_logits = self.teacher(self.teacher.normalize_input(inputs, self.student_mean, self.student_std))
        if self.kind == 'soft':
            t = self.tau
            distill_loss = F.kl_div(
                F.log_softmax(outputs_kd / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                reduction='sum', log_target=True) * (t * t) / outputs_kd.numel()
        else:
            distill_loss = F.cross_entropy(outputs_kd, teacher_logits.argmax(dim=1))
        return base_loss * (1 - self.alpha) + distill_loss * self.alpha
