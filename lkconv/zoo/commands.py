"""Zoo commands: `lkconv list`, `lkconv info`, `lkconv demo`.

torch, timm and the models are imported inside the command functions: see `lkconv.cli`.
"""
from typing import Any, Dict, Optional, Tuple

from ..cli_args import positive_int


def resolve_model_name(name: str, command: str) -> str:
    """`name` if timm knows it (with or without a pretrained tag); otherwise exit listing close matches."""
    from .names import check_model_name
    try:
        return check_model_name(name)
    except ValueError as e:
        raise SystemExit(f'lkconv {command}: {e}') from None


def load_model(args, command: str, name: Optional[str], reparam: bool) -> Tuple[Any, Dict[str, Any], str]:
    """The model (eval mode), its evaluation data config and name, with the weights `args` name: --checkpoint
    (an lkconv training or deploy checkpoint, which also gives the architecture, or an official / timm file),
    --pretrained, or neither (random init). Reads `args.checkpoint`, `pretrained`, `num_classes`, `use_ema`
    and `img_size`; exits with one line on a bad checkpoint or a failed download."""
    from ..training.checkpoint import CheckpointError
    from ..training.validate import ValidateOptions, load_eval_model
    options = ValidateOptions(
        model=name, checkpoint=args.checkpoint, pretrained=args.pretrained,
        random_init=not (args.checkpoint or args.pretrained), num_classes=args.num_classes, use_ema=args.use_ema,
        img_size=args.img_size, reparam=reparam)
    try:
        return load_eval_model(options)  # a failed download comes out as a one-line CheckpointError
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f'lkconv {command}: {e}') from None


def cmd_list(args) -> None:
    from .names import pretrained_names, resolve_models
    try:
        names = [spec.name for spec in resolve_models(args.patterns or ['all'])]
    except ValueError as e:
        raise SystemExit(f'lkconv list: {e}') from None
    if args.pretrained:  # each model's published weights, by tagged name
        names = pretrained_names(names)
        if not names:
            raise SystemExit(f"lkconv list: no published weights for {' '.join(args.patterns or ['all'])}")
    for name in names:
        print(name)


def cmd_info(args) -> None:
    import timm
    from ..bench.benchmark import count_params
    name = resolve_model_name(args.model, 'info')
    model = timm.create_model(name, device='meta')
    cfg = model.pretrained_cfg
    features = ', '.join(f"{f['module']} ({f['num_chs']}ch, /{f['reduction']})" for f in model.feature_info)
    print(f'model:       {name}')
    print(f'parameters:  {count_params(model):,}')
    print(f'input:       {cfg["input_size"]}, crop {cfg["crop_pct"]}, {cfg["interpolation"]}')
    print(f'features:    {features}')
    print(f'pretrained:  {", ".join(timm.list_pretrained(name.split(".")[0] + ".*")) or "none"}')
    print(f'license:     {cfg.get("license")}; paper {cfg.get("paper_ids")}')


def cmd_demo(args) -> None:
    """List the zoo, then build one model and run it on a batch, reporting size, FLOPs and timing."""
    import timm
    import torch
    from .. import __version__
    from ..bench.benchmark import count_gmacs, count_params, time_forward
    from ..models import list_models
    name = resolve_model_name(args.model, 'demo')
    names = list_models()
    print(f'lkconv {__version__}: {len(names)} models registered with timm')
    for zoo_name in names:
        print(f'  {zoo_name:<28} {count_params(timm.create_model(zoo_name, device="meta")) / 1e6:8.2f} M params')
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    size = model.pretrained_cfg['input_size']
    x = torch.randn(args.batch_size, *size)
    print(f'\n{name}: {count_params(model):,} parameters, '
          f'{count_gmacs(model, size):.3f} GMACs per {size[1]}x{size[2]} image (fvcore)')
    with torch.no_grad():
        logits = model(x)
    print(f'forward of a {tuple(x.shape)} batch -> logits {tuple(logits.shape)}, '
          f'top-1 class ids {logits.argmax(-1).tolist()}')
    timing = time_forward(model, x)
    print(f'CPU eval forward, fp32, batch {args.batch_size}: median {timing.median * 1e3:.1f} ms '
          f'({timing.samples_per_sec:.1f} img/s over {len(timing.step_times)} runs)')
    deployed = timm.utils.reparameterize_model(model)
    with torch.no_grad():
        gap = (deployed(x) - logits).abs().max().item()
    fused = time_forward(deployed, x)
    print(f're-parameterised: {count_params(deployed):,} parameters, max |logit difference| {gap:.2e}, '
          f'median {fused.median * 1e3:.1f} ms ({timing.median / fused.median:.2f}x the training form speed)')


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        'list', help='list models: the zoo, or names, wildcards and families as `lkconv bench` takes them',
        description="List models. PATTERNs are names (with or without a pretrained tag), wildcards "
                    "('van_b*'), families ('unireplknet', or timm's 'convnext') or 'all' (the zoo, the default).")
    p.add_argument('patterns', nargs='*', metavar='PATTERN', help="what to list (default: all, the lkconv zoo)")
    p.add_argument('--pretrained', action='store_true',
                   help='only models with published weights, by tagged name (e.g. unireplknet_t.in1k)')
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser('info', help='architecture facts and pretrained tags of a model')
    p.add_argument('model', help="a model name, e.g. unireplknet_t (timm's models too)")
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser('demo', help='list the zoo, build a model and run it on a batch')
    p.add_argument('--model', default='unireplknet_a', help='model to build and run')
    p.add_argument('-b', '--batch-size', type=positive_int, default=4, help='images in the batch')
    p.set_defaults(func=cmd_demo)
