"""What the commands share to read their arguments: whole-number types and output-path checks.

Importable without torch, as the command modules are: `lkconv --help` builds every command's parser.
"""
import argparse
import tempfile
from pathlib import Path
from typing import Optional

__all__ = ['positive_int', 'non_negative_int', 'unwritable_reason', 'check_output_folder', 'check_output_file']


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < low:
        raise argparse.ArgumentTypeError(f'must be at least {low}, got {value}')
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _why_unwritable(folder: Path, error: OSError) -> str:
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            return f"'{path}' is a file"
    return error.strerror or str(error)


def unwritable_reason(folder) -> Optional[str]:
    """Why no file can be written in `folder`, or None: a trial write, in the folder created with its parents
    if missing. Leaves no trace: the folders it created are removed again."""
    folder = Path(folder)
    missing = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return _why_unwritable(folder, e)
    finally:
        for path in missing:
            try:
                path.rmdir()
            except OSError:  # never created, or no longer empty
                pass
    return None


def check_output_folder(folder, command: str) -> Path:
    """`folder` if a file can be written there, so that an unusable --out fails before any work."""
    reason = unwritable_reason(folder)
    if reason:
        raise SystemExit(f"lkconv {command}: cannot write to the output folder '{folder}' ({reason}); "
                         f"choose another --out")
    return Path(folder)


def check_output_file(path, command: str, example: str) -> Path:
    """`path` if it names a file that can be written (its folder is created); `example` is a file name to suggest."""
    path = Path(path)
    if path.is_dir():
        raise SystemExit(f"lkconv {command}: --out '{path}' is a folder; give the file to write, "
                         f"e.g. --out {path / example}")
    check_output_folder(path.parent, command)
    return path
