"""Zoo commands: `lkconv list`, `lkconv info`, `lkconv demo`."""
import difflib

import timm
import torch

from . import __version__
from .benchmark import count_gmacs, count_params, time_forward
from .models import list_models


def resolve_model_name(name: str) -> str:
    """`name` if timm knows it (with or without a pretrained tag); otherwise exit listing close matches."""
    if timm.is_model(name.split('.')[0]):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}" if close else ''
    raise SystemExit(f"lkconv: unknown model '{name}'{hint}")


def cmd_list(args) -> None:
    for name in list_models(args.filter, pretrained=args.pretrained):
        print(name)


def cmd_info(args) -> None:
    name = resolve_model_name(args.model)
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
    names = list_models()
    print(f'lkconv {__version__}: {len(names)} models registered with timm')
    for name in names:
        print(f'  {name:<28} {count_params(timm.create_model(name, device="meta")) / 1e6:8.2f} M params')
    torch.manual_seed(0)
    name = resolve_model_name(args.model)
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
    p = subparsers.add_parser('list', help='list registered models')
    p.add_argument('filter', nargs='?', default='', help='wildcard, e.g. "unireplknet_*"')
    p.add_argument('--pretrained', action='store_true', help='only models with published weights')
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser('info', help='architecture facts and pretrained tags of a model')
    p.add_argument('model')
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser('demo', help='list the zoo, build a model and run it on a batch')
    p.add_argument('--model', default='unireplknet_a')
    p.add_argument('--batch-size', type=int, default=4)
    p.set_defaults(func=cmd_demo)
