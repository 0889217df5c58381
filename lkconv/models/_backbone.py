"""The timm model contract for hierarchical (stem -> stages -> head) backbones, written once.

* `StageIntermediates`: `forward_intermediates` / `prune_intermediate_layers` for any model that runs a stem,
  its stages and a final norm, one `feature_info` entry per stage (as timm's ConvNeXt). It is shared by
  `StagedBackbone` and by models built on another layout (the FDConv ResNet on timm's `ResNet`).
* `StagedBackbone`: the base class of the families. A family builds, in its constructor,
    `stem`       module applied to the image,
    `stages`     through `_set_stages`: `BackboneStage`s, with their `feature_info` and `num_features`,
    `norm_pre`   module applied to the last stage output (nn.Identity if none),
    `head`       a timm classifier head with `reset(num_classes, pool_type, reset_other, in_features, ...)`
                 and a `fc` classifier,
  and sets `head_hidden_size`. The base provides forward_features / forward_head / forward,
  reset_classifier, grad checkpointing, group_matcher and the intermediates above.
* `BackboneStage`: downsample -> blocks (gradient-checkpointed when enabled) -> norm.
* `check_stage_settings`, `drop_path_schedule` and `apply_init`: the per-stage settings check, the
  stochastic-depth schedule and the weight-init traversal.
* `create_backbone`: the one creation path of every family; for pretrained weights it also checks that the
  checkpoint's classifier size agrees with the pretrained cfg (`check_classifier_size`), or, for a feature
  extractor, that the weights fit it exactly (`check_feature_weights`).
"""
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import calculate_drop_path_rates, get_device_dtype, trunc_normal_
from timm.models import FeatureListNet, build_model_with_cfg, checkpoint_seq

from ..layers import FDConv
from ._checkpoint import ClassifierMismatchError, check_classifier_size
from ._input import check_image_input

__all__ = [
    'StageIntermediates', 'StagedBackbone', 'BackboneStage', 'CheckedFeatureListNet', 'ClassifierMismatchError',
    'apply_init', 'check_feature_weights', 'check_stage_settings', 'create_backbone', 'drop_path_schedule',
    'stage_indices',
]

# torch.fx records the input check as one call instead of tracing its shape-dependent branches
torch.fx.wrap('check_image_input')


def stage_indices(num_stages: int, indices: Optional[Union[int, Sequence[int]]] = None) -> Tuple[List[int], int]:
    """The absolute indices of the stages to tap, and the largest of them.

    `indices`: None for every stage, an int n for the last n, or a sequence of indices (negative ones count
    from the end), as timm's feature API takes them (timm's own `feature_take_indices` is not public).
    """
    if indices is None:
        indices = num_stages
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f'cannot take the last {indices} of {num_stages} stages')
        take = list(range(num_stages - indices, num_stages))
    else:
        take = []
        for index in indices:
            absolute = num_stages + index if index < 0 else index
            if not 0 <= absolute < num_stages:
                raise ValueError(f'stage index {index} is out of range for {num_stages} stages')
            take.append(absolute)
    return take, max(take)


def check_stage_settings(**settings: Sequence) -> None:
    """Raise ValueError unless the per-stage settings (e.g. depths=..., dims=...) have one entry per stage each."""
    if len({len(values) for values in settings.values()}) > 1:
        named = [f'{name} {tuple(values)}' for name, values in settings.items()]
        raise ValueError(f"{', '.join(named[:-1])} and {named[-1]} must have the same length")


def drop_path_schedule(drop_path_rate: float, depths: Sequence[int]) -> List[List[float]]:
    """The stochastic-depth rate of every block, per stage: linear from 0 to `drop_path_rate` over the global
    block index (the official schedule of every family here)."""
    return calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)


def init_convnext_style(module: nn.Module, name: str = '', head_init_scale: float = 1.) -> None:
    """ConvNeXt's initialisation, which UniRepLKNet, InceptionNeXt and SLaK keep: conv and linear weights from
    a truncated normal (std 0.02), zero biases, the classifier's (`head.*`) scaled by `head_init_scale`."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
        if name.startswith('head.') and head_init_scale != 1.:
            module.weight.data.mul_(head_init_scale)
            if module.bias is not None:
                module.bias.data.mul_(head_init_scale)


def apply_init(model: nn.Module, init_fn: Callable[..., None]) -> None:
    """`init_fn(module=..., name=...)` on every submodule of `model`, children first (as timm's `named_apply`).

    FDConv layers and what they contain are left as built: they start from an initialised spatial weight with
    neutral attentions (see `fdconv_nets`), which a family's conv init would overwrite (an FDConv has no
    spatial `weight` to initialise).
    """
    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f'{prefix}.{child_name}' if prefix else child_name
            if isinstance(child, FDConv):
                continue
            visit(child, name)
            init_fn(module=child, name=name)

    visit(model, '')


class BackboneStage(nn.Module):
    """One stage: `downsample` (None: identity) -> `blocks` -> `norm` (None: identity).

    `set_grad_checkpointing` on the model switches `grad_checkpointing`, which recomputes the blocks in the
    backward pass instead of storing their activations.
    """

    def __init__(self, downsample: Optional[nn.Module], blocks: Sequence[nn.Module], norm: Optional[nn.Module] = None):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = nn.Identity() if downsample is None else downsample
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.Identity() if norm is None else norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        # a stage may have no blocks (LSNet-T's first), which checkpointing cannot split
        if self.grad_checkpointing and len(self.blocks) > 0 and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class StageIntermediates:
    """timm's `forward_intermediates` and `prune_intermediate_layers` over a stem, stages and a final norm.

    The taps are the stage outputs; `feature_info` has one entry per stage. A model using this provides
    `_forward_stem(x)` (the input check included), `_stage_list()`, `_prune_stages(num_stages, prune_norm)`,
    `reset_classifier(num_classes, global_pool, reset_other)`, `feature_info`, `num_features` and
    `head_hidden_size`; it overrides `_forward_stage` if the model (not the stage) checkpoints gradients, and
    `_forward_norm` if a norm follows the last stage.

    `feature_norms`, when a model sets it, holds one norm per stage applied to that stage's tap only (off the
    main path), as the authors' detection and segmentation backbones normalise the maps they hand to a head.
    """

    def _forward_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return stage(x)

    def _forward_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs at `indices` (None: all, int n: last n), and the final features unless `intermediates_only`.

        Args:
            x: Input image batch (N, C, H, W).
            indices: Stages to tap: None for all, an int n for the last n, or a list of indices.
            norm: Apply the final norm to the last stage's tap (a model with `feature_norms` applies each
                stage's feature norm to its tap instead).
            stop_early: Stop after the last tapped stage.
            output_fmt: Layout of the taps; only 'NCHW'.
            intermediates_only: Return only the taps.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        stages = self._stage_list()
        take_indices, max_index = stage_indices(len(stages), indices)
        last_index = len(stages) - 1
        if stop_early and not torch.jit.is_scripting():
            stages = stages[:max_index + 1]
        intermediates = []
        feature_norms = getattr(self, 'feature_norms', None)
        x = self._forward_stem(x)
        index = 0
        for index, stage in enumerate(stages):
            x = self._forward_stage(stage, x)
            if index in take_indices:
                if feature_norms is not None:
                    intermediates.append(feature_norms[index](x))
                else:
                    intermediates.append(self._forward_norm(x) if norm and index == last_index else x)
        if intermediates_only:
            return intermediates
        if index == last_index:
            x = self._forward_norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head, norm) not needed for the taps at `indices`; returns the absolute indices.

        Args:
            indices: Stages still to be tapped, as in `forward_intermediates`.
            prune_norm: Also drop the final norm.
            prune_head: Also drop the classifier (always done when stages are dropped).
        """
        num_stages = len(self._stage_list())
        take_indices, max_index = stage_indices(num_stages, indices)
        prune_end = max_index < num_stages - 1
        self._prune_stages(max_index + 1, prune_norm or prune_end)
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '', reset_other=True)
        return take_indices


class StagedBackbone(StageIntermediates, nn.Module):
    """Base of the lkconv families: stem -> `BackboneStage`s -> `norm_pre` -> head (see the module docstring).

    Args:
        in_chans: Number of input image channels.
        num_classes: Number of classes of the classifier (0: no classifier).
        drop_rate: Dropout rate before the classifier.
        min_input_size: Smallest input height and width the model accepts.
    """
    # True for heads that pool before layers other than the classifier (InceptionNeXt's MLP head):
    # reset_classifier(0, '') then still returns pooled 2-D features, as in timm's early-pool list
    early_pool: bool = False
    # True: every BatchNorm stays in eval mode (running statistics frozen) when the model trains, as in
    # mmdet's `norm_eval` and the authors' LSNet detection/segmentation backbone
    norm_eval: bool = False

    def __init__(self, in_chans: int, num_classes: int, drop_rate: float, min_input_size: int = 32):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.min_input_size = min_input_size
        self.feature_norms = None  # a ModuleList after `_set_feature_norms` (see StageIntermediates)

    def _set_stages(self, stages: Sequence[nn.Module], widths: Sequence[int], reductions: Sequence[int]) -> None:
        """Register `stages` as `self.stages`, with one `feature_info` entry per stage (its output width and
        stride); `num_features` is the last stage's width."""
        self.stages = nn.Sequential(*stages)
        self.feature_info = [
            dict(num_chs=width, reduction=reduction, module=f'stages.{i}')
            for i, (width, reduction) in enumerate(zip(widths, reductions))
        ]
        self.num_features = widths[-1]

    def _set_feature_norms(self, norm_layer: Callable[[int], nn.Module]) -> None:
        """One `norm_layer(width)` per stage as `feature_norms` (see `StageIntermediates`)."""
        self.feature_norms = nn.ModuleList([norm_layer(info['num_chs']) for info in self.feature_info])

    def train(self, mode: bool = True) -> 'StagedBackbone':
        super().train(mode)
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """Layer-decay groups: the stem, then each block (a stage's downsample joins its first block,
        a stage-end norm its last block); a final norm joins the last group."""
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^stages\.(\d+)\.norm', (99999,)),
                (r'^norm_pre', (99999,)),
                (r'^feature_norms', (99999,)),
            ],
        )

    @torch.jit.ignore
    def no_weight_decay(self):
        # norms, biases and layer scales are 1-D, which timm's optimizer factory already excludes from decay
        return set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False):
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, reset_other=reset_other, in_features=self.num_features,
                        **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def _forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(check_image_input(x, self.in_chans, self.min_input_size))

    def _stage_list(self) -> List[nn.Module]:
        return list(self.stages)

    def _forward_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(x)

    def _prune_stages(self, num_stages: int, prune_norm: bool) -> None:
        if prune_norm:
            self.norm_pre = nn.Identity().train(self.training)
        self.stages = self.stages[:num_stages]
        if self.feature_norms is not None:
            self.feature_norms = self.feature_norms[:num_stages]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._forward_stem(x)
        x = self.stages(x)
        return self.norm_pre(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CheckedFeatureListNet(FeatureListNet):
    """timm's `features_only` wrapper with the model's input check: it runs the model's children itself,
    so without this a bad input would fail deep inside the stem with an unrelated message."""

    def __init__(self, model: nn.Module, out_indices=(0, 1, 2, 3, 4), output_fmt: str = 'NCHW',
                 feature_concat: bool = False, flatten_sequential: bool = False):
        in_chans, min_size = model.in_chans, model.min_input_size
        super().__init__(model, out_indices, output_fmt, feature_concat, flatten_sequential)
        self.input_chans, self.min_input_size = in_chans, min_size

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return super().forward(check_image_input(x, self.input_chans, self.min_input_size))


# the top-level modules a feature extractor leaves out (classifiers, final norms): their weights need not load
_OUTSIDE_FEATURES = ('head', 'head_dist', 'norm_pre', 'fc', 'global_pool')


def _feature_keys(keys) -> Set[str]:
    # BatchNorm fills a missing `num_batches_tracked` itself, as strict loading allows
    return {k for k in keys if k.split('.')[0] not in _OUTSIDE_FEATURES and not k.endswith('num_batches_tracked')}


def check_feature_weights(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """The weights of a `features_only` model, checked as strict loading would check them.

    timm loads a feature extractor's pretrained weights non-strictly (it drops the classifier), so a checkpoint
    that lacked some backbone weights (or had others) would load silently with random values in their place.
    Missing feature norms are the exception: fine-tuning the authors' detection/segmentation backbone from
    classification weights starts them as initialised, as the official configs do, so they are filled in.
    """
    own = model.state_dict()
    norm_keys = [k for k in own if k.startswith('feature_norms.')]
    has_norms = any(k.startswith('feature_norms.') for k in state_dict)
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
    if has_norms and not norm_keys:
        raise ValueError(
            f"these weights hold output norms for each feature map (a detection/segmentation checkpoint): create "
            f"'{arch}' with feature_norms=True (lkconv.zoo.downstream.downstream_backbone_args('{arch}') gives the "
            f"arguments of the authors' backbone)")
    if norm_keys and not has_norms:
        state_dict = dict(state_dict, **{k: own[k] for k in norm_keys})
    missing = sorted(_feature_keys(own) - state_dict.keys())
    unexpected = sorted(_feature_keys(state_dict) - own.keys())
    if missing or unexpected:
        found = [f'{len(names)} {kind} ({", ".join(names[:3])}{", ..." if len(names) > 3 else ""})'
                 for kind, names in (('missing', missing), ('unexpected', unexpected)) if names]
        raise ValueError(f"the weights do not fit {arch}'s feature maps: {' and '.join(found)} weights")
    return state_dict


def _checked_filter(state_dict, model: nn.Module, filter_fn: Callable, features_only: bool):
    state_dict = filter_fn(state_dict, model)
    if features_only:
        return check_feature_weights(state_dict, model)
    check_classifier_size(state_dict, model)
    return state_dict


# options under which a feature extractor must run the model itself (timm's 'getter' wrapper, through
# `forward_intermediates`): taps normalised off the main path, and the model's own `train()`
_MODEL_RUN_OPTIONS = ('feature_norms', 'norm_eval')


def create_backbone(model_cls, variant: str, pretrained: bool, filter_fn, **kwargs):
    """`build_model_with_cfg` with the stage-level feature config every family uses.

    A `feature_cfg` given by the caller is merged over the default rather than colliding with it.
    Pretrained weights go through `filter_fn`, then `check_classifier_size` (classifiers) or
    `check_feature_weights` (feature extractors, which have no classifier).
    """
    feature_cfg = dict(out_indices=(0, 1, 2, 3), flatten_sequential=True, feature_cls=CheckedFeatureListNet)
    if any(kwargs.get(option) for option in _MODEL_RUN_OPTIONS):
        feature_cfg['feature_cls'] = 'getter'
    feature_cfg.update(kwargs.pop('feature_cfg', None) or {})
    if pretrained:
        filter_fn = partial(_checked_filter, filter_fn=filter_fn, features_only=kwargs.get('features_only', False))
    return build_model_with_cfg(
        model_cls, variant, pretrained, pretrained_filter_fn=filter_fn, feature_cfg=feature_cfg, **kwargs)
