"""Turning ordinary convs (and their checkpoints) into FDConv layers that start from the same weights.

* `to_fdconv(layer)`: an `FDConv` built from an `nn.Conv2d` (or an `nn.Linear`, as a 1x1 conv on NCHW
  maps) whose Fourier weight is the transform of the layer's weight (`spatial_to_fourier`);
* `convert_to_fdconv(model, ...)`: replaces, in place, every eligible `nn.Conv2d` of any model;
* `convert_state_dict_to_fdconv(state_dict, model)`: a checkpoint of the spatial model (or of the
  official FDConv layer) as a checkpoint of its FDConv version; the pretrained filter of the FDConv
  models in this package.

What a conversion preserves (`neutral_init=True`, the default): the layer's function. The Fourier
weight synthesises the original weight (to float32 FFT rounding, about 1e-6 relative), the bias is
copied, and the output layers of all attention branches start at zero, so every attention is exactly
neutral and the converted layer computes the original conv, in training and eval mode, for any input.
A converted network therefore starts as its source network. With `neutral_init=False` the attention
heads keep the official init (weights of scale 1e-6): the attentions are then only near neutral, and
their deviation grows with the input's scale (the global branch squares its hidden features), which
in deep networks with large activations is far from negligible.
"""
import fnmatch
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .conv import FDConv, fdconv_applies, official_fdconv_key
from .weight import spatial_to_fourier

__all__ = ['to_fdconv', 'convert_to_fdconv', 'convert_state_dict_to_fdconv']

# parameters of an FDConv layer that a spatial checkpoint cannot provide (they keep the layer's init)
_MODULATION_PREFIXES = ('ksm_global.', 'ksm_local.', 'fbm.')


@torch.no_grad()
def to_fdconv(
        layer: Union[nn.Conv2d, nn.Linear],
        kernel_num: int = 64,
        use_fdconv_if_c_gt: int = 16,
        use_fdconv_if_k_in: Sequence[int] = (1, 3),
        fdconv_args: Optional[Dict[str, Any]] = None,
        neutral_init: bool = True,
) -> FDConv:
    """An FDConv equivalent of `layer` at initialisation (same shape, stride, padding, bias, device, dtype,
    train/eval mode and frozen state). An `nn.Linear` becomes a 1x1 FDConv for (N, C, H, W) inputs.

    If the activation rule leaves the layer plain, the result is an FDConv that behaves as a plain conv
    with a copy of the weight. `fdconv_args` are further FDConv options (e.g. `param_ratio`);
    `neutral_init` zeroes the attention heads (`FDConv.zero_attention_heads`).
    """
    if isinstance(layer, nn.Linear):
        conv_args = dict(in_channels=layer.in_features, out_channels=layer.out_features, kernel_size=1)
    elif isinstance(layer, nn.Conv2d):
        conv_args = dict(
            in_channels=layer.in_channels, out_channels=layer.out_channels, kernel_size=layer.kernel_size,
            stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
            padding_mode=layer.padding_mode)
    else:
        raise TypeError(f'to_fdconv converts nn.Conv2d or nn.Linear layers, got {type(layer).__name__}')
    weight = layer.weight
    fdconv = FDConv(
        **conv_args, bias=layer.bias is not None, kernel_num=kernel_num, use_fdconv_if_c_gt=use_fdconv_if_c_gt,
        use_fdconv_if_k_in=use_fdconv_if_k_in, **(fdconv_args or {}), device=weight.device, dtype=weight.dtype)
    if fdconv.use_fdconv:
        fdconv.fourier_weight.copy_(spatial_to_fourier(weight, fdconv.param_ratio))
        fdconv.fourier_weight.requires_grad_(weight.requires_grad)
        if neutral_init:
            fdconv.zero_attention_heads()
    else:
        fdconv.weight.copy_(weight.reshape(fdconv.weight.shape))
        fdconv.weight.requires_grad_(weight.requires_grad)
    if layer.bias is not None:
        fdconv.bias.copy_(layer.bias)
        fdconv.bias.requires_grad_(layer.bias.requires_grad)
    return fdconv.train(layer.training)


def _matches(name: str, patterns: Optional[Sequence[str]]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def convert_to_fdconv(
        model: nn.Module,
        include: Optional[Sequence[str]] = None,
        exclude: Optional[Sequence[str]] = None,
        kernel_num: int = 64,
        use_fdconv_if_c_gt: int = 16,
        use_fdconv_if_k_in: Sequence[int] = (1, 3),
        fdconv_args: Optional[Dict[str, Any]] = None,
        neutral_init: bool = True,
) -> List[str]:
    """Replace, in place, the eligible convs of `model` by FDConv layers converted from their weights.

    A conv is converted if its type is exactly `nn.Conv2d` (subclasses such as depthwise or
    weight-standardised convs compute something else), its module name matches one of the fnmatch
    patterns `include` (None: every name) and none of `exclude`, and the FDConv rule applies to it:
    min(Cin, Cout) > `use_fdconv_if_c_gt`, kernel size in `use_fdconv_if_k_in`, groups 1, square kernel,
    zero padding. `kernel_num` defaults to the paper's 64; `fdconv_args` holds further FDConv options;
    `neutral_init` starts every attention exactly neutral (see the module docstring). Returns the names
    of the converted modules.
    """
    targets = []
    for name, module in model.named_modules():
        if type(module) is not nn.Conv2d:
            continue
        if include is not None and not _matches(name, include):
            continue
        if _matches(name, exclude):
            continue
        if fdconv_applies(module.in_channels, module.out_channels, module.kernel_size, module.groups,
                          module.padding_mode, use_fdconv_if_c_gt, use_fdconv_if_k_in):
            targets.append(name)
    for name in targets:
        parent_name, _, child_name = name.rpartition('.')
        parent = model.get_submodule(parent_name)
        fdconv = to_fdconv(getattr(parent, child_name), kernel_num, use_fdconv_if_c_gt, use_fdconv_if_k_in,
                           fdconv_args, neutral_init)
        setattr(parent, child_name, fdconv)
    return targets


@torch.no_grad()
def convert_state_dict_to_fdconv(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """A state_dict for `model` (which has FDConv layers) from one of its spatial counterpart.

    For every active FDConv layer of `model`: official key names are renamed to ours, a spatial
    `weight` (conv or linear) becomes `fourier_weight`, and the KSM / FBM parameters the checkpoint
    does not have are taken from `model` (they keep their initialisation). Every other key is left
    as it is, so loading stays strict for the rest of the model.
    """
    out = dict(state_dict)
    own = None
    for name, module in model.named_modules():
        if not (isinstance(module, FDConv) and module.use_fdconv):
            continue
        prefix = f'{name}.' if name else ''
        for key in [k for k in out if k.startswith(prefix)]:
            ours = prefix + official_fdconv_key(key[len(prefix):])
            if ours != key:
                out[ours] = out.pop(key)
        weight = out.pop(prefix + 'weight', None)
        if weight is not None and prefix + 'fourier_weight' not in out:
            out[prefix + 'fourier_weight'] = spatial_to_fourier(weight, module.param_ratio)
        own = model.state_dict() if own is None else own
        for key, value in own.items():
            if key.startswith(prefix) and key not in out and key[len(prefix):].startswith(_MODULATION_PREFIXES):
                out[key] = value
    return out
