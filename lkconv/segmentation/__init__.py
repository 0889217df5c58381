"""Semantic segmentation on the zoo's backbones, in plain PyTorch: UperNet and Semantic FPN as the authors'
OpenMMLab (mmsegmentation 0.x) configs build them, loading their published checkpoints and running them with the
official test-time rule.

    import lkconv
    from lkconv.segmentation import UperNet

    model = UperNet.from_checkpoint('upernet_unireplknet_t_512_160k_ade20k_miou48.56.pth')  # downloaded once
    labels = model.predict(images).argmax(1)  # images: (N, 3, H, W) floats in 0..1

    model = UperNet('unireplknet_t', num_classes=19, pretrained=True)  # ImageNet backbone, new heads
    losses = model.loss(normalised_images, labels)  # {'decode', 'aux', 'loss'}
    losses['loss'].backward()

* `segmentor`: `EncoderDecoder`, `UperNet`, `SemanticFPN`;
* `heads`: `UperHead`, `FCNHead`, `FPNHead` (mmseg's module names, so published weights load strictly);
* `neck`: Semantic FPN's `FPN`;
* `losses`: `segmentation_loss`, mmseg's pixel-wise cross-entropy;
* `inference`: the test pipeline's resize and sliding-window inference (`InferenceConfig`);
* `checkpoint`: published checkpoint files, read and loaded.
"""
from .heads import DecodeHead, FCNHead, FPNHead, PyramidPooling, UperHead
from .inference import InferenceConfig, inference_sizes, resize_for_inference, slide_inference
from .losses import IGNORE_INDEX, segmentation_loss
from .neck import FPN
from .segmentor import EncoderDecoder, SemanticFPN, UperNet, create_feature_backbone

__all__ = ['UperNet', 'SemanticFPN', 'EncoderDecoder', 'create_feature_backbone', 'UperHead', 'FCNHead', 'FPNHead',
           'DecodeHead', 'PyramidPooling', 'FPN', 'segmentation_loss', 'IGNORE_INDEX', 'InferenceConfig',
           'inference_sizes', 'resize_for_inference', 'slide_inference']
