"""Progress output of a run: the log (console and `train.log`, rank 0 only) and progress lines with
running loss, learning rate, throughput and time left.

The log file is attached only once the run has started (`start_log_file`): what was logged before is kept
in memory and written then, so that a command that fails before it starts leaves no file behind.
"""
import logging
import logging.handlers
import sys
import time
from pathlib import Path

__all__ = ['ProgressMeter', 'close_run_logger', 'format_duration', 'log_to_file', 'open_run_logger',
           'start_log_file']

_LOGGER_NAME = 'lkconv.training.train'


def open_run_logger(primary: bool) -> logging.Logger:
    """The run's logger: INFO to stdout (and, from `start_log_file` on, to the log file) on the primary
    process; warnings only elsewhere."""
    logger = logging.getLogger(_LOGGER_NAME)
    close_run_logger(logger)
    logger.setLevel(logging.INFO if primary else logging.WARNING)
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter('%(asctime)s %(message)s', datefmt='%H:%M:%S'))
    logger.addHandler(console)
    if primary:  # holds the records until the log file exists; dropped if the run never starts
        logger.addHandler(logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1,
                                                         flushOnClose=False))
    return logger


def start_log_file(logger: logging.Logger, log_file: Path) -> None:
    """Log to `log_file` (appending) from now on, starting with what was logged so far."""
    file = logging.FileHandler(log_file, encoding='utf-8')
    file.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s', datefmt='%Y-%m-%d %H:%M:%S'))
    for handler in list(logger.handlers):
        if isinstance(handler, logging.handlers.MemoryHandler):
            handler.setTarget(file)
            handler.flush()
            logger.removeHandler(handler)
            handler.close()
    logger.addHandler(file)


def log_to_file(logger: logging.Logger, level: int, message: str, exc_info: bool = False) -> None:
    """`message` in the log file only: the command itself shows the error on the console."""
    record = logger.makeRecord(logger.name, level, __file__, 0, message, None,
                               sys.exc_info() if exc_info else None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def close_run_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0) + 0.5)
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class ProgressMeter:
    """Timing of one training epoch; `line()` renders a progress line.

    Throughput counts the images of all processes; the time left covers this epoch and, at this
    epoch's pace, the `epochs_after` still to come. A line shows the latest batch's loss (of this
    process) and the epoch's running average (of all processes).
    """

    def __init__(self, epoch: int, epochs: int, steps: int, epochs_after: int):
        self.epoch, self.epochs, self.steps, self.epochs_after = epoch, epochs, steps, epochs_after
        self.start = time.perf_counter()
        self.images = 0
        self.done = 0

    def step(self, global_images: int) -> None:
        self.images += global_images
        self.done += 1

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def img_per_sec(self) -> float:
        return self.images / max(self.elapsed, 1e-9)

    def line(self, loss: float, loss_avg: float, lr: float) -> str:
        per_step = self.elapsed / max(self.done, 1)
        epoch_left = per_step * (self.steps - self.done)
        run_left = epoch_left + per_step * self.steps * self.epochs_after
        width = len(str(self.steps))
        return (f'epoch {self.epoch}/{self.epochs} [{self.done:>{width}}/{self.steps}] '
                f'loss {loss:.4f} (avg {loss_avg:.4f}) lr {lr:.3e} {self.img_per_sec:.1f} img/s  '
                f'eta {format_duration(epoch_left)} (run {format_duration(run_left)})')
