"""`summary.csv`: one row per epoch, rewritten atomically after each epoch.

On resume, rows of epochs after the checkpoint are dropped: those epochs are trained again.
"""
import csv
from pathlib import Path
from typing import Dict, List, Optional

from ..utils import atomic_write_text, csv_text

__all__ = ['SUMMARY_COLUMNS', 'EpochSummary']

SUMMARY_COLUMNS = ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'img_per_sec')


class EpochSummary:

    def __init__(self, path: Path, resume_after_epoch: Optional[int] = None):
        self.path = Path(path)
        self.rows: List[Dict[str, str]] = []
        if resume_after_epoch is not None and self.path.is_file():
            with open(self.path, newline='') as f:
                self.rows = [r for r in csv.DictReader(f) if int(r['epoch']) <= resume_after_epoch]

    def add(self, epoch: int, train_loss: float, lr: float, img_per_sec: float,
            eval_metrics: Optional[Dict[str, float]] = None) -> None:
        eval_metrics = eval_metrics or {}
        row = dict(epoch=epoch, train_loss=train_loss, eval_loss=eval_metrics.get('loss'),
                   eval_top1=eval_metrics.get('top1'), eval_top5=eval_metrics.get('top5'), lr=lr,
                   img_per_sec=img_per_sec)
        self.rows.append({k: '' if v is None else (f'{v:.6g}' if isinstance(v, float) else str(v))
                          for k, v in row.items()})
        self.write()

    def write(self) -> None:
        atomic_write_text(self.path, csv_text(self.rows, SUMMARY_COLUMNS))
