"""Model measurements: parameters, FLOPs (fvcore) and timed forward passes."""
import logging
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn as nn

__all__ = ['count_params', 'count_gmacs', 'time_forward', 'Timing']


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: nn.Module, input_size: Tuple[int, int, int]) -> float:
    """GMACs of one image through `model` (fvcore counts one multiply-add as one flop)."""
    with warnings.catch_warnings():  # fvcore scripts a loss at import, which newer torch flags as deprecated
        warnings.simplefilter('ignore', FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    logging.getLogger('fvcore').setLevel(logging.ERROR)  # unsupported elementwise ops are expected
    device = next(model.parameters()).device
    analysis = FlopCountAnalysis(model.eval(), torch.zeros(1, *input_size, device=device))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total() / 1e9


@dataclass
class Timing:
    batch_size: int
    step_times: List[float]

    @property
    def median(self) -> float:
        return statistics.median(self.step_times)

    @property
    def samples_per_sec(self) -> float:
        return self.batch_size / self.median


@torch.no_grad()
def time_forward(model: nn.Module, x: torch.Tensor, warmup: int = 2, repeats: int = 5) -> Timing:
    """Median wall time of eval-mode forward passes, synchronising the device around each step."""
    model.eval()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - start)
    return Timing(x.shape[0], times)
