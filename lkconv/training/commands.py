"""Training commands: `lkconv train` and `lkconv validate`."""
import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from ..config import ConfigError, load_config
from ..train import RESUME_LATEST, RunFolderError, run_config_path, train
from ..validate import ValidateOptions, validate
from .checkpoint import CheckpointError

__all__ = ['add_commands']

_TRAIN_EPILOG = """\
overrides are section.key=value, e.g. optim.lr=1e-3 data.batch_size=64 train.amp=true
(sections: model, data, optim, sched, train, output; see docs/training.md).

examples:
  lkconv train -c configs/demo/digits_inceptionnext_atto.yaml
  lkconv train -c configs/unireplknet/unireplknet_t_in1k.yaml data.dir=/data/imagenet
  torchrun --nproc_per_node=8 scripts/train.py -c configs/lsnet/lsnet_t_in1k.yaml data.dir=/data/imagenet
  lkconv train --resume output/train/unireplknet_t-20250101-120000
"""


def cmd_train(args) -> int:
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
    except (RunFolderError, CheckpointError) as e:
        raise SystemExit(f'lkconv train: {e}') from None
    return 0


def cmd_validate(args) -> int:
    logger = logging.getLogger('lkconv.validate')
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
    try:
        result = validate(options)
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f'lkconv validate: {e}') from None
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
        if path.suffix == '.csv':
            with open(path, 'w', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=list(result))
                writer.writeheader()
                writer.writerow(result)
        else:
            path.write_text(json.dumps(result, indent=2) + '\n')
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        'train', help='train a model from a YAML config', epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Train a model from a YAML config (one process, or one per GPU under torchrun).')
    p.add_argument('-c', '--config', metavar='FILE', help='YAML config (configs/...)')
    p.add_argument('--resume', nargs='?', const=RESUME_LATEST, metavar='PATH',
                   help='continue a run: its folder or a checkpoint; without PATH, the run folder of '
                        'output.experiment (started fresh if it has no checkpoint yet)')
    p.add_argument('overrides', nargs='*', metavar='section.key=value', help='config overrides')
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        'validate', help='top-1/top-5 of a checkpoint or pretrained model on an image dataset',
        description='Evaluate a checkpoint (an lkconv training checkpoint, or any weights file for --model) or '
                    'the published weights (--pretrained) with the model\'s own evaluation preprocessing.')
    p.add_argument('--data-dir', metavar='DIR', help='dataset root (ImageFolder with a validation split)')
    p.add_argument('--dataset', default='', help="timm dataset name ('' = folder/tar) or lkconv/digits")
    p.add_argument('--split', default='validation')
    p.add_argument('--class-map', default='')
    p.add_argument('--model', help='model name (read from an lkconv training checkpoint if omitted)')
    p.add_argument('--checkpoint', metavar='PATH')
    p.add_argument('--pretrained', action='store_true', help='evaluate the published weights')
    p.add_argument('--use-ema', action='store_true', help='the EMA weights of a training checkpoint')
    p.add_argument('--reparam', action='store_true', help='re-parameterise the model before evaluating')
    p.add_argument('-b', '--batch-size', type=int, default=256)
    p.add_argument('-j', '--workers', type=int, default=4)
    p.add_argument('--num-classes', type=int)
    p.add_argument('--img-size', type=int)
    p.add_argument('--crop-pct', type=float)
    p.add_argument('--crop-mode', choices=('center', 'squash', 'border'))
    p.add_argument('--interpolation')
    p.add_argument('--amp', action='store_true')
    p.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'))
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--device', default='auto')
    p.add_argument('--results-file', metavar='PATH', help='write the result as JSON (or CSV for *.csv)')
    p.set_defaults(func=cmd_validate)
