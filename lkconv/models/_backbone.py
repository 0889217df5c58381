"""The timm model contract for hierarchical (stem -> stages -> head) backbones, written once.

A family's model class derives from `StagedBackbone` and builds, in its constructor:
  `stem`       module applied to the image,
  `stages`     nn.Sequential of stages, each with a `grad_checkpointing` flag,
  `norm_pre`   module applied to the last stage output (nn.Identity if none),
  `head`       a timm classifier head with `reset(num_classes, pool_type, reset_other, in_features, ...)`
               and a `fc` classifier,
  `feature_info` one dict per stage (num_chs, reduction, module),
and sets `num_classes`, `in_chans`, `drop_rate`, `num_features`, `head_hidden_size`, `min_input_size`.
The base class provides forward_features / forward_head / forward, reset_classifier, grad checkpointing,
forward_intermediates and prune_intermediate_layers, following timm's ConvNeXt.

`create_backbone` is the one creation path of every family: it also checks, for pretrained weights, that the
checkpoint's classifier size agrees with the pretrained cfg (`check_classifier_size`).
"""
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import build_model_with_cfg, get_arch_pretrained_cfgs
from timm.models._features import FeatureListNet, feature_take_indices

from ._input import check_image_input

__all__ = ['StagedBackbone', 'CheckedFeatureListNet', 'ClassifierMismatchError', 'create_backbone']

# torch.fx records the input check as one call instead of tracing its shape-dependent branches
torch.fx.wrap('check_image_input')


class StagedBackbone(nn.Module):
    # True for heads that pool before layers other than the classifier (InceptionNeXt's MLP head):
    # reset_classifier(0, '') then still returns pooled 2-D features, as in timm's early-pool list
    early_pool: bool = False

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

        `norm=True` applies `norm_pre` to the last stage's tap.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.stem(check_image_input(x, self.in_chans, self.min_input_size))
        last_idx = len(self.stages) - 1
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm_pre(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm_pre(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head, norm) not needed for the taps at `indices`; returns the absolute indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm_pre = nn.Identity().train(self.training)
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '', reset_other=True)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(check_image_input(x, self.in_chans, self.min_input_size))
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


class ClassifierMismatchError(ValueError, RuntimeError):
    """Pretrained weights whose classifier size disagrees with the pretrained cfg.

    Also a RuntimeError, as the size-mismatch error `load_state_dict` would otherwise raise, so callers that
    catch failed loads see it too.
    """


def _classifier_source(cfg: Dict) -> Tuple[str, str]:
    """(where the weights come from, the overlay that names them) for error messages."""
    if cfg.get('file'):
        return f"the file '{cfg['file']}'", f"file={str(cfg['file'])!r}, "
    if cfg.get('hf_hub_id'):
        filename = f", file '{cfg['hf_hub_filename']}'" if cfg.get('hf_hub_filename') else ''
        return f"the Hugging Face hub repository '{cfg['hf_hub_id']}'{filename}", ''
    return (f"'{cfg['url']}'" if cfg.get('url') else 'the pretrained weights'), ''


def check_classifier_size(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Raise `ClassifierMismatchError` when timm would silently lose or fail on the checkpoint's classifier.

    timm's `load_pretrained` trusts the pretrained cfg's `num_classes`: if the model's `num_classes` differs
    from it, the classifier is dropped (and re-initialised); otherwise it is loaded strictly. A checkpoint
    whose classifier has another size than the cfg says (e.g. an ImageNet-22k file passed with an
    ImageNet-1k tag) would therefore either lose its head silently (model built for the file's size) or
    fail with a bare size mismatch (model built for the cfg's size). A model whose size differs from both
    gets a new head, which is what was asked for.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    cfg_classes, classifiers = cfg.get('num_classes'), cfg.get('classifier')
    if cfg_classes is None or cfg_classes < 0 or not classifiers:
        return  # e.g. num_classes=-1: the caller asked for the classifier to be dropped
    names = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    weight = next((state_dict[n + '.weight'] for n in names if n + '.weight' in state_dict), None)
    if weight is None or weight.dim() == 0:
        return
    file_classes, model_classes = weight.shape[0] - cfg.get('label_offset', 0), getattr(model, 'num_classes', None)
    if file_classes == cfg_classes or model_classes not in (file_classes, cfg_classes):
        return
    arch, tag = cfg.get('architecture') or type(model).__name__, cfg.get('tag')
    name = f'{arch}.{tag}' if tag else arch
    source, file_arg = _classifier_source(cfg)
    tags = [t for t, c in get_arch_pretrained_cfgs(arch).items() if c.num_classes == file_classes and t != name]
    use_tag = f", or use the tag whose cfg has that classifier, '{tags[0]}'" if tags else ''
    overlay = f'pretrained_cfg_overlay=dict({file_arg}num_classes={file_classes})'
    problem = (f'the pretrained weights of {arch} ({source}) have a {file_classes}-class classifier '
               f"({names[0]}), but the pretrained cfg '{name}' says {cfg_classes} classes")
    if model_classes == file_classes:
        raise ClassifierMismatchError(
            f'{problem}, so timm would discard that classifier and leave the {file_classes}-class head randomly '
            f'initialised. Say how many classes the weights have: {overlay}{use_tag}.')
    raise ClassifierMismatchError(
        f'{problem} and the model is built with num_classes={model_classes}. To use the weights\' classifier pass '
        f'num_classes={file_classes} and {overlay}{use_tag}; to start a new {model_classes}-class classifier from '
        f'them pass num_classes={model_classes} and {overlay}.')


def _checked_filter(state_dict: Dict[str, torch.Tensor], model: nn.Module, filter_fn: Callable):
    state_dict = filter_fn(state_dict, model)
    check_classifier_size(state_dict, model)
    return state_dict


def create_backbone(model_cls, variant: str, pretrained: bool, filter_fn, **kwargs):
    """`build_model_with_cfg` with the stage-level feature config every family uses.

    A `feature_cfg` given by the caller is merged over the default rather than colliding with it.
    Pretrained weights go through `filter_fn`, then `check_classifier_size` (feature extractors have no
    classifier, so timm drops it whatever its size).
    """
    feature_cfg = dict(out_indices=(0, 1, 2, 3), flatten_sequential=True, feature_cls=CheckedFeatureListNet)
    feature_cfg.update(kwargs.pop('feature_cfg', None) or {})
    if pretrained and not kwargs.get('features_only', False):
        filter_fn = partial(_checked_filter, filter_fn=filter_fn)
    return build_model_with_cfg(
        model_cls, variant, pretrained, pretrained_filter_fn=filter_fn, feature_cfg=feature_cfg, **kwargs)
