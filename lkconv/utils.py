"""Helpers every part of lkconv shares: files written atomically, CSV text, close matches for a misspelt
name, parameter counts, relative errors, the device to run on and mixed precision. Importable without
torch (torch is imported inside the functions that need it), so no command line start-up pays for it.
"""
import csv
import difflib
import io
import math
import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, BinaryIO, Callable, ContextManager, Dict, Iterable, List, Optional, Sequence, Union

__all__ = ['TEMP_MARK', 'atomic_write', 'atomic_write_text', 'atomic_copy', 'csv_text', 'close_matches', 'did_you_mean',
           'count_params', 'relative_error', 'resolve_device_name', 'device_problem', 'autocast_factory']

PathLike = Union[str, Path]
TEMP_MARK = '.tmp-'  # in the name of a file being written; a killed writer may leave one behind


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk, then rename it to `path`:
    a reader sees the old file or the new one, never a partial one, even if the process is killed."""
    path = Path(path)
    temp = path.with_name(f'.{path.name}{TEMP_MARK}{os.getpid()}')
    try:
        with open(temp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not every file system lets a directory be opened or synced


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def atomic_copy(source: PathLike, target: PathLike) -> None:
    def copy(f: BinaryIO) -> None:
        with open(source, 'rb') as src:
            shutil.copyfileobj(src, f)
    atomic_write(target, copy)


def csv_text(rows: Sequence[Dict[str, Any]], columns: Iterable[str], header: bool = True) -> str:
    """`rows` as CSV text with `columns` in that order (a missing value is an empty cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator='\n', restval='')
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def close_matches(name: str, choices: Iterable[str], n: int = 5, cutoff: float = 0.5) -> List[str]:
    """Up to `n` distinct `choices` most similar to `name` (difflib's ratio at least `cutoff`), best first."""
    unique = list(dict.fromkeys(choices))  # e.g. the zoo's names are also timm's: consider each once
    return difflib.get_close_matches(name, unique, n=n, cutoff=cutoff)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """'; did you mean: a, b' with up to five close matches of `name` among `choices`, or ''."""
    close = close_matches(name, choices)
    return f"; did you mean: {', '.join(close)}" if close else ''


def count_params(model) -> int:
    """The number of parameters of an `nn.Module` (shared parameters once, as `model.parameters()` gives them)."""
    return sum(p.numel() for p in model.parameters())


def relative_error(actual, expected, norm: str = 'max') -> float:
    """How far the tensor `actual` is from `expected`, relative to `expected`'s scale: the largest element
    error over the largest element ('max'), or the error's L2 norm over `expected`'s ('l2'). In float64 on
    the CPU, whatever the inputs' dtype and device; 0 when both are all zeros."""
    if actual.shape != expected.shape:
        raise ValueError(f'shapes differ: {tuple(actual.shape)} and {tuple(expected.shape)}')
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    if norm == 'max':
        error, scale = (actual - expected).abs().max(), expected.abs().max()
    elif norm == 'l2':
        error, scale = (actual - expected).norm(), expected.norm()
    else:
        raise ValueError(f"norm is 'max' or 'l2', not {norm!r}")
    if scale == 0:
        return 0.0 if error == 0 else math.inf
    return float(error / scale)


def resolve_device_name(device: str) -> str:
    """`auto` becomes cuda when a GPU is visible, else cpu."""
    import torch
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


def device_problem(device: str) -> Optional[str]:
    """What is wrong with a device name on this machine (an unknown name, or no such device here); None if
    it can be used."""
    import torch
    if device == 'auto':
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        return f"unknown device '{device}'; use auto, cpu, cuda or cuda:N"
    if parsed.type == 'cpu':
        return None
    backend = getattr(torch, parsed.type, None)
    if backend is None or not hasattr(backend, 'is_available'):
        return f"'{device}' is not a device to run on; use auto, cpu, cuda or cuda:N"
    if not backend.is_available():
        return f"'{device}', but this machine has no {parsed.type.upper()} device; use cpu or auto"
    count = backend.device_count() if hasattr(backend, 'device_count') else 1
    if parsed.index is not None and parsed.index >= count:
        return f"'{device}', but this machine has {count} {parsed.type.upper()} device(s): {parsed.type}:0 to " \
               f"{parsed.type}:{count - 1}"
    return None


def autocast_factory(device_type: str, dtype=None) -> Callable[[], ContextManager]:
    """What a step enters around its forward pass: `torch.autocast` to `dtype` (a torch dtype, or 'float16'
    / 'bfloat16') on `device_type`, or nothing (full precision) when `dtype` is None."""
    if dtype is None:
        return nullcontext
    import torch
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)
