"""Where this process runs: device, rank and world size, from torchrun's environment (one or many nodes)
or a single process. Built on timm's `init_distributed_device_so`.

One difference from timm: a single process launched by torchrun (`--nproc_per_node 1`) joins a process
group of one, so that it runs the same DDP, SyncBatchNorm and NCCL code as a multi-GPU run (timm treats
it as a plain process).
"""
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from timm.utils.distributed import init_distributed_device_so

from ..utils import resolve_device_name

__all__ = ['DistributedContext', 'setup_distributed']


@dataclass(frozen=True)
class DistributedContext:
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False  # in a process group (DDP, SyncBatchNorm, collective ops)

    @property
    def is_primary(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over all processes (a collective: every process must call it)."""
        if not self.distributed:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _torchrun_single_process() -> bool:
    return os.environ.get('WORLD_SIZE') == '1' and 'MASTER_ADDR' in os.environ and 'SLURM_PROCID' not in os.environ


def setup_distributed(device: str = 'auto', backend: Optional[str] = None) -> DistributedContext:
    """Join the process group torchrun (or SLURM) describes, if any; each rank gets its own GPU."""
    device = resolve_device_name(device)
    if _torchrun_single_process():
        device_type = device.split(':')[0]
        dist.init_process_group(backend=backend or ('nccl' if device_type == 'cuda' else 'gloo'), init_method='env://')
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        if device_type == 'cuda':
            device = f'cuda:{local_rank}'
            torch.cuda.set_device(device)
        return DistributedContext(torch.device(device), local_rank=local_rank, distributed=True)
    info = init_distributed_device_so(device=device, dist_backend=backend)
    return DistributedContext(
        device=torch.device(info['device']), rank=info['global_rank'], local_rank=info['local_rank'],
        world_size=info['world_size'], distributed=info['distributed'])
