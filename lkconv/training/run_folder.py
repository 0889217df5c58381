"""A run folder: its files, which folder a command writes to, and the checks made before it is created.

Nothing here imports torch or timm: the command line uses it to parse its arguments.
"""
from pathlib import Path
from typing import Optional, Tuple

from ..cli_args import unwritable_reason
from ..zoo.checkpoints import BEST_CHECKPOINT, LAST_CHECKPOINT
from .config import Config, ConfigError, config_problem

__all__ = ['BEST_CHECKPOINT', 'LAST_CHECKPOINT', 'RESOLVED_CONFIG', 'RESUME_LATEST', 'RUN_FILES', 'RunFolderError',
           'resolve_run_folder', 'run_config_path']

RESOLVED_CONFIG = 'config.yaml'
RUN_FILES = (RESOLVED_CONFIG, 'train.log', 'summary.csv', LAST_CHECKPOINT, BEST_CHECKPOINT)
RESUME_LATEST = 'auto'  # `--resume` without a path: the run folder named by output.dir/output.experiment


class RunFolderError(RuntimeError):
    pass


def resolve_run_folder(config: Config, resume: Optional[str], timestamp: str) -> Tuple[Path, Optional[Path]]:
    """The run folder and the checkpoint to resume from (None: start from the first epoch).

    `resume` is None (a fresh run; refuses a folder that already holds one), RESUME_LATEST (continue the
    run of output.experiment if it has a checkpoint), or a run folder or checkpoint file. A run folder
    without a checkpoint yet (stopped in its first epoch) starts again from the first epoch.
    Raises before anything is written if the folder cannot be written.
    """
    output = config.output
    if resume is None or resume == RESUME_LATEST:
        if resume == RESUME_LATEST and not output.experiment:
            raise RunFolderError('--resume without a path needs output.experiment (the run folder to continue); '
                                 'or pass the run folder or checkpoint: --resume PATH')
        name = output.experiment or f"{config.model.name.replace('/', '_')}-{timestamp}"
        folder = Path(output.dir).expanduser() / name
        problem = unwritable_reason(folder)
        if problem:
            raise ConfigError([config_problem(config, 'output.dir', f"cannot create the run folder '{folder}': "
                                                                    f'{problem}; choose another output.dir')])
        last = folder / LAST_CHECKPOINT
        if resume == RESUME_LATEST:
            return folder, last if last.is_file() else None
        found = [f for f in RUN_FILES if (folder / f).exists()]
        if found:
            raise RunFolderError(f"'{folder}' already holds a run ({', '.join(found)}): continue it with "
                                 f"--resume, or choose another output.experiment")
        return folder, None
    path = Path(resume).expanduser()
    checkpoint = path / LAST_CHECKPOINT if path.is_dir() else path
    if not checkpoint.is_file():
        if path.is_dir() and (path / RESOLVED_CONFIG).is_file():
            checkpoint = None  # stopped before its first checkpoint
        else:
            raise RunFolderError(f"nothing to resume: '{checkpoint}' does not exist")
    folder = path if checkpoint is None else checkpoint.parent
    problem = unwritable_reason(folder)
    if problem:
        raise RunFolderError(f"cannot continue the run: cannot write in '{folder}' ({problem})")
    return folder, checkpoint


def run_config_path(resume: str) -> Path:
    """The resolved config of the run that `--resume PATH` names (a run folder or one of its checkpoints)."""
    path = Path(resume).expanduser()
    folder = path if path.is_dir() else path.parent
    config = folder / RESOLVED_CONFIG
    if not config.is_file():
        raise RunFolderError(f"'{folder}' has no {RESOLVED_CONFIG}; pass the config with -c")
    return config
