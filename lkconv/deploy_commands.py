"""Deployment commands: `lkconv reparam` (deploy-form checkpoint) and `lkconv export` (ONNX, checked)."""
import copy
import sys

import torch
from timm.utils import reparameterize_model

from .benchmark import count_params
from .commands import resolve_model_name
from .deploy_checkpoint import save_deploy_checkpoint
from .onnx_export import export_onnx, relative_error, run_onnx
from .training.checkpoint import CheckpointError
from .validate import ValidateOptions, load_eval_model


def _load(args, reparam: bool):
    if args.model:
        resolve_model_name(args.model)
    random_init = not (args.checkpoint or args.pretrained)
    if random_init:
        print(f'note: no --checkpoint or --pretrained: {args.model} has randomly initialised weights', file=sys.stderr)
    options = ValidateOptions(
        model=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, random_init=random_init,
        num_classes=args.num_classes, use_ema=args.use_ema, img_size=args.img_size, reparam=reparam)
    try:
        return load_eval_model(options)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f'lkconv {args.command}: {e}')


def _example(data_config, batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, *data_config['input_size'], generator=torch.Generator().manual_seed(0))


def cmd_reparam(args) -> int:
    model, data_config, name = _load(args, reparam=False)
    x = _example(data_config, 2)
    with torch.no_grad():
        expected = model(x)
        deployed = reparameterize_model(copy.deepcopy(model))
        error = relative_error(deployed(x), expected)
    path = save_deploy_checkpoint(deployed, name, data_config, args.out)
    print(f'{name}: {count_params(model):,} -> {count_params(deployed):,} parameters; deploy form vs training '
          f'form on a {tuple(x.shape)} batch: max relative error {error:.2e}')
    print(f'wrote {path} (load with `lkconv.deploy_checkpoint.load_deploy_model`, or pass it to '
          f'`lkconv validate/export --checkpoint`)')
    return 0 if error <= args.tolerance else 1


def cmd_export(args) -> int:
    model, data_config, name = _load(args, reparam=True)
    example = _example(data_config, args.batch_size)
    path = export_onnx(model, example, args.out, dynamic_batch=not args.static_batch, opset=args.opset)
    print(f'{name}: wrote {path} (deploy form, input {tuple(example.shape)}'
          f"{', dynamic batch' if not args.static_batch else ''})")
    if args.no_check:
        return 0
    check_batch = args.batch_size if args.static_batch else args.batch_size + 1
    x = _example(data_config, check_batch)
    with torch.no_grad():
        expected = model(x)
    error = relative_error(run_onnx(path, x), expected)
    verdict = 'ok' if error <= args.tolerance else f'ABOVE the tolerance {args.tolerance:g}'
    print(f'onnxruntime (CPU) vs PyTorch on a {tuple(x.shape)} batch: max relative error {error:.2e} ({verdict})')
    return 0 if error <= args.tolerance else 1


def _add_model_arguments(p) -> None:
    p.add_argument('model', nargs='?', default=None,
                   help='timm model name (optional when the checkpoint is an lkconv training or deploy checkpoint)')
    p.add_argument('--checkpoint', default=None,
                   help='lkconv training checkpoint, deploy checkpoint, official or timm weights file')
    p.add_argument('--pretrained', action='store_true', help='the published weights')
    p.add_argument('--use-ema', action='store_true', help="a training checkpoint's EMA weights")
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--img-size', type=int, default=None, help="default: the model's evaluation input size")
    p.add_argument('--tolerance', type=float, default=1e-4, help='largest accepted relative error (exit 1 above)')
    p.add_argument('--out', required=True)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser('reparam', help='re-parameterise a checkpoint to the deploy form and save it',
                              description='Load a model (published, official, timm or lkconv training '
                                          'weights), fuse it to its deploy form, check it computes the same '
                                          'function, and save a deploy checkpoint.')
    _add_model_arguments(p)
    p.set_defaults(func=cmd_reparam)

    p = subparsers.add_parser('export', help='export the deploy form to ONNX and check it with onnxruntime',
                              description='Re-parameterise, export to ONNX (torch.onnx dynamo exporter, its '
                                          'default opset) and compare onnxruntime with PyTorch.')
    _add_model_arguments(p)
    p.add_argument('-b', '--batch-size', type=int, default=1, help='batch of the example input')
    p.add_argument('--static-batch', action='store_true', help='fix the batch size (default: dynamic)')
    p.add_argument('--opset', type=int, default=None, help="default: the installed exporter's")
    p.add_argument('--no-check', action='store_true', help='skip the onnxruntime comparison')
    p.set_defaults(func=cmd_export)
