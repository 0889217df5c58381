"""Segmentors: a timm backbone's feature maps through an optional neck to a decode head (mmseg's
`EncoderDecoder`), and the two that the zoo's families publish checkpoints for, UperNet and Semantic FPN.

Papers: `Unified Perceptual Parsing for Scene Understanding` - https://arxiv.org/abs/1807.10221 (ECCV 2018);
`Panoptic Feature Pyramid Networks` - https://arxiv.org/abs/1901.02446 (CVPR 2019)

@inproceedings{xiao2018unified,
  title={Unified Perceptual Parsing for Scene Understanding},
  author={Xiao, Tete and Liu, Yingcheng and Zhou, Bolei and Jiang, Yuning and Sun, Jian},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2018}
}
@inproceedings{kirillov2019panoptic,
  title={Panoptic Feature Pyramid Networks},
  author={Kirillov, Alexander and Girshick, Ross and He, Kaiming and Dollár, Piotr},
  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2019}
}

Reference implementation: https://github.com/open-mmlab/mmsegmentation `models/segmentors/encoder_decoder.py`
(Apache-2.0), with the heads of `heads.py` and the neck of `neck.py`. Deliberate differences: `predict` runs a
batch of equally sized images at once (mmseg tests one image at a time; the result is the same), and Semantic
FPN's head reads the backbone's strides instead of the config's `feature_strides`, which builds the same head
(only their ratios matter, see `FPNHead`).

A segmentor takes normalised images and returns logits at their size, in training and in eval mode alike;
`loss(images, labels)` computes what the configs train (the decode head's cross-entropy plus 0.4 times the
auxiliary head's); `predict(images)` runs the official test-time rule on 0..1 images and returns logits at
their size. The backbone is any model that timm builds with `features_only=True` (lkconv's once `lkconv` is
imported); for lkconv's families it is the authors' detection/segmentation backbone
(`lkconv.zoo.downstream.downstream_backbone_args`), e.g. UniRepLKNet with its four output norms.
"""
from typing import Any, Dict, List, Optional, Sequence, Type

import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..zoo.downstream import downstream_backbone_args
from ..zoo.names import check_model_name
from .checkpoint import (
    SEGMENTOR_NAMES, head_type_of, inference_config_of, load_head_weights, read_state_dict, resolve_checkpoint)
from .heads import FCNHead, FPNHead, UperHead, resize
from .inference import InferenceConfig, resize_for_inference, resize_logits, slide_inference
from .losses import IGNORE_INDEX, segmentation_loss
from .neck import FPN

__all__ = ['EncoderDecoder', 'UperNet', 'SemanticFPN', 'create_feature_backbone']


def create_feature_backbone(
        model_name: str,
        pretrained: bool = False,
        backbone_args: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """`timm.create_model(model_name, features_only=True, ...)` with the arguments of the authors' downstream
    backbone (`downstream_backbone_args`) under `backbone_args`."""
    args = {**downstream_backbone_args(model_name), **(backbone_args or {})}
    return timm.create_model(check_model_name(model_name), features_only=True, pretrained=pretrained, **args)


class EncoderDecoder(nn.Module):
    """A backbone, an optional neck, a decode head and an optional auxiliary head (used by `loss` only).

    Args:
        backbone: images -> list of feature maps, finest first (e.g. a timm `features_only` model).
        decode_head: feature maps -> logits (a `DecodeHead`: it has `num_classes` and `align_corners`).
        neck: feature maps -> feature maps, between the two.
        auxiliary_head: feature maps -> logits, trained along with the decode head as deep supervision.
        aux_weight: weight of the auxiliary head's loss.
        image_mean, image_std: per-channel normalisation of 0..1 images that `predict` applies (the weights'
            training normalisation; default: the backbone's pretrained cfg, else ImageNet's).
        inference: the test-time rule `predict` applies (default: ADE20K's, whole-image inference).

    Attributes `num_classes`, `align_corners`, `image_mean`, `image_std`, `inference` (may be replaced) and
    `ignore_index` (label of pixels the loss ignores, 255).
    """

    head_type = ''  # the published `head` of the checkpoints `from_checkpoint` reads

    def __init__(
            self,
            backbone: nn.Module,
            decode_head: nn.Module,
            neck: Optional[nn.Module] = None,
            auxiliary_head: Optional[nn.Module] = None,
            aux_weight: float = 0.4,
            image_mean: Optional[Sequence[float]] = None,
            image_std: Optional[Sequence[float]] = None,
            inference: Optional[InferenceConfig] = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.aux_weight = aux_weight
        self.num_classes = decode_head.num_classes
        self.align_corners = decode_head.align_corners
        cfg = getattr(backbone, 'pretrained_cfg', None) or {}
        self.image_mean = tuple(image_mean or cfg.get('mean', IMAGENET_DEFAULT_MEAN))
        self.image_std = tuple(image_std or cfg.get('std', IMAGENET_DEFAULT_STD))
        self.inference = inference or InferenceConfig()
        self.ignore_index = IGNORE_INDEX

    def forward_features(self, images: torch.Tensor) -> List[torch.Tensor]:
        """The feature maps the heads read: the backbone's, through the neck if there is one."""
        features = self.backbone(images)
        return list(self.neck(features) if self.neck is not None else features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) for normalised images (N, C, H, W): the decode head's, resized bilinearly
        to the images' size (mmseg's `encode_decode`)."""
        logits = self.decode_head(self.forward_features(images))
        return resize(logits, images.shape[-2:], self.align_corners)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The training losses for normalised images (N, C, H, W) and labels (N, H, W) of class indices (255:
        ignored): {'decode': the decode head's cross-entropy, 'aux': `aux_weight` times the auxiliary head's
        (when there is one), 'loss': their sum, to call backward on}. See `segmentation_loss`."""
        features = self.forward_features(images)
        losses = {'decode': segmentation_loss(self.decode_head(features), labels, self.ignore_index,
                                              align_corners=self.align_corners)}
        if self.auxiliary_head is not None:
            losses['aux'] = self.aux_weight * segmentation_loss(
                self.auxiliary_head(features), labels, self.ignore_index, align_corners=self.align_corners)
        losses['loss'] = sum(losses.values())
        return losses

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """0..1 images normalised with `image_mean` / `image_std`."""
        mean = images.new_tensor(self.image_mean).view(1, -1, 1, 1)
        std = images.new_tensor(self.image_std).view(1, -1, 1, 1)
        return (images - mean) / std

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H, W) for 0..1 float images (N, C, H, W) of any size, by the test-time rule
        `inference`: resize (keeping the aspect ratio, then to a multiple of `size_divisor`), normalise, run
        the whole image or sliding windows, and resize the logits back to the images' size. `argmax(1)` gives
        the label map, `softmax(1)` the probabilities mmseg reports. Call `eval()` first."""
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f'expected a float (N, C, H, W) batch of 0..1 images, got a {images.dtype} tensor of '
                             f'shape {list(images.shape)}')
        if images.numel() and images.amax() > 1.5:
            raise ValueError(f'expected 0..1 images, got values up to {images.amax().item():g}: divide 0..255 '
                             f'images by 255')
        size = images.shape[-2:]
        x = self.normalize(resize_for_inference(images, self.inference))
        if self.inference.mode == 'slide':
            logits = slide_inference(self, x, self.num_classes, self.inference.crop_size, self.inference.stride)
        else:
            logits = self(x)
        return resize_logits(logits, size, self.align_corners)

    @classmethod
    def from_checkpoint(
            cls,
            checkpoint: str,
            backbone_name: Optional[str] = None,
            num_classes: Optional[int] = None,
            cache_dir: Optional[str] = None,
    ) -> 'EncoderDecoder':
        """A segmentor with all the weights of an mmseg checkpoint, in eval mode.

        Args:
            checkpoint: a file's path, or the name of a published file (`lkconv.zoo.downstream.PUBLISHED`), which
                is downloaded into `cache_dir` (default: torch.hub's checkpoint folder) unless it is there.
            backbone_name: the backbone's model name; needed for a file that is not a published one.
            num_classes: if given, checked against the checkpoint's.

        The file is read once: timm builds the backbone from its weights (the family's checkpoint filter reads
        `backbone.*`), the heads load strictly. A published checkpoint also sets the official test-time rule (`inference`),
        image normalisation and resize mode (`align_corners`); for another file set `inference`, `image_mean` and
        `image_std` to its config's.
        """
        if cls.head_type not in SEGMENTOR_NAMES:
            raise TypeError(f"{cls.__name__} reads no published checkpoints: use "
                            f"{' or '.join(n + '.from_checkpoint' for n in SEGMENTOR_NAMES.values())}")
        path, record = resolve_checkpoint(checkpoint, cls.head_type, cache_dir)
        state_dict = read_state_dict(path)
        found = head_type_of(state_dict)
        if found != cls.head_type:
            use = f': load it with {SEGMENTOR_NAMES[found]}.from_checkpoint' if found else ''
            raise ValueError(f"'{path}' holds no {SEGMENTOR_NAMES[cls.head_type]} decode head "
                             f"({'a ' + SEGMENTOR_NAMES[found] + ' one' if found else 'another head'}){use}")
        if record is not None and backbone_name not in (None, record.model):
            raise ValueError(f"'{path}' is the published checkpoint of {record.model}, not {backbone_name}")
        backbone_name = backbone_name or (record.model if record else None)
        if backbone_name is None:
            raise ValueError(f"'{path}' is not a published checkpoint, so its backbone is unknown: pass "
                             f"backbone_name (e.g. 'unireplknet_t')")
        check_model_name(backbone_name)
        file_classes = state_dict['decode_head.conv_seg.weight'].shape[0]
        if num_classes not in (None, file_classes):
            raise ValueError(
                f"'{path}' predicts {file_classes} classes (decode_head.conv_seg), not {num_classes}: leave "
                f"num_classes out, or to fine-tune a new {num_classes}-class head from its backbone create "
                f"{cls.__name__}({backbone_name!r}, {num_classes}, pretrained=True, "
                f"backbone_args=dict(pretrained_cfg_overlay=dict(file={path!r})))")
        settings = dict(align_corners=record.align_corners) if record else {}
        try:
            # the weights already read, not the file again: the family's filter takes the backbone's
            model = cls(backbone_name, file_classes, pretrained=True, **cls._head_args(state_dict), **settings,
                        backbone_args=dict(pretrained_cfg_overlay=dict(state_dict=state_dict)))
        except (RuntimeError, ValueError) as e:  # the backbone's weights do not fit, said by timm or torch
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"the backbone weights of '{path}' do not fit {backbone_name}: {reason}") from None
        load_head_weights(model, state_dict, path)
        if record is not None:
            model.inference = inference_config_of(record)
            model.image_mean, model.image_std = tuple(record.mean), tuple(record.std)
        return model.eval()

    @classmethod
    def _head_args(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        """The constructor's head arguments that a checkpoint's shapes determine."""
        return {}


class UperNet(EncoderDecoder):
    """UperNet (https://arxiv.org/abs/1807.10221) on a timm backbone, as the official mmseg configs build it:
    `UperHead` on all feature maps and an auxiliary `FCNHead` on one of them (state_dict keys `backbone.*` in
    timm's layout, `decode_head.*` and `auxiliary_head.*` in mmseg's).

    Args:
        backbone_name: any timm model that supports `features_only`.
        num_classes: number of classes (ADE20K: 150, Cityscapes: 19).
        pretrained: load the backbone's pretrained weights (e.g. ImageNet, to fine-tune).
        channels: width of the decode head (512 in the published configs).
        pool_scales: the pyramid pooling's output sizes.
        dropout: channel dropout before both classifiers.
        aux_index: the feature map the auxiliary head reads (2: stride 16); None: no auxiliary head.
        aux_channels: width of the auxiliary head (256 in the published configs).
        aux_weight: weight of the auxiliary loss.
        align_corners: of every bilinear resize (True only in mmseg's 769x769 Cityscapes configs).
        norm_layer, act_layer: of the heads' conv modules.
        backbone_args: further `timm.create_model` arguments, over the downstream ones of lkconv's families
            (`downstream_backbone_args`), e.g. dict(drop_path_rate=0.2).
    """

    head_type = 'upernet'

    def __init__(
            self,
            backbone_name: str,
            num_classes: int,
            pretrained: bool = False,
            channels: int = 512,
            pool_scales: Sequence[int] = (1, 2, 3, 6),
            dropout: float = 0.1,
            aux_index: Optional[int] = 2,
            aux_channels: int = 256,
            aux_weight: float = 0.4,
            align_corners: bool = False,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            backbone_args: Optional[Dict[str, Any]] = None,
    ):
        backbone = create_feature_backbone(backbone_name, pretrained, backbone_args)
        in_channels = backbone.feature_info.channels()
        if aux_index is not None and not -len(in_channels) <= aux_index < len(in_channels):
            raise ValueError(f'aux_index={aux_index} is out of range: {backbone_name} gives {len(in_channels)} '
                             f'feature maps')
        layers = dict(dropout=dropout, align_corners=align_corners, norm_layer=norm_layer, act_layer=act_layer)
        decode_head = UperHead(in_channels, num_classes, channels, pool_scales, **layers)
        auxiliary_head = None if aux_index is None else FCNHead(
            in_channels[aux_index], num_classes, aux_index, aux_channels, **layers)
        super().__init__(backbone, decode_head, auxiliary_head=auxiliary_head, aux_weight=aux_weight)

    @classmethod
    def _head_args(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        aux = state_dict.get('auxiliary_head.conv_seg.weight')
        return dict(channels=state_dict['decode_head.conv_seg.weight'].shape[1],
                    aux_index=None if aux is None else 2, aux_channels=256 if aux is None else aux.shape[1])


class SemanticFPN(EncoderDecoder):
    """Semantic FPN (https://arxiv.org/abs/1901.02446) on a timm backbone, as the official mmseg configs build it:
    an `FPN` neck on all feature maps and an `FPNHead` (keys `backbone.*` in timm's layout, `neck.*` and
    `decode_head.*` in mmseg's). It predicts at the stride of the backbone's finest map (4; LSNet's: 8).

    Args:
        backbone_name, num_classes, pretrained, dropout, align_corners, norm_layer, act_layer, backbone_args:
            as `UperNet`.
        neck_channels: width of the neck's maps (256 in the published configs).
        channels: width of the decode head (128 in the published configs).
    """

    head_type = 'semantic_fpn'

    def __init__(
            self,
            backbone_name: str,
            num_classes: int,
            pretrained: bool = False,
            neck_channels: int = 256,
            channels: int = 128,
            dropout: float = 0.1,
            align_corners: bool = False,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            act_layer: Type[nn.Module] = nn.ReLU,
            backbone_args: Optional[Dict[str, Any]] = None,
    ):
        backbone = create_feature_backbone(backbone_name, pretrained, backbone_args)
        info = backbone.feature_info
        neck = FPN(info.channels(), neck_channels)
        decode_head = FPNHead([neck_channels] * len(info.channels()), info.reduction(), num_classes, channels,
                              dropout, align_corners, norm_layer, act_layer)
        super().__init__(backbone, decode_head, neck=neck)

    @classmethod
    def _head_args(cls, state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
        return dict(neck_channels=state_dict['neck.lateral_convs.0.conv.weight'].shape[0],
                    channels=state_dict['decode_head.conv_seg.weight'].shape[1])
