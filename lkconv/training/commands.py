"""Training commands: `lkconv train` and `lkconv validate`.

Importing this module does not import torch or timm (`lkconv --help` stays fast): the commands import
what they run when they run.
"""
import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import get_args, get_origin

from ..utils import atomic_write_text, csv_text
from .config import config_keys
from .run_folder import RESUME_LATEST

__all__ = ['add_commands']

_TRAIN_EPILOG = """\
overrides are section.key=value, e.g. optim.lr=1e-3 data.batch_size=64 train.amp=true
(sections: model, data, optim, sched, train, sparse, output; see docs/training.md). timm's train.py flags are
config keys here: --amp is train.amp=true, --lr 0.1 is optim.lr=0.1, -b 64 is data.batch_size=64.

examples:
  lkconv train -c configs/demo/digits_inceptionnext_atto.yaml
  lkconv train -c configs/unireplknet/unireplknet_t_in1k.yaml data.dir=/data/imagenet
  torchrun --nproc_per_node=8 scripts/train.py -c configs/lsnet/lsnet_t_in1k.yaml data.dir=/data/imagenet
  lkconv train --resume output/train/unireplknet_t-20250101-120000
"""

# timm train.py flags whose config key has another name; every other `--key-name` is found in the config
_TIMM_FLAGS = {
    '--model': 'model.name', '--initial-checkpoint': 'model.pretrained_path', '--drop': 'model.drop_rate',
    '--drop-path': 'model.drop_path_rate', '--model-kwargs': 'model.kwargs', '--data-dir': 'data.dir',
    '--data': 'data.dir', '--input-size': 'data.img_size', '-b': 'data.batch_size',
    '-vb': 'data.val_batch_size', '--validation-batch-size': 'data.val_batch_size', '-j': 'data.workers',
    '--pin-mem': 'data.pin_memory', '--opt-eps': 'optim.eps', '--opt-betas': 'optim.betas', '--sched': 'sched.name',
    '--sched-on-updates': 'sched.on_updates', '--torchcompile': 'train.compile', '--output': 'output.dir',
    '--sparse': 'sparse.enabled',  # SLaK's main.py flag
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The epilog's examples as written, and every option's default that is a value (not None or off)."""

    def _get_help_string(self, action):
        shown = action.default not in (None, False, '', argparse.SUPPRESS) and action.option_strings
        return action.help + (' (default: %(default)s)' if shown and '%(default)' not in action.help else '')


def _config_key_flags():
    """{flag: (config key, type)} for timm-style flags: `--amp` for train.amp, and the names above."""
    keys = config_keys()
    by_flag = {}
    for key in keys:
        by_flag.setdefault(f"--{key.split('.')[1].replace('_', '-')}", []).append(key)
    # a name in two sections (data.dir, output.dir) is no flag, unless timm's names say which
    flags = {flag: found[0] for flag, found in by_flag.items() if len(found) == 1}
    flags.update(_TIMM_FLAGS)
    return {flag: (key, keys[key]) for flag, key in flags.items()}


class _ConfigKeyFlag(argparse.Action):
    """A timm-style flag: exit naming the config key that does the same."""

    def __init__(self, option_strings, dest, key: str, key_type, **kwargs):
        self.key = key
        kinds = {get_origin(t) or t for t in (key_type, *get_args(key_type))}
        self.example = 'true' if bool in kinds else '[...]' if list in kinds else '{...}' if dict in kinds else None
        super().__init__(option_strings, dest, nargs=0 if bool in kinds else '?', help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.example or (values if values is not None else 'VALUE')
        raise SystemExit(f'lkconv train: {option_string} is not an option of lkconv train; set the config key '
                         f'instead (after the config): {self.key}={value}')


def cmd_train(args) -> int:
    from .config import ConfigError, load_config
    from ..zoo.weights import WeightsUnavailable
    from .train import RunFolderError, TrainingInterrupted, run_config_path, train
    from .checkpoint import CheckpointError

    overrides = list(args.overrides)
    resume = args.resume
    if resume is not None and resume != RESUME_LATEST and '=' in resume and not Path(resume).exists():
        overrides.append(resume)  # `--resume key=value`: an override that argparse took as the path
        resume = RESUME_LATEST
    try:
        if args.config is None:
            if resume is None or resume == RESUME_LATEST:
                raise SystemExit('lkconv train: give a config (-c FILE), or the run to continue (--resume PATH)')
            config_path = run_config_path(resume)
        else:
            config_path = args.config
        config = load_config(config_path, overrides)
        train(config, resume=resume)
    except ConfigError as e:
        raise SystemExit(f'lkconv train: invalid config:\n{e}') from None
    except (RunFolderError, CheckpointError, WeightsUnavailable, FloatingPointError) as e:
        raise SystemExit(f'lkconv train: {e}') from None
    except KeyboardInterrupt as e:
        print(f'lkconv train: {e}' if isinstance(e, TrainingInterrupted) else
              'lkconv train: interrupted before the run started; no run folder was written', file=sys.stderr)
        raise SystemExit(130) from None
    return 0


def cmd_validate(args) -> int:
    from .config import ConfigError
    from .validate import ValidateOptions, validate
    from .checkpoint import CheckpointError

    logger = logging.getLogger('lkconv.training.validate')
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', datefmt='%H:%M:%S'))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    options = ValidateOptions(
        data_dir=args.data_dir, model=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained,
        dataset=args.dataset, split=args.split, class_map=args.class_map, batch_size=args.batch_size,
        workers=args.workers, num_classes=args.num_classes, img_size=args.img_size, crop_pct=args.crop_pct,
        crop_mode=args.crop_mode, interpolation=args.interpolation, use_ema=args.use_ema, reparam=args.reparam,
        amp=args.amp, amp_dtype=args.amp_dtype, channels_last=args.channels_last, device=args.device)
    if args.results_file:  # before the evaluation, not after it
        folder = Path(args.results_file).expanduser().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise SystemExit(f"lkconv validate: --results-file: cannot write in '{folder}' (no such folder, or "
                             f"not writable)")
    try:
        result = validate(options)
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f'lkconv validate: {e}') from None
    except KeyboardInterrupt:
        print('lkconv validate: interrupted', file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        logger.removeHandler(handler)
    print(f"{result['model']}: top-1 {result['top1']:.3f}%  top-5 {result['top5']:.3f}%  loss {result['loss']:.4f}  "
          f"({result['images']} images at {result['img_size']}px, crop {result['crop_pct']} {result['crop_mode']}, "
          f"{result['interpolation']}{', re-parameterised' if result['reparameterized'] else ''}; "
          f"{result['param_count']}M parameters)")
    print('--result')
    print(json.dumps(result, indent=2))
    if args.results_file:
        path = Path(args.results_file)
        text = csv_text([result], result) if path.suffix == '.csv' else json.dumps(result, indent=2) + '\n'
        atomic_write_text(path, text)
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        'train', help='train a model from a YAML config', epilog=_TRAIN_EPILOG, formatter_class=_HelpFormatter,
        description='Train a model from a YAML config (one process, or one per GPU under torchrun).')
    p.add_argument('-c', '--config', metavar='FILE',
                   help='YAML config (configs/...); with --resume PATH, the run\'s own config.yaml if omitted')
    p.add_argument('--resume', nargs='?', const=RESUME_LATEST, metavar='PATH',
                   help='continue a run: its folder or a checkpoint; without PATH, the run folder of '
                        'output.experiment (started fresh if it has no checkpoint yet)')
    p.add_argument('overrides', nargs='*', metavar='section.key=value', help='config overrides')
    for flag, (key, key_type) in _config_key_flags().items():
        if flag not in ('--config', '--resume'):
            p.add_argument(flag, action=_ConfigKeyFlag, key=key, key_type=key_type, dest=f'_flag{flag}')
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        'validate', help='top-1/top-5 of a checkpoint or pretrained model on an image dataset',
        formatter_class=_HelpFormatter,
        description='Evaluate a checkpoint (an lkconv training checkpoint, or any weights file for --model) or '
                    'the published weights (--pretrained) with the model\'s own evaluation preprocessing.')
    p.add_argument('--data-dir', metavar='DIR',
                   help='dataset root (an image folder with the split inside); for lkconv/digits, where it is '
                        'written (a new or empty folder; default: the user cache)')
    p.add_argument('--dataset', default='', help="timm dataset name ('' = folder/tar) or lkconv/digits")
    p.add_argument('--split', default='validation', help='the split to evaluate (a folder under --data-dir)')
    p.add_argument('--class-map', default='', help='class map file (timm), for a folder of another class order')
    p.add_argument('--model', help='model name (read from an lkconv training checkpoint if omitted)')
    p.add_argument('--checkpoint', metavar='PATH',
                   help='lkconv training or deploy checkpoint, or a weights file (official or timm) for --model')
    p.add_argument('--pretrained', action='store_true', help='evaluate the published weights')
    p.add_argument('--use-ema', action='store_true', help='the EMA weights of a training checkpoint')
    p.add_argument('--reparam', action='store_true', help='re-parameterise the model before evaluating')
    p.add_argument('-b', '--batch-size', type=int, default=256, help='images per batch')
    p.add_argument('-j', '--workers', type=int, default=4, help='data-loading processes')
    p.add_argument('--num-classes', type=int, help="the model's class count, for a weights file of another head")
    p.add_argument('--img-size', type=int, help="input size (default: the checkpoint's or the model's)")
    p.add_argument('--crop-pct', type=float, help="centre crop fraction (default: the checkpoint's or the model's)")
    p.add_argument('--crop-mode', choices=('center', 'squash', 'border'),
                   help="crop mode (default: the checkpoint's or the model's)")
    p.add_argument('--interpolation', help="resize interpolation (default: the checkpoint's or the model's)")
    p.add_argument('--amp', action='store_true', help='evaluate under autocast')
    p.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'), help='the autocast dtype')
    p.add_argument('--channels-last', action='store_true', help='channels-last memory layout')
    p.add_argument('--device', default='auto', help='auto (cuda if available, else cpu), cpu, cuda or cuda:N')
    p.add_argument('--results-file', metavar='PATH', help='write the result as JSON (or CSV for *.csv)')
    p.set_defaults(func=cmd_validate)
