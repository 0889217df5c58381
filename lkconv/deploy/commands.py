"""Deployment commands: `lkconv reparam` (deploy-form checkpoint), `lkconv export` (ONNX, checked) and
`lkconv hub-export` (a timm hub folder).

torch, timm and the models are imported inside the command functions: see `lkconv.cli`.
"""
import copy
import sys
from pathlib import Path

from ..cli_args import check_output_file, positive_int
from ..zoo.commands import add_weights_arguments, load_model, resolve_model_name


def _load(args, reparam: bool, out_example: str):
    """Check the model name and --out (`out_example`: a file name to suggest), then load the model."""
    if args.model:
        resolve_model_name(args.model, args.command)
    out = check_output_file(args.out, args.command, out_example)
    if args.checkpoint and out.resolve() == Path(args.checkpoint).resolve():
        raise SystemExit(f"lkconv {args.command}: --out '{args.out}' is the --checkpoint file; write elsewhere")
    if not (args.checkpoint or args.pretrained):
        print(f'note: no --checkpoint or --pretrained: {args.model} has randomly initialised weights', file=sys.stderr)
    return load_model(args, args.command, args.model, reparam)


def _example(data_config, batch_size: int):
    import torch
    return torch.randn(batch_size, *data_config['input_size'], generator=torch.Generator().manual_seed(0))


def _forward(model, x, args, name: str):
    """`model(x)`; an input the network refuses (too small for it, ...) ends the command in one line."""
    import torch
    try:
        with torch.no_grad():
            return model(x)
    except (ValueError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        size = f'--img-size {args.img_size} does not fit ' if args.img_size else ''
        raise SystemExit(f'lkconv {args.command}: {size}{name}: {reason}') from None


def cmd_reparam(args) -> int:
    import torch
    from timm.utils import reparameterize_model
    from ..utils import count_params
    from ..zoo.deploy_checkpoint import save_deploy_checkpoint
    from .onnx_export import relative_error
    model, data_config, name = _load(args, reparam=False, out_example=f'{args.model or "model"}_deploy.pth')
    x = _example(data_config, 2)
    expected = _forward(model, x, args, name)
    with torch.no_grad():
        deployed = reparameterize_model(copy.deepcopy(model))
        error = relative_error(deployed(x), expected)
    path = save_deploy_checkpoint(deployed, name, data_config, args.out)
    print(f'{name}: {count_params(model):,} -> {count_params(deployed):,} parameters; deploy form vs training '
          f'form on a {tuple(x.shape)} batch: max relative error {error:.2e}')
    print(f'wrote {path} (load with `lkconv.zoo.deploy_checkpoint.load_deploy_model`, or pass it to '
          f'`lkconv validate/export --checkpoint`)')
    return 0 if error <= args.tolerance else 1


def cmd_export(args) -> int:
    import torch
    from .onnx_export import export_onnx, onnx_metadata, relative_error, run_onnx
    model, data_config, name = _load(args, reparam=True, out_example=f'{args.model or "model"}.onnx')
    example = _example(data_config, args.batch_size)
    _forward(model, example, args, name)  # an input the model refuses fails here, not inside the exporter
    path = export_onnx(model, example, args.out, dynamic_batch=not args.static_batch, opset=args.opset,
                       metadata=onnx_metadata(name, data_config, model.num_classes))
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


def cmd_hub_export(args) -> int:
    from ..zoo.checkpoints import LABEL_NAMES, CheckpointError, load_checkpoint
    from ..zoo.deploy_checkpoint import is_deploy_checkpoint
    from ..zoo.loading import LoadOptions, load_eval_model
    from .hub_export import check_hub_target, save_hub_folder
    if not (args.checkpoint or args.pretrained):
        raise SystemExit("lkconv hub-export: give --checkpoint (a training run's checkpoint or a weights file) "
                         'or --pretrained')
    try:
        check_hub_target(Path(args.out))  # before any work
        if args.checkpoint and is_deploy_checkpoint(load_checkpoint(args.checkpoint)):
            raise CheckpointError(f"'{args.checkpoint}' is a deploy checkpoint, whose fused weights timm cannot "
                                  'build from config.json; export the training checkpoint it was made from')
        model, data_config, name = load_eval_model(LoadOptions(
            model=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, num_classes=args.num_classes,
            use_ema=args.use_ema))
        path = save_hub_folder(model, data_config, args.out)
    except (CheckpointError, ValueError, OSError) as e:
        raise SystemExit(f'lkconv hub-export: {e}')
    classes = 'with their names' if data_config.get(LABEL_NAMES) else 'no class names stored'
    print(f"{name}: wrote {path} ({', '.join(sorted(p.name for p in path.iterdir()))}): {model.num_classes} "
          f"classes, {classes}; input {tuple(data_config['input_size'])}")
    print(f"load with: import lkconv, timm; timm.create_model('local-dir:{path}', pretrained=True)")
    return 0


def _add_model_arguments(p) -> None:
    p.add_argument('model', nargs='?', default=None,
                   help='timm model name (optional when the checkpoint is an lkconv training or deploy checkpoint)')
    add_weights_arguments(p)
    p.add_argument('--img-size', type=positive_int, default=None,
                   help="input side in pixels (default: the model's evaluation input size)")
    p.add_argument('--tolerance', type=float, default=1e-4, help='largest accepted relative error (exit 1 above)')
    p.add_argument('--out', required=True, help='file to write')


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
    p.add_argument('-b', '--batch-size', type=positive_int, default=1, help='batch of the example input')
    p.add_argument('--static-batch', action='store_true', help='fix the batch size (default: dynamic)')
    p.add_argument('--opset', type=int, default=None, help="default: the installed exporter's")
    p.add_argument('--no-check', action='store_true', help='skip the onnxruntime comparison')
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        'hub-export', help='write a model, its preprocessing and class names as a timm hub folder',
        description="Write the weights (model.safetensors) and config.json the way timm's save_for_hf does, with "
                    "the run's preprocessing and class names, for timm.create_model('local-dir:DIR', "
                    "pretrained=True) or an upload to the Hugging Face hub.")
    p.add_argument('model', nargs='?', default=None,
                   help='timm model name (optional for an lkconv training checkpoint)')
    add_weights_arguments(p, checkpoints='lkconv training checkpoint (e.g. RUN/best.pth.tar)')
    p.add_argument('--out', required=True, help='folder to create (must not exist, or be empty)')
    p.set_defaults(func=cmd_hub_export)
