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
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import build_model_with_cfg
from timm.models._features import FeatureListNet, feature_take_indices

from .._input import check_image_input

__all__ = ['StagedBackbone', 'CheckedFeatureListNet', 'create_backbone']

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


def create_backbone(model_cls, variant: str, pretrained: bool, filter_fn, **kwargs):
    """`build_model_with_cfg` with the stage-level feature config every family uses.

    A `feature_cfg` given by the caller is merged over the default rather than colliding with it.
    """
    feature_cfg = dict(out_indices=(0, 1, 2, 3), flatten_sequential=True, feature_cls=CheckedFeatureListNet)
    feature_cfg.update(kwargs.pop('feature_cfg', None) or {})
    return build_model_with_cfg(
        model_cls, variant, pretrained, pretrained_filter_fn=filter_fn, feature_cfg=feature_cfg, **kwargs)
