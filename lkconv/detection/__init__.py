"""Detection and segmentation backbones: a timm feature extractor followed by a feature pyramid.

torchvision's `BackboneWithFPN` reaches the feature maps through `IntermediateLayerGetter`, which needs the
maps to be outputs of top-level children run in order; timm models do not have that shape. `TimmFpnBackbone`
composes `timm.create_model(name, features_only=True, out_indices=...)` with torchvision's
`FeaturePyramidNetwork` instead, for lkconv's models and timm's alike, with the options of the authors'
OpenMMLab necks (a norm layer, strided-conv extra levels on the input or the output, LSNet's transposed-conv
finer levels; `pyramid.py`).

Everything a torchvision detector needs that depends on the backbone's strides (UniRepLKNet, InceptionNeXt,
VAN and FDConv nets: 4/8/16/32; LSNet: 8/16/32/64) is read from the backbone, never written by hand:

    backbone = TimmFpnBackbone('lsnet_t', pretrained=True)
    model = torchvision.models.detection.FasterRCNN(backbone, num_classes=91, **faster_rcnn_kwargs(backbone))
"""
from .backbone import TimmFpnBackbone, anchor_generator_for, faster_rcnn_kwargs, roi_align_for
from .pyramid import FeaturePyramid, FinerLevels, StridedConvLevels

__all__ = [
    'TimmFpnBackbone', 'anchor_generator_for', 'roi_align_for', 'faster_rcnn_kwargs',
    'FeaturePyramid', 'FinerLevels', 'StridedConvLevels',
]
