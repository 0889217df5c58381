"""Zoo commands: `lkconv list`, `lkconv info`.

torch, timm and the models are imported inside the command functions: see `lkconv.cli`.
"""
from typing import Any, Dict, Optional, Tuple

from ..cli_args import non_negative_int
from .downstream import PUBLISHED, downstream_backbone_args


def resolve_model_name(name: str, command: str) -> str:
    """`name` if timm knows it (with or without a pretrained tag); otherwise exit listing close matches."""
    from .names import check_model_name
    try:
        return check_model_name(name)
    except ValueError as e:
        raise SystemExit(f'lkconv {command}: {e}') from None


def add_weights_arguments(p, checkpoints: str = 'lkconv training checkpoint, deploy checkpoint') -> None:
    """The options `load_model` reads: which weights the model gets (`checkpoints`: what --checkpoint takes
    besides official and timm weights files)."""
    p.add_argument('--checkpoint', default=None, help=f'{checkpoints}, official or timm weights file')
    p.add_argument('--pretrained', action='store_true', help='the published weights')
    p.add_argument('--use-ema', action='store_true', help="a training checkpoint's EMA weights")
    p.add_argument('--num-classes', type=non_negative_int, default=None,
                   help="classifier size of a plain weights file (default: the model's)")


def load_model(args, command: str, name: Optional[str], reparam: bool) -> Tuple[Any, Dict[str, Any], str]:
    """The model (eval mode), its evaluation data config and name, with the weights `args` name: --checkpoint
    (an lkconv training or deploy checkpoint, which also gives the architecture, or an official / timm file),
    --pretrained, or neither (random init). Reads `args.checkpoint`, `pretrained`, `num_classes`, `use_ema`
    and `img_size`; exits with one line on a bad checkpoint or a failed download."""
    from .checkpoints import CheckpointError
    from .loading import LoadOptions, load_eval_model
    options = LoadOptions(
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
    from ..utils import count_params
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
    downstream = [c for c in PUBLISHED if c.model == name.split('.')[0]]
    if downstream:  # the authors' detection / segmentation checkpoints of this backbone
        args_text = ', '.join(f'{k}={v!r}' for k, v in downstream_backbone_args(name).items()) or 'none'
        print(f'downstream:  backbone arguments {args_text}; see docs/dense_prediction.md')
        for c in downstream:
            print(f'             {c.head} {c.dataset} ({c.pretrain}): {c.result}  {c.file}')


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
